"""Train FlexTok: ``python -m flextok_jax.main --config configs/tiny_cpu.py --workdir DIR``.

Any config field can be overridden, e.g. ``--config.train.total_steps=1000``. Rerunning with the
same workdir resumes from its newest checkpoint. A run that reaches ``train.total_steps`` then
tokenizes held-out images and writes WORKDIR/reconstructions.png, WORKDIR/loss_curve.png and the
reconstruction error per number of tokens k (``flextok_jax.evaluate``).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and grids.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every file operation at INFO; --verbosity=0 brings that back.
        logging.set_verbosity(logging.WARNING)
    from flextok_jax.train import TrainingDivergedError, train

    try:
        result = train(_CONFIG.value, _WORKDIR.value)
    except TrainingDivergedError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        sys.exit(3)
    print({k: result[k] for k in ("step", "loss", "preempted") if k in result})
    import jax

    config = _CONFIG.value
    if config.get("eval", {}).get("enabled", False) and not result["preempted"] and jax.process_index() == 0:
        if result["step"] >= config.train.total_steps:
            from flextok_jax.evaluate import evaluate_run

            evaluate_run(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
