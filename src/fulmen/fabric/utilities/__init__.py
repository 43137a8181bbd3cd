"""Lightning's ``lightning.fabric.utilities`` path: the helpers Fabric programs import."""

from fulmen._utils import (AttributeDict, apply_to_collection, move_data_to_device, rank_zero_info, rank_zero_only,
                           rank_zero_warn, seed_everything)
from fulmen.fabric.throughput import Throughput, ThroughputMonitor, measure_flops

__all__ = ["AttributeDict", "Throughput", "ThroughputMonitor", "apply_to_collection", "measure_flops",
           "move_data_to_device", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "seed_everything"]
