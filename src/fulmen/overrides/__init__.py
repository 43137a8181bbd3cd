"""Lightning's ``overrides`` package: the distributed samplers users import from ``overrides.distributed``.

Example::

    from fulmen.overrides.distributed import UnrepeatedDistributedSampler
"""
