"""``BasePredictionWriter``: write predictions to disk per batch and/or at the end of ``trainer.predict``."""

from __future__ import annotations

from collections import deque
from typing import Any

from fulmen._lightning_utils import LightningEnum
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException
from fulmen.trainer import data as _data

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class WriteInterval(LightningEnum):
    """When a prediction writer writes: after each batch, at the end of the predict epoch, or both."""

    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


def _record_indices(batch_sampler: Any, queue: deque) -> type:
    """Make ``batch_sampler`` report each batch's dataset indices into ``queue``; returns its original class."""
    base = type(batch_sampler)

    class Recording(base):  # type: ignore[misc, valid-type]
        def __iter__(self):  # noqa: ANN204
            for indices in base.__iter__(self):
                queue.append(list(indices))
                yield indices

    batch_sampler.__class__ = Recording
    return base


class BasePredictionWriter(Callback):
    """Subclass it and implement ``write_on_batch_end`` and/or ``write_on_epoch_end``.

    ``batch_indices`` are the dataset indices of each batch (``None`` when the loader has no batch sampler), so
    results written in pieces can be put back in dataset order.

    Args:
        write_interval: "batch", "epoch" or "batch_and_epoch": when the write methods are called.

    Example::

        class TorchWriter(BasePredictionWriter):
            def __init__(self, out_dir):
                super().__init__(write_interval="epoch")
                self.out_dir = out_dir

            def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
                torch.save(predictions, os.path.join(self.out_dir, "predictions.pt"))

        trainer = fulmen.Trainer(callbacks=[TorchWriter("out")])
        trainer.predict(model, loader, return_predictions=False)
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise MisconfigurationException(
                f"BasePredictionWriter(write_interval={write_interval!r}): use 'batch', 'epoch' or 'batch_and_epoch'."
            )
        self.write_interval = write_interval
        self.interval = WriteInterval(write_interval)
        self._queues: list[deque] = []
        self._patched: list[tuple[Any, type]] = []
        self._current: list[int] | None = None
        self._predictions: list[list[Any]] = []
        self._indices: list[list[Any]] = []

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: list[int] | None,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Write one batch's ``prediction``."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_on_batch_end for write_interval='batch'.")

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        """Write all ``predictions`` (a list of batches; a list of such lists with several loaders)."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_on_epoch_end for write_interval='epoch'.")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        loaders = _data.as_list(trainer.predict_dataloaders)
        self._queues = [deque() for _ in loaders]
        self._patched = []
        for loader, queue in zip(loaders, self._queues):
            sampler = getattr(loader, "batch_sampler", None)
            if sampler is not None:
                self._patched.append((sampler, _record_indices(sampler, queue)))
        self._predictions = [[] for _ in loaders]
        self._indices = [[] for _ in loaders]

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        queue = self._queues[dataloader_idx]
        self._current = queue.popleft() if queue else None

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self.interval.on_epoch:
            self._predictions[dataloader_idx].append(outputs)
            self._indices[dataloader_idx].append(self._current)
        if self.interval.on_batch:
            self.write_on_batch_end(trainer, pl_module, outputs, self._current, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.interval.on_epoch:
            preds = self._predictions[0] if len(self._predictions) == 1 else self._predictions
            self.write_on_epoch_end(trainer, pl_module, preds, self._indices)
        self._predictions, self._indices = [], []

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        for sampler, base in self._patched:
            sampler.__class__ = base
        self._patched = []

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_predict_end(trainer, pl_module)
