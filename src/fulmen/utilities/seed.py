"""Seeding every random generator, and running code without disturbing them.

Example::

    from fulmen.utilities.seed import isolate_rng, seed_everything

    seed_everything(42)
    with isolate_rng():
        torch.rand(3)        # the global generators are back where they were after the block
"""

from fulmen._lightning_utils import isolate_rng
from fulmen._utils import pl_worker_init_function, reset_seed, seed_everything

__all__ = ["isolate_rng", "pl_worker_init_function", "reset_seed", "seed_everything"]
