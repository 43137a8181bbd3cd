"""Where a run executes: one device now; multi-process strategies plug in behind the same seam."""

from fulmen.strategies.strategy import SingleDeviceStrategy, Strategy

__all__ = ["SingleDeviceStrategy", "Strategy"]
