"""Lightning's ``lightning.fabric.plugins`` path: precision plugins, checkpoint IO, cluster environments."""

from fulmen.checkpoint import CheckpointIO, TorchCheckpointIO
from fulmen.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from fulmen.strategies.environments import ClusterEnvironment

__all__ = ["CheckpointIO", "ClusterEnvironment", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision",
           "TorchCheckpointIO"]
