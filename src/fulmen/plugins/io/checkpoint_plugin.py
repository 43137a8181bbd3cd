"""Lightning's path ``plugins.io.checkpoint_plugin``: ``CheckpointIO``, how checkpoints are saved and loaded.

Example::

    from fulmen.plugins.io.checkpoint_plugin import CheckpointIO
"""

from fulmen.checkpoint import CheckpointIO

__all__ = ["CheckpointIO"]
