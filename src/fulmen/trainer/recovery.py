"""Rolling back a loss spike in the same process: an in-memory snapshot of the training state, and the
batches seen since it, replayed from memory without the ones to skip.

The loop hands its per-batch training step to :func:`guard_training_step` once per epoch; with a
``SpikeDetection`` among the callbacks the step comes back watched by a :class:`SpikeGuard`, else
unchanged (a run without the callback pays nothing). The guard

- skips the batches a recovery marked (they are part of the callback's state, so a resumed run skips
  them too): no forward, no backward, no optimizer step;
- with ``recover=True``, keeps two snapshots (weights, optimizer state, schedulers, gradient scaler,
  random states, ``global_step``, the epoch's logged values, the detector's statistics) taken before a
  window's first batch every ``snapshot_every_n_steps`` optimizer steps, and a reference to each batch
  run since the older one. Two, because the batch *before* the spike is skipped too, and the newest
  snapshot may already contain it;
- asks the detector about each batch's loss (every process agrees) and on a spike either raises
  (Lightning's behaviour) or restores the newest snapshot taken before the first batch to skip, replays
  the batches between it and that batch from memory, and lets the loop go on with the next batch.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Callable

import torch
from torch import Tensor

from fulmen._utils import collect_rng_states, restore_rng_states
from fulmen.trainer.state import LoopState


def guard_training_step(trainer: Any, loop: LoopState, step: Callable) -> Callable:
    """The loop's ``step(batch, batch_idx, first_in_window, ends_window)``, watched by the run's
    ``SpikeDetection`` when it has one (``step`` itself otherwise)."""
    for cb in trainer.callbacks:
        guard = getattr(cb, "_guard", None)
        if guard is not None:
            return guard.wrap(trainer, loop, step)
    return step


def _local(t: Tensor) -> Tensor:
    # a DTensor (FSDP2) keeps this process's shard in a plain tensor: the snapshot copies that
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


class _Copies:
    """Host copies of a fixed list of tensors, allocated once and refilled in place (pinned for a GPU, so
    the device-to-host copies do not wait for the device)."""

    def __init__(self) -> None:
        self.buffers: list[Tensor] = []

    def fill(self, tensors: list[Tensor]) -> list[Tensor]:
        tensors = [_local(t.detach()) for t in tensors]
        if [(b.shape, b.dtype) for b in self.buffers] != [(t.shape, t.dtype) for t in tensors]:
            self.buffers = [torch.empty(t.shape, dtype=t.dtype, device="cpu",
                                        pin_memory=t.is_cuda and torch.cuda.is_available()) for t in tensors]
        for b, t in zip(self.buffers, tensors):
            b.copy_(t, non_blocking=True)
        return self.buffers


class Snapshot:
    """The training state before batch ``before`` of epoch ``epoch``, kept in host memory."""

    def __init__(self) -> None:
        self.epoch = self.before = -1
        self._weights, self._optim = _Copies(), _Copies()
        self._optim_layout: list[list[tuple[Any, list[tuple[str, Any]]]]] = []
        self._groups: list[list[dict[str, Any]]] = []
        self._rest: dict[str, Any] = {}

    def take(self, trainer: Any, loop: LoopState, batch_idx: int, detector: Any) -> None:
        module = trainer.lightning_module
        self.epoch, self.before = loop.epoch, batch_idx
        self._weights.fill([*module.parameters(), *module.buffers()])
        tensors: list[Tensor] = []
        self._optim_layout, self._groups = [], []
        for opt in trainer.optimizers:
            layout = []
            for p, state in opt.state.items():
                entries = []
                for k, v in state.items():
                    if isinstance(v, Tensor):
                        entries.append((k, True, len(tensors)))
                        tensors.append(v)
                    else:
                        entries.append((k, False, deepcopy(v)))
                layout.append((p, entries))
            self._optim_layout.append(layout)
            self._groups.append([{k: deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups])
        self._optim.fill(tensors)
        scaler = getattr(trainer.strategy.precision, "scaler", None)
        self._rest = {
            "global_step": loop.global_step,
            "schedulers": [deepcopy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs],
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": collect_rng_states(),
            "logged": _logged_values(trainer._metrics.train),
            "detector": detector._stats(),
        }

    def restore(self, trainer: Any, loop: LoopState, detector: Any) -> None:
        module = trainer.lightning_module
        with torch.no_grad():
            for t, b in zip([*module.parameters(), *module.buffers()], self._weights.buffers):
                _local(t).copy_(b, non_blocking=True)
            for opt, layout, groups in zip(trainer.optimizers, self._optim_layout, self._groups):
                saved = dict(layout)
                for p in list(opt.state):
                    if p not in saved:  # no state yet at the snapshot (its first step came later)
                        del opt.state[p]
                for p, entries in saved.items():
                    state = opt.state[p]
                    for k in [k for k in state if k not in {e[0] for e in entries}]:
                        del state[k]
                    for k, is_tensor, v in entries:
                        if not is_tensor:
                            state[k] = deepcopy(v)
                        elif isinstance(state.get(k), Tensor):  # refilled in place: DTensors keep their layout
                            _local(state[k]).copy_(self._optim.buffers[v], non_blocking=True)
                        else:
                            state[k] = self._optim.buffers[v].to(_local(p).device, copy=True)
                for g, values in zip(opt.param_groups, groups):
                    g.update(deepcopy(values))
                opt.zero_grad(set_to_none=True)
        rest = self._rest
        loop.global_step = rest["global_step"]
        for cfg, state in zip(trainer.lr_scheduler_configs, rest["schedulers"]):
            cfg.scheduler.load_state_dict(deepcopy(state))
        scaler = getattr(trainer.strategy.precision, "scaler", None)
        if scaler is not None and rest["scaler"] is not None:
            scaler.load_state_dict(rest["scaler"])
        restore_rng_states(rest["rng"])
        _restore_logged_values(trainer._metrics.train, rest["logged"])
        detector._load_stats(rest["detector"])


def _logged_values(results: Any) -> dict[tuple, tuple]:
    # the epoch's accumulators are replaced, never changed in place, when a value is logged: keeping the
    # references (and a copy of the list of values) is a snapshot
    return {key: (s.acc, s.weight, list(s.values), s.step_value, s.valid) for key, s in results.slots.items()
            if s.metric is None}


def _restore_logged_values(results: Any, saved: dict[tuple, tuple]) -> None:
    for key, slot in results.slots.items():
        if slot.metric is not None:
            continue
        if key in saved:
            slot.acc, slot.weight, values, slot.step_value, slot.valid = saved[key]
            slot.values = list(values)
        else:  # first logged after the snapshot
            slot.acc, slot.weight, slot.values, slot.step_value, slot.valid = None, 0, [], None, False
        slot.epoch_value = None


class SpikeGuard:
    """Watches the training step for ``SpikeDetection``; ``detector`` is the callback (it judges a loss,
    reports a spike, and keeps the skipped batches in its resumable state).

    ``recover=False`` is Lightning's behaviour: the detector raises. With ``recover=True`` see the module's
    description; ``snapshot_every_n_steps`` sets how many optimizer steps apart snapshots are taken.
    """

    def __init__(self, detector: Any, recover: bool, snapshot_every_n_steps: int) -> None:
        self.detector = detector
        self.recover = recover
        self.every = snapshot_every_n_steps
        self.snapshots: list[Snapshot] = []  # oldest first, at most two, all of the running epoch
        self.seen: list[tuple[int, Any, bool, bool]] = []  # (batch_idx, batch, first_in_window, ends_window)
        self._spare: Snapshot | None = None  # buffers to reuse
        self._restart_window = False
        self._fresh_epoch = True

    def wrap(self, trainer: Any, loop: LoopState, step: Callable) -> Callable:
        detector = self.detector
        agree = trainer.strategy.reduce_boolean_decision if trainer.world_size > 1 else None
        self._fresh_epoch = True  # called at each epoch's start: snapshots of an earlier epoch cannot be replayed
        self._restart_window = False

        def guarded(batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
            if (loop.epoch, batch_idx) in detector._skipped:  # read each time: a resume loads a new set
                # the next batch that runs zeroes the gradients if this one would have
                self._restart_window = self._restart_window or first_in_window
                return None
            if self._restart_window:
                first_in_window, self._restart_window = True, False
            if self.recover and (first_in_window or self._fresh_epoch) and self._snapshot_due(loop):
                self._take(trainer, loop, batch_idx)
            out = step(batch, batch_idx, first_in_window, ends_window)
            if self.recover:
                self.seen.append((batch_idx, batch, first_in_window, ends_window))
            loss = out.get("loss") if isinstance(out, dict) else out
            if not isinstance(loss, Tensor):
                return out
            spike = detector._judge(loss, batch_idx)  # the one device sync per batch this callback costs
            if agree is not None:
                spike = agree(spike, all=False)  # a spike on any process is a spike on all of them
            if not spike:
                detector._accept(detector._value, agree)
                return out
            if not self.recover:
                detector._stop(trainer, batch_idx)  # raises TrainingSpikeException
            self._roll_back(trainer, loop, step, batch_idx)
            return None

        return guarded

    def _snapshot_due(self, loop: LoopState) -> bool:
        if self._fresh_epoch or not self.snapshots:
            return True
        return loop.global_step - self.snapshots[-1]._rest["global_step"] >= self.every

    def _take(self, trainer: Any, loop: LoopState, batch_idx: int) -> None:
        if self._fresh_epoch:
            self._fresh_epoch = False
            self._spare = self.snapshots[-1] if self.snapshots else self._spare  # reuse its buffers
            self.snapshots, self.seen = [], []
        if len(self.snapshots) == 2:
            self._spare = self.snapshots.pop(0)
        snap, self._spare = self._spare or Snapshot(), None
        snap.take(trainer, loop, batch_idx, self.detector)
        self.snapshots.append(snap)
        oldest = self.snapshots[0].before
        self.seen = [entry for entry in self.seen if entry[0] >= oldest]

    def _roll_back(self, trainer: Any, loop: LoopState, step: Callable, batch_idx: int) -> None:
        detector = self.detector
        first = max(batch_idx - detector.skip_before, self.snapshots[0].before)  # nothing older can be undone
        last = batch_idx + detector.skip_after
        detector._recovered(trainer, loop, batch_idx, first, last)  # counts; raises past max_recoveries
        snap = [s for s in self.snapshots if s.before <= first][-1]
        newer = [s for s in self.snapshots if s.before > first]
        self.snapshots = [snap]
        self._spare = newer[0] if newer else self._spare
        snap.restore(trainer, loop, detector)
        replay = [entry for entry in self.seen if snap.before <= entry[0] < first]
        self.seen = list(replay)
        results = trainer._metrics.train
        current_batch, ends_window = results.batch, trainer._ends_window
        for idx, batch, first_in_window, ends in replay:
            results.new_batch(batch, None)
            trainer._ends_window = ends
            out = step(batch, idx, first_in_window, ends)
            loss = out.get("loss") if isinstance(out, dict) else out
            if isinstance(loss, Tensor):
                detector._accept(float(loss.detach()), None)
        results.new_batch(current_batch, None)
        trainer._ends_window = ends_window
        self._restart_window = False  # the restored gradients are empty; a window left open goes on
        detector._log_recovery(trainer, loop, batch_idx, first, last, snap.before, len(replay))
