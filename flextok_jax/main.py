"""Train FlexTok: ``python -m flextok_jax.main --config configs/tiny_cpu.py --workdir DIR``.

Any config field can be overridden, e.g. ``--config.train.total_steps=1000``. Rerunning with the
same workdir resumes from its newest checkpoint. A run that reaches ``train.total_steps`` then
tokenizes held-out images and writes WORKDIR/reconstructions.png, WORKDIR/loss_curve.png and the
reconstruction error per number of tokens k (``flextok_jax.evaluate``).
"""
from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from flextok_jax.evaluate.reconstruct import evaluate_run
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
    try:
        result = train(_CONFIG.value, _WORKDIR.value)
    except (TrainingDivergedError, NoRestorableCheckpointError) as e:
        print(f"training stopped: {e}", file=sys.stderr)
        sys.exit(3)
    print({k: result[k] for k in ("step", "loss", "preempted") if k in result})
    config = _CONFIG.value
    finished = result["step"] >= config.train.total_steps and not result["preempted"]
    if config.eval.enabled and finished and jax.process_index() == 0:
        evaluate_run(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
