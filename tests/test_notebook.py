"""The Colab demo runs headless on CPU, top to bottom, with short settings."""
import pathlib
import re

import PIL.Image

import nbformat
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "launch" / "colab" / "flextok_demo.ipynb"


def test_demo_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1]
    assert params.cell_type == "code" and "TRAIN_STEPS" in params.source
    params.source += f"\nTRAIN_STEPS = 30\nGEN_STEPS = 20\nGEN_IMAGES = 512\nNUM_STEPS = 4\nWORKDIR = {str(tmp_path / 'demo')!r}\n"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    # The error table: one row per k = 1, 2, 4, 8, 16 with a finite MSE of images in [-1, 1].
    rows = re.findall(r"^\s*(\d+) \|\s*([0-9.]+) \|", outputs, re.M)
    assert [int(k) for k, _ in rows] == [1, 2, 4, 8, 16], outputs[-2000:]
    assert all(0 < float(mse) <= 4 for _, mse in rows), rows
    curve = PIL.Image.open(tmp_path / "demo" / "loss_curve.png")
    assert curve.size == (600, 350)  # figsize (6, 3.5) at 100 dpi
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the reconstruction grid, the loss curve and the generated samples
    assert (tmp_path / "demo" / "generator" / "export" / "generator.safetensors").is_file()
