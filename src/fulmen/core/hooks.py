"""Lightning's path ``core.hooks``: ``DataHooks``, the data hooks a LightningModule and a
LightningDataModule share (``prepare_data``, ``setup``, the loaders, batch transfer).

The model and checkpoint hooks are methods of :class:`fulmen.LightningModule` itself.

Example::

    from fulmen.core.hooks import DataHooks

    isinstance(my_datamodule, DataHooks)  # True
"""

from fulmen.module import DataHooks

__all__ = ["DataHooks"]
