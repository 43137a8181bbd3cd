"""Callbacks that ship with fulmen; ``fulmen.Callback`` is the base class for your own.

Each is imported on first use, so ``import fulmen`` stays fast.
"""

import importlib

from fulmen.callbacks.callback import Callback

_WHERE = {
    "ModelCheckpoint": "model_checkpoint",
    "EarlyStopping": "early_stopping",
    "ProgressBar": "progress",
    "TQDMProgressBar": "progress",
    "RichProgressBar": "rich_progress",
    "ModelSummary": "model_summary",
    "RichModelSummary": "model_summary",
}

__all__ = ["Callback", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fulmen.callbacks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fulmen.callbacks' has no attribute {name!r}")
