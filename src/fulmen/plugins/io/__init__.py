"""Lightning's path for checkpoint IO plugins; they live in :mod:`fulmen.checkpoint`.

Example::

    from fulmen.plugins.io import TorchCheckpointIO

    class UploadingIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            super().save_checkpoint(checkpoint, path, storage_options)
            upload(path)
"""

from fulmen.checkpoint import CheckpointIO, TorchCheckpointIO

__all__ = ["CheckpointIO", "TorchCheckpointIO"]


def __getattr__(name: str):
    if name == "AsyncCheckpointIO":  # present once fulmen.checkpoint defines it
        import fulmen.checkpoint

        if hasattr(fulmen.checkpoint, name):
            return fulmen.checkpoint.AsyncCheckpointIO
    raise AttributeError(f"module 'fulmen.plugins.io' has no attribute {name!r}")
