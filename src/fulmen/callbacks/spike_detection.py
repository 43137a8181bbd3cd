"""``SpikeDetection``: notice a loss spike, and either stop (Lightning's behaviour) or roll back and skip it."""

from __future__ import annotations

import json
import math
import os
from collections import deque
from typing import Any, Literal

from torch import Tensor

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, SpikeRecoveryLimitError, TrainingSpikeException
from fulmen.trainer.recovery import SpikeGuard
from fulmen._utils import rank_zero_info

__all__ = ["SpikeDetection", "TrainingSpikeException"]


class SpikeDetection(Callback):
    """Watch the training loss for spikes; stop the run, or (``recover=True``) roll back and skip them.

    Each training batch's loss is compared with the mean of the last ``window`` accepted losses from the
    ``warmup``-th batch of each epoch on. A loss that is no better than the previous one (lower with
    ``mode="min"``) and farther from that mean than ``atol`` (absolute) and ``rtol`` times the mean
    (relative; a tolerance set to None is not checked) is a spike; with ``finite_only=True`` a NaN or
    infinite loss is one as well. Under several processes each one watches its own loss and a spike on
    any of them is a spike on all.

    On a spike, as in Lightning, the batch and the one before it are added to the list written to
    ``exclude_batches_path`` (``<default_root_dir>/skip_batches.json`` by default, a JSON list of batch
    indices) and :class:`~fulmen.errors.TrainingSpikeException` is raised.

    With ``recover=True`` the run goes on instead: the training state kept in host memory from before the
    spike (weights, optimizer, schedulers, random states, step counter, the epoch's logged values) is
    restored, the batches since it are replayed from memory except the ones to skip (``skip_before``
    batches before the spike, the spike's batch, ``skip_after`` batches after it), one line says so, and
    ``spike_recoveries`` is logged at each epoch's end. Skipped batches are part of the callback's
    checkpointed state: a resumed run skips them too. More than ``max_recoveries`` spikes in a run end it
    with :class:`~fulmen.errors.SpikeRecoveryLimitError`.

    Cost: one device sync per training batch (the loss is read), plus, under several processes, a small
    all-reduce. With ``recover=True``: two host copies of the weights and optimizer state, refreshed every
    ``snapshot_every_n_steps`` optimizer steps, and references to the batches run since the older copy.
    Not available with DeepSpeed, whose engine keeps the weights and optimizer state itself.

    Args:
        mode: ``"min"`` (a lower loss is better) or ``"max"``.
        window: how many recent accepted losses the running mean covers.
        warmup: the batch index of each epoch from which losses are judged (they are recorded before).
        atol: absolute tolerance around the running mean, or None.
        rtol: tolerance relative to the running mean, or None.
        exclude_batches_path: the JSON file (or a folder for ``skip_batches.json``) of batch indices to skip.
        finite_only: count a NaN or infinite loss as a spike.
        recover: roll back and skip in the same process instead of raising.
        max_recoveries: spikes a run may recover from; the next one raises.
        skip_before: batches before the spike to skip too (they may have caused it).
        skip_after: batches after the spike to skip.
        snapshot_every_n_steps: optimizer steps between two snapshots (fewer: less copying, longer replays).

    Example::

        from fulmen.callbacks import SpikeDetection

        trainer = fulmen.Trainer(callbacks=[SpikeDetection(recover=True, max_recoveries=3, skip_after=2)])
        trainer.fit(model)  # a spike is rolled back; trainer.callback_metrics["spike_recoveries"] counts them
    """

    def __init__(
        self,
        mode: Literal["min", "max"] = "min",
        window: int = 10,
        warmup: int = 1,
        atol: float | None = None,
        rtol: float | None = 2.0,
        exclude_batches_path: str | os.PathLike | None = None,
        finite_only: bool = True,
        *,
        recover: bool = False,
        max_recoveries: int = 3,
        skip_before: int = 1,
        skip_after: int = 0,
        snapshot_every_n_steps: int = 10,
    ) -> None:
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"SpikeDetection(mode={mode!r}): write mode='min' (a lower loss is "
                                            "better) or mode='max'.")
        for name, value, least in (("window", window, 1), ("warmup", warmup, 0), ("max_recoveries", max_recoveries, 0),
                                   ("skip_before", skip_before, 0), ("skip_after", skip_after, 0),
                                   ("snapshot_every_n_steps", snapshot_every_n_steps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise MisconfigurationException(f"SpikeDetection({name}={value!r}): give an integer >= {least}.")
        self.mode, self.window, self.warmup, self.atol, self.rtol = mode, window, warmup, atol, rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.recover, self.max_recoveries = recover, max_recoveries
        self.skip_before, self.skip_after = skip_before, skip_after
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.bad_batches: list[int] = []  # what the file lists, as in Lightning
        self.recoveries = 0
        self.last_val = 0.0
        self._recent: deque[float] = deque(maxlen=window)
        self._skipped: set[tuple[int, int]] = set()  # (epoch, batch_idx) the guard skips
        self._value = math.nan  # the loss just judged, and whether it was a spike here
        self._local_spike = False
        self._guard = SpikeGuard(self, recover, snapshot_every_n_steps)

    # -- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.exclude_batches_path is None:
            self.exclude_batches_path = os.path.join(trainer.default_root_dir, "skip_batches.json")
        if not str(self.exclude_batches_path).endswith(".json"):
            self.exclude_batches_path = os.path.join(self.exclude_batches_path, "skip_batches.json")
        if self.recover and stage == "fit":
            from fulmen.strategies.deepspeed import DeepSpeedStrategy

            if isinstance(trainer.strategy, DeepSpeedStrategy):
                raise MisconfigurationException(
                    "SpikeDetection(recover=True) cannot roll back under DeepSpeed: its engine keeps the weights "
                    "and optimizer state out of the snapshot's reach. Use SpikeDetection() (it stops the run and "
                    "writes the batches to skip) or strategy='fsdp'."
                )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recover:
            # the same on every process: sync_dist only keeps the processes' views of it alike, once an epoch
            pl_module.log("spike_recoveries", float(self.recoveries), on_step=False, on_epoch=True, sync_dist=True,
                          reduce_fx="max")

    def state_dict(self) -> dict[str, Any]:
        return {"last_val": self.last_val, "recent": list(self._recent), "bad_batches": list(self.bad_batches),
                "exclude_batches_path": None if self.exclude_batches_path is None else str(self.exclude_batches_path),
                "recoveries": self.recoveries, "skipped": sorted(self._skipped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_val = state_dict.get("last_val", 0.0)
        self._recent = deque(state_dict.get("recent", []), maxlen=self.window)
        self.bad_batches = list(state_dict.get("bad_batches", []))
        self.exclude_batches_path = state_dict.get("exclude_batches_path") or self.exclude_batches_path
        self.recoveries = state_dict.get("recoveries", 0)
        self._skipped = {(int(e), int(b)) for e, b in state_dict.get("skipped", [])}

    @property
    def skipped_batches(self) -> list[tuple[int, int]]:
        """``(epoch, batch_idx)`` of every batch skipped after a recovery, in order."""
        return sorted(self._skipped)

    # -- what the guard asks (trainer/recovery.py) -------------------------------------------------
    def _judge(self, loss: Tensor, batch_idx: int) -> bool:
        value = self._value = float(loss.detach())
        self._local_spike = self._is_spike(value, batch_idx)
        return self._local_spike

    def _is_spike(self, value: float, batch_idx: int) -> bool:
        if batch_idx < self.warmup:
            return False
        if self.finite_only and not math.isfinite(value):
            return True
        diff = value - self.last_val
        if (diff <= 0) if self.mode == "min" else (diff >= 0):
            return False  # no worse than the previous loss
        mean = sum(self._recent) / len(self._recent) if self._recent else math.nan
        gap = abs(value - mean)  # NaN (nothing recorded yet, or a NaN loss) is no spike
        return (self.atol is None or gap >= abs(self.atol)) and (self.rtol is None or gap >= abs(self.rtol * mean))

    def _accept(self, value: float, agree: Any) -> None:
        if not self.finite_only:
            finite = math.isfinite(value)
            if not (agree(finite, all=True) if agree is not None else finite):
                return
        self._recent.append(value)
        self.last_val = value

    def _stats(self) -> tuple[float, list[float]]:
        return self.last_val, list(self._recent)

    def _load_stats(self, stats: tuple[float, list[float]]) -> None:
        self.last_val, recent = stats
        self._recent = deque(recent, maxlen=self.window)

    def _write(self, trainer: Any) -> None:
        if trainer.is_global_zero:
            path = str(self.exclude_batches_path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(self.bad_batches, f, indent=4)

    def _describe(self, loop: Any, batch_idx: int) -> str:
        if not self._local_spike:  # this process's loss was fine; another one's spiked
            return f"the training loss spiked on another process at epoch {loop.epoch}, batch {batch_idx}"
        mean = sum(self._recent) / len(self._recent) if self._recent else math.nan
        return (f"the training loss spiked at epoch {loop.epoch}, batch {batch_idx} ({self._value:.4g} against "
                f"a running mean of {mean:.4g})")

    def _stop(self, trainer: Any, batch_idx: int) -> None:
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        self._write(trainer)
        raise TrainingSpikeException(
            batch_idx,
            f"SpikeDetection: {self._describe(trainer._loop, batch_idx)}. Batches {batch_idx - 1} and {batch_idx} "
            f"were added to {self.exclude_batches_path}: leave them out when you restart, or pass "
            "SpikeDetection(recover=True) to roll back and skip them in the same run.",
        )

    def _recovered(self, trainer: Any, loop: Any, batch_idx: int, first: int, last: int) -> None:
        skip = [b for b in range(first, last + 1) if b >= 0]
        self.bad_batches.extend(b for b in skip if b not in self.bad_batches)  # also for a restart after the error
        if self.recoveries >= self.max_recoveries:
            self._write(trainer)
            raise SpikeRecoveryLimitError(
                batch_idx,
                f"SpikeDetection: {self._describe(loop, batch_idx)}, after {self.recoveries} recoveries in this run "
                f"(max_recoveries={self.max_recoveries}). Spikes this frequent point at the run, not at a few bad "
                "batches: lower the learning rate, clip gradients (Trainer(gradient_clip_val=1.0)), check the data, "
                "or raise max_recoveries.",
            )
        self.recoveries += 1
        self._spike_line = self._describe(loop, batch_idx)  # before the roll-back changes the running mean
        self._skipped.update((loop.epoch, b) for b in skip)
        self._write(trainer)

    def _log_recovery(self, trainer: Any, loop: Any, batch_idx: int, first: int, last: int, restored: int,
                      replayed: int) -> None:
        rank_zero_info(
            f"SpikeDetection: {self._spike_line}; rolled back to before batch {restored}, replayed "
            f"{replayed} batch{'es' if replayed != 1 else ''} from memory, skipping batches {first}-{last} "
            f"(recovery {self.recoveries} of at most {self.max_recoveries})."
        )
