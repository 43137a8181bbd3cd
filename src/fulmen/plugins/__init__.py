"""Lightning's plugin names: precision plugins and checkpoint IO, passed as ``Trainer(plugins=[...])``.

fulmen keeps precision in :mod:`fulmen.precision` and checkpoint IO in :mod:`fulmen.checkpoint`; the
names here are where published Lightning code imports them from. Each loads on first use.

Example::

    from fulmen.plugins import HalfPrecision, TorchCheckpointIO

    trainer = fulmen.Trainer(plugins=[HalfPrecision("bf16-true"), TorchCheckpointIO()])
"""

import importlib

_WHERE = {
    "Precision": "fulmen.precision",
    "MixedPrecision": "fulmen.precision",
    "DoublePrecision": "fulmen.precision",
    "HalfPrecision": "fulmen.precision",
    "CheckpointIO": "fulmen.checkpoint",
    "TorchCheckpointIO": "fulmen.checkpoint",
    "AsyncCheckpointIO": "fulmen.checkpoint",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        module = importlib.import_module(_WHERE[name])
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'fulmen.plugins' has no attribute {name!r}")
