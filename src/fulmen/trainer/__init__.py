"""The Trainer and its loops."""

from fulmen.trainer.trainer import Trainer
from fulmen.utilities import seed_everything

__all__ = ["Trainer", "seed_everything"]
