"""Lightning's ``lightning.fabric.utilities.throughput`` path: the code lives in ``fulmen/fabric/throughput.py``."""

from fulmen.fabric.throughput import Throughput, ThroughputMonitor, measure_flops

__all__ = ["Throughput", "ThroughputMonitor", "measure_flops"]
