"""Lightning's path ``plugins.io.torch_plugin``: ``TorchCheckpointIO``, the default checkpoint IO.

Example::

    from fulmen.plugins.io.torch_plugin import TorchCheckpointIO
"""

from fulmen.checkpoint import TorchCheckpointIO

__all__ = ["TorchCheckpointIO"]
