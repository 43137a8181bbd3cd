"""The Trainer and its loops."""

from fulmen._utils import seed_everything
from fulmen.trainer.trainer import Trainer

__all__ = ["Trainer", "seed_everything"]
