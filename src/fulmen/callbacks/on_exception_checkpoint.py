"""``OnExceptionCheckpoint``: write a checkpoint when a run fails, so it can resume from there."""

from __future__ import annotations

import os
from typing import Any

from fulmen.callbacks.model_checkpoint import Checkpoint, _join


class OnExceptionCheckpoint(Checkpoint):
    """Save ``<dirpath>/<filename>.ckpt`` when fit raises (including KeyboardInterrupt).

    Args:
        dirpath: Folder to write the checkpoint into.
        filename: File name without the ``.ckpt`` extension.

    Example::

        trainer = fulmen.Trainer(callbacks=[OnExceptionCheckpoint("ckpts")])
        try:
            trainer.fit(model, loader)
        except RuntimeError:
            trainer.fit(model, loader, ckpt_path="ckpts/on_exception.ckpt")
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        self.dirpath = os.fspath(dirpath)
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint goes."""
        return _join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        trainer.strategy.remove_checkpoint(self.ckpt_path)  # a run that ended well leaves no stale file
