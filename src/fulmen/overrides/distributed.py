"""Lightning's path to the sampler that gives every sample to exactly one process (what ``trainer.predict`` uses
under several processes); the code lives in ``fulmen.trainer.data``.

Example::

    from fulmen.overrides.distributed import UnrepeatedDistributedSampler

    sampler = UnrepeatedDistributedSampler(dataset, num_replicas=2, rank=0)  # indices 0, 2, 4, ...
"""

from fulmen.trainer.data import UnrepeatedDistributedSampler

__all__ = ["UnrepeatedDistributedSampler"]
