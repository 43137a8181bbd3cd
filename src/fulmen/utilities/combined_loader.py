"""Lightning's path for :class:`CombinedLoader`, which iterates several loaders together.

Example::

    from fulmen.utilities.combined_loader import CombinedLoader

    loader = CombinedLoader({"a": loader_a, "b": loader_b}, mode="max_size_cycle")
    trainer.fit(model, train_dataloaders=loader)
"""

from fulmen.trainer.data import CombinedLoader

__all__ = ["CombinedLoader"]
