"""Lightning Fabric's ``SpikeDetection``: a Fabric callback that stops the loop at a loss spike.

The rule (what counts as a spike, what the running mean covers) is the Trainer callback's, used here as the
detector: ``fulmen.callbacks.spike_detection.SpikeDetection``. This file only adapts it to Fabric's hook,
``fabric.call("on_train_batch_end", fabric=fabric, loss=loss, batch=batch, batch_idx=i)``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import Tensor

from fulmen.callbacks.spike_detection import SpikeDetection as _Detector
from fulmen.errors import TrainingSpikeException

__all__ = ["SpikeDetection", "TrainingSpikeException"]


class SpikeDetection:
    """Stop a Fabric loop with :class:`~fulmen.errors.TrainingSpikeException` when the training loss spikes, after
    adding the batch and the one before it to ``exclude_batches_path`` (a JSON list of batch indices;
    ``<cwd>/skip_batches.json`` by default) so that a restart can leave them out.

    The arguments and the rule are the Trainer callback's (:class:`fulmen.callbacks.SpikeDetection`): from batch
    ``warmup`` on, a loss no better than the previous one and farther than ``atol`` and ``rtol`` times the mean of
    the last ``window`` losses from that mean is a spike; so is a NaN or infinite loss with ``finite_only=True``.
    Each process judges its own loss and a spike on any is a spike on all. Cost: one read of the loss per batch
    (a device sync) and, under several processes, a small all-reduce.

    Example::

        fabric = Fabric(callbacks=[SpikeDetection(window=20)])
        for batch_idx, batch in enumerate(loader):
            loss = model(batch).mean()
            fabric.backward(loss)
            optimizer.step()
            fabric.call("on_train_batch_end", fabric=fabric, loss=loss, batch=batch, batch_idx=batch_idx)
    """

    def __init__(self, mode: Literal["min", "max"] = "min", window: int = 10, warmup: int = 1,
                 atol: float | None = None, rtol: float | None = 2.0,
                 exclude_batches_path: str | os.PathLike | None = None, finite_only: bool = True) -> None:
        self._detector = _Detector(mode, window, warmup, atol, rtol, exclude_batches_path, finite_only)

    def on_train_batch_end(self, fabric: Any, loss: Tensor, batch: Any, batch_idx: int) -> None:
        detector = self._detector
        if detector.exclude_batches_path is None:
            detector.exclude_batches_path = os.getcwd()
        if not str(detector.exclude_batches_path).endswith(".json"):
            detector.exclude_batches_path = os.path.join(detector.exclude_batches_path, "skip_batches.json")
        agree = fabric.strategy.reduce_boolean_decision if fabric.world_size > 1 else None
        spike = detector._judge(loss, batch_idx)
        if agree is not None:
            spike = agree(spike, all=False)  # a spike on any process is a spike on all of them
        if not spike:
            detector._accept(detector._value, agree)
            return
        detector.bad_batches.extend([batch_idx - 1, batch_idx])
        detector._write(fabric)
        where = "on this process" if detector._local_spike else "on another process"
        raise TrainingSpikeException(
            batch_idx,
            f"SpikeDetection: the training loss spiked {where} at batch {batch_idx}. Batches {batch_idx - 1} and "
            f"{batch_idx} were added to {detector.exclude_batches_path}: leave them out when you restart.")

    # the settings and findings, read from (and written to) the detector; no other of its names shows here, so that
    # fabric.call() finds only this class's hooks
    mode = property(lambda self: self._detector.mode)
    window = property(lambda self: self._detector.window)
    warmup = property(lambda self: self._detector.warmup)
    atol = property(lambda self: self._detector.atol)
    rtol = property(lambda self: self._detector.rtol)
    finite_only = property(lambda self: self._detector.finite_only)
    bad_batches = property(lambda self: self._detector.bad_batches)
    last_val = property(lambda self: self._detector.last_val)
    exclude_batches_path = property(lambda self: self._detector.exclude_batches_path,
                                    lambda self, path: setattr(self._detector, "exclude_batches_path", path))

    def state_dict(self) -> dict[str, Any]:
        return self._detector.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._detector.load_state_dict(state_dict)
