"""Lightning's path ``plugins.io.async_plugin``: ``AsyncCheckpointIO``, checkpoints written on a background thread.

Example::

    from fulmen.plugins.io.async_plugin import AsyncCheckpointIO

    trainer = fulmen.Trainer(plugins=[AsyncCheckpointIO()])
"""

from fulmen.checkpoint import AsyncCheckpointIO

__all__ = ["AsyncCheckpointIO"]
