"""The Colab demo runs headless on CPU, top to bottom, with short settings."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "launch" / "colab" / "flextok_demo.ipynb"


def test_demo_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1]
    assert params.cell_type == "code" and "TRAIN_STEPS" in params.source
    params.source += f"\nTRAIN_STEPS = 30\nNUM_STEPS = 4\nWORKDIR = {str(tmp_path / 'demo')!r}\n"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "tokens k |" in outputs  # the error table was printed
    assert (tmp_path / "demo" / "loss_curve.png").stat().st_size > 1000
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the reconstruction grid and the loss curve
