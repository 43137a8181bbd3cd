"""Lightning's path ``core.module``; the class lives in :mod:`fulmen.module`.

Example::

    from fulmen.core.module import LightningModule
"""

from fulmen.module import LightningModule

__all__ = ["LightningModule"]
