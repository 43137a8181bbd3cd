"""Lightning's ``lightning.fabric.utilities.spike`` path: the code lives in ``fulmen/fabric/spike.py``."""

from fulmen.fabric.spike import SpikeDetection, TrainingSpikeException

__all__ = ["SpikeDetection", "TrainingSpikeException"]
