"""What the Trainer is doing, and the one resumable record of how far it got.

``TrainerState`` says which entry point runs and in which stage (Lightning's names and values).
``LoopState`` is everything a checkpoint needs to continue a fit exactly where it stopped: if a
counter is not in here, it is not resumable, on purpose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


def accumulation_window(batch_idx: int, accumulate: int, is_last: bool) -> tuple[bool, bool]:
    """Where a training batch sits in its gradient-accumulation window: ``(first_in_window, ends_window)``.

    The one home of the rule: a window starts every ``accumulate`` batches of the epoch and ends after
    ``accumulate`` batches or at the epoch's last batch, where the optimizer steps. The loop decides it once
    per batch and everything else (the step, the counters, the schedulers, the finders) reads its answer.
    Manual optimization accumulates in ``training_step``, so its loop passes ``accumulate=1``.

    Example::

        accumulation_window(batch_idx=3, accumulate=4, is_last=False)  # (False, True): the optimizer steps
    """
    return batch_idx % accumulate == 0, is_last or (batch_idx + 1) % accumulate == 0


def logging_due(batches_stepped: int, every: int) -> bool:
    """The one home of the logging cadence: whether step-level values go to the loggers once
    ``batches_stepped`` batches ended an accumulation window (every ``log_every_n_steps``, never when 0).
    The loop flushes its rows on it, the monitoring callbacks log on it (before a batch: ``+ 1``).

    Example::

        logging_due(trainer._loop.batches_stepped, trainer.log_every_n_steps)
    """
    return every > 0 and batches_stepped % every == 0


class TrainerFn(str, Enum):
    """The entry point that is running: ``trainer.state.fn``."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(str, Enum):
    """The loop that is running: ``trainer.state.stage``."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str:
        return "val" if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING) else self.value


class TrainerStatus(str, Enum):
    """Whether a run is starting, running, done, or was interrupted: ``trainer.state.status``."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"


@dataclass
class TrainerState:
    """``trainer.state``: status, entry point (``fn``) and loop (``stage``).

    Example::

        trainer.state.fn == "fit" and trainer.state.stage == "train"
    """

    status: TrainerStatus = TrainerStatus.INITIALIZING
    fn: TrainerFn | None = None
    stage: RunningStage | None = None

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


@dataclass
class LoopState:
    """The progress of a fit, complete enough to resume it exactly.

    ``epoch`` is the epoch running (or about to run); ``batches_in_epoch`` the training batches of it
    already processed; ``epoch_loop_done`` is set once the epoch's batches are exhausted, so that a
    checkpoint written by an epoch-end hook resumes at the next epoch. ``epoch_start_rng`` are the
    random states right before the epoch's data iterator was made (it draws its shuffle order from
    them), so a mid-epoch resume can rebuild the same order and skip what was already seen.
    """

    epoch: int = 0
    global_step: int = 0  # optimizer steps taken
    batches_in_epoch: int = 0
    total_batches: int = 0  # training batches processed over the whole fit
    batches_stepped: int = 0  # training batches that ended an accumulation window (the logging step)
    epoch_loop_done: bool = False
    val_batches: list[int] = field(default_factory=list)  # per validation loader, over the fit: the x axis
    # of step-level validation logs
    should_stop: bool = False
    epoch_start_rng: dict[str, Any] | None = field(default=None, repr=False)
    # the seed of the distributed samplers' shuffle (with the epoch, it fixes every rank's order), kept so a
    # resumed run reads the same order whatever it was seeded with
    sampler_seed: int | None = None
    # the training loader's own torch.Generator states (loader, sampler) at the epoch's start, and at the save
    epoch_start_generators: list[Any] | None = field(default=None, repr=False)
    loader_generators: list[Any] | None = field(default=None, repr=False)
    loader_state: Any = field(default=None, repr=False)  # a stateful loader's state_dict() at a mid-epoch save
    # the training loader's workers: their base seed and, per worker, the random states after the last batch
    # consumed from it (trainer/data.py, _WorkerStreams), so a resumed run's workers continue them
    worker_streams: dict[str, Any] | None = field(default=None, repr=False)
    # at a mid-epoch save: the epoch reductions of self.log(on_epoch=True) and the logged torchmetrics' states
    epoch_metrics: dict[Any, Any] | None = field(default=None, repr=False)
    metric_states: dict[str, Any] | None = field(default=None, repr=False)
    logger_states: list[Any] | None = field(default=None, repr=False)  # e.g. how many CSV rows were on disk
    pending_step_row: Any = field(default=None, repr=False)  # (row, step) a batch-end save preceded
    val_pending: bool = False  # a batch-end save preceded the validation due after that batch: run it first
    # how the epoch's samples are spread over the processes (world size, batch size per process, accumulation, the
    # recipe of the epoch's world-size-independent order): a run resumed on another number of processes splits
    # the epoch's rest from it (trainer/elastic.py)
    data_order: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])
