"""Lightning's path ``strategies.single_device``: the strategy for one device (the default).

Example::

    from fulmen.strategies.single_device import SingleDeviceStrategy

    trainer = fulmen.Trainer(strategy=SingleDeviceStrategy("cpu"))
"""

from fulmen.strategies.strategy import SingleDeviceStrategy

__all__ = ["SingleDeviceStrategy"]
