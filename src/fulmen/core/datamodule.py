"""Lightning's path ``core.datamodule``; the class lives in :mod:`fulmen.datamodule`.

Example::

    from fulmen.core.datamodule import LightningDataModule
"""

from fulmen.datamodule import LightningDataModule

__all__ = ["LightningDataModule"]
