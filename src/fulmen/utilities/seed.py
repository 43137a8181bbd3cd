"""Seeding every random generator, and running code without disturbing them.

Example::

    from fulmen.utilities.seed import isolate_rng, seed_everything

    seed_everything(42)
    with isolate_rng():
        torch.rand(3)        # the global generators are back where they were after the block
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fulmen.utilities import (collect_rng_states, pl_worker_init_function, reset_seed, restore_rng_states,
                               seed_everything)

__all__ = ["isolate_rng", "pl_worker_init_function", "reset_seed", "seed_everything"]


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's random states on leaving the block.

    ``include_cuda=False`` leaves the CUDA generators alone (e.g. in a forked process that must not
    initialise CUDA).

    Example::

        torch.manual_seed(1)
        with isolate_rng():
            a = torch.rand(1)
        b = torch.rand(1)   # equal to a: the block did not advance the generator
    """
    states = collect_rng_states()
    if not include_cuda:
        states.pop("torch.cuda", None)
    try:
        yield
    finally:
        restore_rng_states(states)
