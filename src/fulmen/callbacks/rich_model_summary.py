"""Lightning's path ``callbacks.rich_model_summary``: the model summary drawn as a ``rich`` table.

Example::

    from fulmen.callbacks.rich_model_summary import RichModelSummary

    trainer = fulmen.Trainer(callbacks=[RichModelSummary(max_depth=2)])
"""

from fulmen.callbacks.model_summary import RichModelSummary

__all__ = ["RichModelSummary"]
