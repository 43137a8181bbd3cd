"""Lightning's path for checkpoint IO plugins; they live in :mod:`fulmen.checkpoint`.

Example::

    from fulmen.plugins.io import TorchCheckpointIO

    class UploadingIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            super().save_checkpoint(checkpoint, path, storage_options)
            upload(path)
"""

from fulmen.checkpoint import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO

__all__ = ["AsyncCheckpointIO", "CheckpointIO", "TorchCheckpointIO"]
