"""Lightning's plugin names: precision plugins and checkpoint IO, passed as ``Trainer(plugins=[...])``.

fulmen keeps precision in :mod:`fulmen.precision` and checkpoint IO in :mod:`fulmen.checkpoint`; the
names here are where published Lightning code imports them from.

Example::

    from fulmen.plugins import HalfPrecision, TorchCheckpointIO

    trainer = fulmen.Trainer(plugins=[HalfPrecision("bf16-true"), TorchCheckpointIO()])
"""

from fulmen.checkpoint import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from fulmen.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = ["AsyncCheckpointIO", "CheckpointIO", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision",
           "TorchCheckpointIO"]
