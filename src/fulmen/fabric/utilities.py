"""Lightning's ``lightning.fabric.utilities`` path: the helpers Fabric programs import."""

from fulmen._utils import (AttributeDict, apply_to_collection, move_data_to_device, rank_zero_info, rank_zero_only,
                           rank_zero_warn, seed_everything)

__all__ = ["AttributeDict", "apply_to_collection", "move_data_to_device", "rank_zero_info", "rank_zero_only",
           "rank_zero_warn", "seed_everything"]
