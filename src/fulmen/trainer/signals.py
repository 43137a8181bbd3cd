"""Preemption: SIGTERM (and SLURM's requeue signal) stop a fit cleanly at the next optimizer step.

The handler only sets a Python bool; the training loop reads it after each optimizer step (and, with
several processes, the ranks vote on it every few steps through the strategy and read the vote one step
later, so every rank stops at the same step without waiting for the others). Then the Trainer writes a
resumable checkpoint where ``ckpt_path="last"`` finds it, requeues a SLURM job when asked, and raises
:class:`~fulmen.errors.SIGTERMException`: ``on_exception`` hooks and the loggers' ``finalize`` run, and the
process exits with status ``128 + signal`` (143 for SIGTERM), as a shell reports a process ended by that
signal, so schedulers see an unfinished job.
A second signal ends the process at once. Handlers are installed in the main thread only, and the
previous ones are put back when fit ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from typing import Any

from fulmen._utils import rank_zero_info, rank_zero_warn

# With several processes, ranks vote on "stop" every this many optimizer steps (one tiny collective that
# nobody waits for: its result is read at the next step); on one process the bool is read after every step.
SYNC_EVERY = 8


def _requeue_settings(trainer: Any) -> tuple[bool, Any]:
    """Whether SLURM auto-requeue is on, and its signal: the strategy's SLURMEnvironment when it has one,
    else Lightning's default when SLURM variables are present (auto_requeue=True, SIGUSR1)."""
    from fulmen.trainer.resume import _slurm_detected

    env = getattr(trainer.strategy, "cluster_environment", None)
    sigusr1 = getattr(signal, "SIGUSR1", None)
    if env is not None and hasattr(env, "auto_requeue"):
        return bool(env.auto_requeue), getattr(env, "requeue_signal", None) or sigusr1
    return _slurm_detected() and sigusr1 is not None, sigusr1


class Preemption:
    """Installs the handlers for one fit and tells the loop when to stop.

    Example::

        preemption = Preemption(trainer)
        preemption.install()
        try:
            ...  # the loop calls preemption.check(batches_stepped) after each optimizer step
        finally:
            preemption.restore()
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.requested = False  # set by the handler; the loop's per-step check reads only this
        self.signum: int | None = None
        self.requeue, self.requeue_signal = _requeue_settings(trainer)
        self._previous: dict[int, Any] = {}
        self._start_vote = trainer.strategy.start_boolean_decision if trainer.strategy.world_size > 1 else None
        self._vote: Any = None  # the vote started at the last sync point, read at the next step

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a fit in a thread keeps the host's handlers
        signums = [signal.SIGTERM]
        if self.requeue and self.requeue_signal is not None and self.requeue_signal != signal.SIGTERM:
            signums.append(self.requeue_signal)
        for signum in signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        vote, self._vote = self._vote, None
        if vote is not None:  # every rank started it, so it completes; left in flight, the process group
            try:              # could close under it at exit and gloo's transport thread would abort the process
                vote()
            except Exception:  # noqa: BLE001 - a peer is gone: the run is ending with its own error anyway
                pass
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: the user (or the scheduler) wants out now
            self.restore()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = True
        self.signum = signum

    def check(self, batches_stepped: int) -> bool:
        """After an optimizer step: whether every rank stops here. With several processes a vote starts every
        SYNC_EVERY steps and is read at the step after, when it has long arrived: a blocking collective here
        would make every rank wait for the slowest one each time."""
        if self._start_vote is None:
            return self.requested
        vote, self._vote = self._vote, None
        if vote is not None and vote():
            return True
        if batches_stepped % SYNC_EVERY == 0:
            self._vote = self._start_vote(self.requested, all=False)
        return False

    def stop(self) -> None:
        """At a step boundary after a signal: save, requeue when asked, and leave fit."""
        from fulmen.errors import SIGTERMException
        from fulmen.trainer.resume import hpc_save_path, preemption_path

        trainer = self.trainer
        signum = self.signum if self.signum is not None else signal.SIGTERM
        requeue = self.requeue and signum == self.requeue_signal
        path = hpc_save_path(trainer) if requeue else preemption_path(trainer)
        path = trainer.strategy.broadcast(path)
        rank_zero_info(f"Received {signal.Signals(signum).name}: stopping at global step {trainer.global_step}, "
                       f"saving {path}.")
        trainer.save_checkpoint(path)
        trainer._flush_checkpoints()  # the process is about to end: every write (this one too) must be on disk
        if requeue and trainer.is_global_zero:
            _requeue_slurm_job()
        raise SIGTERMException(128 + int(signum))


def _requeue_slurm_job() -> None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job_id):
        rank_zero_warn(f"Cannot requeue: SLURM_JOB_ID={job_id!r} is not a job id. Resubmit the job yourself.")
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    except FileNotFoundError:
        rank_zero_warn(f"Cannot requeue SLURM job {job_id}: `scontrol` is not on PATH. Resubmit the job yourself.")
        return
    if result.returncode == 0:
        rank_zero_info(f"Requeued SLURM job {job_id}.")
    else:
        rank_zero_warn(f"`scontrol requeue {job_id}` failed ({result.returncode}): {result.stderr.strip()}")
