"""Train: ``python -m flextok_jax.main --config configs/tiny_cpu.py --workdir DIR``.

Any config field can be overridden, e.g. ``--config.train.total_steps=1000``. Rerunning with the
same workdir resumes from its newest checkpoint. A tokenizer config runs the main job
(``flextok_jax.pipeline``): training, then held-out reconstructions per number of tokens k
(WORKDIR/reconstructions.png, loss_curve.png, the error table) and, with ``stage2.enabled``, the
token dataset, the generator and WORKDIR/samples.png, and with ``stage2.text.enabled``
(``--config configs/tiny_cpu.py:text``) the text-conditional generator and
WORKDIR/text_samples.png. A generator config (task='generator' or 'text_generator') trains the
generator alone on ``data.tokens``.

On Linux the process first re-executes itself with glibc's huge-page tunable
(``flextok_jax.huge_pages``; the main job with train.t_mean 1.0: 10.3 -> 9.4 min); setting
GLIBC_TUNABLES opts out.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flextok_jax import huge_pages, pipeline
from flextok_jax.train import NoRestorableCheckpointError, TrainingDivergedError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and grids.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every file operation at INFO; --verbosity=0 brings that back.
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    try:
        if config.task == "tokenizer":
            result = pipeline.run(config, _WORKDIR.value)["tokenizer"]
        else:
            result = train(config, _WORKDIR.value)
    except (TrainingDivergedError, NoRestorableCheckpointError) as e:
        print(f"training stopped: {e}", file=sys.stderr)
        sys.exit(3)
    print({k: result[k] for k in ("step", "loss", "preempted") if k in result})

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()
    app.run(main)
