"""Lightning's ``utilities`` names: nested batches, rank-zero printing, seeding, hyperparameter containers.

fulmen keeps what it uses itself in :mod:`fulmen._utils` and Lightning's other helpers in
:mod:`fulmen._lightning_utils`; this path and its submodules are where published Lightning code imports them.

Example::

    from fulmen.utilities import move_data_to_device, rank_zero_only

    @rank_zero_only
    def announce(msg): print(msg)
"""

from fulmen._lightning_utils import (GradClipAlgorithmType, LightningEnum, disable_possible_user_warnings,
                                     find_shared_parameters, grad_norm, is_picklable, isolate_rng, measure_flops,
                                     rank_zero_debug, rank_zero_deprecation, set_shared_parameters,
                                     suggested_max_num_workers)
from fulmen._utils import (AttributeDict, Movable, apply_to_collection, collect_rng_states, extract_batch_size,
                           is_overridden, move_data_to_device, pl_worker_init_function, rank_zero_info, rank_zero_only,
                           rank_zero_warn, restore_rng_states, seed_everything, set_global_rank)
from fulmen.trainer.data import CombinedLoader

# the names this path documents; Lightning's others above import from here too
__all__ = [
    "AttributeDict", "apply_to_collection", "Movable", "move_data_to_device", "extract_batch_size", "rank_zero_only",
    "set_global_rank", "rank_zero_warn", "rank_zero_info", "seed_everything", "pl_worker_init_function",
    "collect_rng_states", "restore_rng_states", "is_overridden",
]
