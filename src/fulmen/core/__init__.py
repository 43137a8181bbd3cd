"""Lightning's ``core`` paths: the module and data module classes and their hooks.

fulmen keeps them in :mod:`fulmen.module` and :mod:`fulmen.datamodule`; these paths are the names
published Lightning code imports from.

Example::

    from fulmen.core import LightningDataModule, LightningModule
"""

from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
