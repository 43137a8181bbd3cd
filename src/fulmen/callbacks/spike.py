"""Lightning's ``callbacks.spike`` path: ``SpikeDetection`` lives in ``fulmen/callbacks/spike_detection.py``."""

from fulmen.callbacks.spike_detection import SpikeDetection, TrainingSpikeException

__all__ = ["SpikeDetection", "TrainingSpikeException"]
