"""``Timer``: measure time spent in training, validation and testing, and stop fit after a duration."""

from __future__ import annotations

import time
from datetime import timedelta
from enum import Enum
from typing import Any

from fulmen._utils import rank_zero_info
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import RunningStage


class Interval(Enum):
    """How often ``Timer`` checks the time limit."""

    step = "step"
    epoch = "epoch"


_STAGES = (RunningStage.TRAINING, RunningStage.VALIDATING, RunningStage.TESTING)


def _parse_duration(duration: Any) -> timedelta | None:
    if duration is None or isinstance(duration, timedelta):
        return duration
    if isinstance(duration, dict):
        return timedelta(**duration)
    if isinstance(duration, str):
        try:
            days, hours, minutes, seconds = (int(p) for p in duration.strip().split(":"))
        except ValueError:
            raise MisconfigurationException(
                f"Timer(duration={duration!r}): write it as 'DD:HH:MM:SS', e.g. '00:12:00:00' for twelve hours."
            ) from None
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise MisconfigurationException(
        f"Timer(duration={duration!r}): pass 'DD:HH:MM:SS', a datetime.timedelta or a dict like {{'hours': 2}}."
    )


class Timer(Callback):
    """Time each stage, and stop training once ``duration`` of training time has passed.

    The limit is checked after every step (``interval="step"``) or epoch (``"epoch"``). Elapsed training
    time is saved in checkpoints, so a resumed run counts on from it.

    Args:
        duration: Training time after which fit stops: ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict such as
            ``{"hours": 12}``. None: no limit, only timing.
        interval: "step" or "epoch": when the limit is checked.
        verbose: Log a line when the time limit ends training.

    Example::

        timer = Timer(duration="00:12:00:00")  # stop after 12 hours
        trainer = fulmen.Trainer(callbacks=[timer])
        trainer.fit(model, loader)
        timer.time_elapsed("train"), timer.time_elapsed("validate")
    """

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        self._duration = _parse_duration(duration)
        self._duration_s = self._duration.total_seconds() if self._duration is not None else None
        if interval not in ("step", "epoch"):
            raise MisconfigurationException(f"Timer(interval={interval!r}): use 'step' or 'epoch'.")
        self._interval = Interval(interval)
        self._verbose = verbose
        self._start_time: dict[RunningStage, float | None] = {s: None for s in _STAGES}
        self._end_time: dict[RunningStage, float | None] = {s: None for s in _STAGES}
        self._offset = 0.0

    def start_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last started (``time.monotonic()``), or None."""
        return self._start_time[RunningStage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last ended (``time.monotonic()``), or None."""
        return self._end_time[RunningStage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` ('train', 'validate' or 'test'); training time includes resumed time."""
        stage = RunningStage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == RunningStage.TRAINING else 0.0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of ``duration`` (None without a duration)."""
        return None if self._duration_s is None else self._duration_s - self.time_elapsed(stage)

    def _start(self, stage: RunningStage) -> None:
        self._start_time[stage] = time.monotonic()
        self._end_time[stage] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.TRAINING)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time[RunningStage.TRAINING] = time.monotonic()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.VALIDATING)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time[RunningStage.VALIDATING] = time.monotonic()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.TESTING)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time[RunningStage.TESTING] = time.monotonic()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._duration_s is not None:  # a restored timer may be used up already
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._interval is Interval.step and self._duration_s is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._interval is Interval.epoch and self._duration_s is not None:
            self._check_time_remaining(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {s.value: self.time_elapsed(s.value) for s in _STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict.get("time_elapsed", {}).get(RunningStage.TRAINING.value, 0.0)

    def _check_time_remaining(self, trainer: Any) -> None:
        should_stop = trainer.strategy.broadcast(self.time_elapsed() >= self._duration_s)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            rank_zero_info(f"Timer ends the run after {timedelta(seconds=int(self.time_elapsed()))}.")
