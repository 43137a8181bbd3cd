"""Lightning's ``lightning.fabric.plugins.collectives`` path."""

from fulmen.strategies.collectives import Collective, SingleDeviceCollective, TorchCollective

__all__ = ["Collective", "SingleDeviceCollective", "TorchCollective"]
