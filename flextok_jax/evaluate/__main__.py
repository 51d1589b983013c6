"""``python -m flextok_jax.evaluate rfid|gfid ...``: see ``flextok_jax.evaluate.commands``."""
import sys

from flextok_jax.evaluate.commands import main

if __name__ == "__main__":
    sys.exit(main())
