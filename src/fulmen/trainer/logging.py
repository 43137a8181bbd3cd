"""What ``self.log`` records, how it is reduced, and what the trainer's metric views show.

Each logged name in each hook is a ``_Slot``. A step value is a reference to the detached tensor; an
epoch value is a running (weighted) reduction kept on the device. Nothing becomes a Python number
until a logger or the progress bar reads it, so ``self.log`` every step adds no device sync.

The three views (``trainer.callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``) behave as
in Lightning: each is a dict of everything seen so far, brought up to date with the running stage's
values whenever it is read. While a batch loop runs, a stage shows step values (``name``/``name_step``);
once its batches are done, epoch values (``name``/``name_epoch``). Evaluation step values never reach
``callback_metrics``.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import nullcontext
from numbers import Number
from typing import Any, Callable

import torch
from torch import Tensor

from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import RunningStage

# hook -> (default on_step, default on_epoch, per-step hook). A hook missing here may not log.
_STEP = (True, False, True)
_EPOCH = (False, True, False)
_EVAL_STEP = (False, True, True)
LOGGABLE_HOOKS: dict[str, tuple[bool, bool, bool]] = {
    **dict.fromkeys(
        (
            "training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward", "backward",
            "on_after_backward", "on_before_optimizer_step", "optimizer_step", "on_before_zero_grad",
            "optimizer_zero_grad", "configure_gradient_clipping", "clip_gradients",
        ),
        _STEP,
    ),
    **dict.fromkeys(
        (
            "validation_step", "on_validation_batch_start", "on_validation_batch_end",
            "test_step", "on_test_batch_start", "on_test_batch_end",
        ),
        _EVAL_STEP,
    ),
    **dict.fromkeys(
        (
            "on_train_start", "on_train_epoch_start", "on_train_epoch_end",
            "on_validation_start", "on_validation_epoch_start", "on_validation_epoch_end",
            "on_test_start", "on_test_epoch_start", "on_test_epoch_end",
        ),
        _EPOCH,
    ),
}

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FNS = {torch.mean: "mean", torch.sum: "sum", sum: "sum", torch.max: "max", max: "max", torch.min: "min",
               min: "min"}
_ALL = object()  # "no dataloader filter"
_NOTHING_TO_RECORD = nullcontext()
_WARNED_UNSYNCED: set[str] = set()  # names warned about (once per process) for epoch values without sync_dist


def _is_torchmetric(value: Any) -> bool:
    # avoids importing torchmetrics, which is optional and slow to import
    return any(c.__module__.startswith("torchmetrics") for c in type(value).__mro__[:-1])


def to_floats(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tensors to Python numbers with one device transfer for all of them; other values unchanged."""
    keys = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    if not keys:
        return dict(metrics)
    out = dict(metrics)
    if len(keys) == 1:
        out[keys[0]] = metrics[keys[0]].item()
        return out
    values = torch.stack([metrics[k].detach().reshape(()).to(torch.float64) for k in keys]).tolist()
    out.update(zip(keys, values))
    return out


class _Slot:
    """One name logged in one hook (and dataloader): its settings, last step value and epoch reduction."""

    __slots__ = (
        "name", "suffix", "fx", "config", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist",
        "sync_dist_group", "dataloader_idx", "step_value", "acc", "weight", "values", "metric", "epoch_value",
        "valid", "device",
    )

    def __init__(self, name: str, suffix: str, fx: str, config: tuple, on_step: bool, on_epoch: bool,
                 prog_bar: bool, logger: bool, reduce: str | Callable, sync_dist: bool, sync_dist_group: Any,
                 dataloader_idx: int | None, device: torch.device) -> None:
        self.name, self.suffix, self.fx, self.config = name, suffix, fx, config
        self.device = device
        self.on_step, self.on_epoch, self.prog_bar, self.logger = on_step, on_epoch, prog_bar, logger
        self.reduce, self.sync_dist, self.sync_dist_group = reduce, sync_dist, sync_dist_group
        self.dataloader_idx = dataloader_idx
        self.metric: Any = None
        self.reset()

    @property
    def key(self) -> str:
        return self.name + self.suffix

    @property
    def step_key(self) -> str:
        return (f"{self.name}_step" if self.on_epoch else self.name) + self.suffix

    @property
    def epoch_key(self) -> str:
        return (f"{self.name}_epoch" if self.on_step else self.name) + self.suffix

    def reset(self) -> None:
        self.step_value: Tensor | float | None = None
        self.acc: Tensor | float | None = None
        self.weight = 0
        self.values: list[Tensor | float] = []
        self.epoch_value: Tensor | None = None
        self.valid = False  # logged since the last reset
        if self.metric is not None:
            self.metric.reset()

    def take_values(self, other: _Slot) -> None:
        """Continue with ``other``'s values (a slot rebuilt from a checkpoint, now logged again)."""
        self.acc, self.weight, self.values, self.valid = other.acc, other.weight, other.values, other.valid
        if self.on_step:
            self.step_value = other.step_value

    def update(self, value: Tensor | float, batch_size: int) -> None:
        """Record one value: a detached tensor, or a Python float that stays one until it is read.

        One tensor op per call at most (Python numbers: none), so logging every step stays cheap.
        """
        self.valid = True
        self.epoch_value = None
        if self.on_step:
            self.step_value = value
        if not self.on_epoch:
            return
        reduce, acc = self.reduce, self.acc
        if reduce == "mean":
            if acc is None:
                self.acc = value * batch_size
            elif type(acc) is Tensor and type(value) is Tensor:
                self.acc = torch.add(acc, value, alpha=batch_size)
            else:
                self.acc = acc + value * batch_size
            self.weight += batch_size
        elif reduce == "sum":
            self.acc = value if acc is None else acc + value
        elif reduce in ("max", "min"):
            if acc is None:
                self.acc = value
            elif type(acc) is float and type(value) is float:
                self.acc = max(acc, value) if reduce == "max" else min(acc, value)
            else:
                pick = torch.maximum if reduce == "max" else torch.minimum
                self.acc = pick(self._tensor(acc), self._tensor(value))
        else:
            self.values.append(value)

    def _tensor(self, value: Tensor | float) -> Tensor:
        if type(value) is Tensor or isinstance(value, Tensor):
            return value
        return torch.tensor(value, dtype=torch.get_default_dtype(), device=self.device)

    def step(self) -> Tensor | None:
        """The value of the latest step (synced across processes when ``sync_dist`` asks for it)."""
        if self.metric is not None:
            cache = getattr(self.metric, "_forward_cache", None)
            # step_value: the latest step's value restored from a checkpoint, before the metric's next forward
            return cache.detach() if isinstance(cache, Tensor) else self.step_value
        v = self.step_value
        if v is not None and not isinstance(v, Tensor):
            v = self.step_value = self._tensor(v)
        return v  # with sync_dist it was reduced when logged (ResultCollection.log), on every rank at once

    def epoch(self, reduce_fn: Callable[[Tensor, str, Any], Tensor]) -> Tensor | None:
        """The reduction over the epoch so far; cached until the next update."""
        if self.epoch_value is not None or not self.valid:
            return self.epoch_value
        if self.metric is not None:
            value = self.metric.compute()
            value = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
        elif self.reduce == "mean":
            acc, weight = self._tensor(self.acc), self.weight
            if self.sync_dist:
                acc = reduce_fn(acc, "sum", self.sync_dist_group)
                weight = reduce_fn(torch.as_tensor(weight, dtype=acc.dtype, device=acc.device), "sum",
                                   self.sync_dist_group)
            value = acc / weight
        elif self.reduce in ("sum", "max", "min"):
            value = self._tensor(self.acc)
            if self.sync_dist:
                value = reduce_fn(value, self.reduce, self.sync_dist_group)
        else:
            value = torch.as_tensor(self.reduce(torch.stack([self._tensor(v) for v in self.values])))
            if self.sync_dist:
                value = reduce_fn(value, "mean", self.sync_dist_group)
        self.epoch_value = value
        return value


class ResultCollection:
    """Everything logged during one stage (training, or evaluation) of a run."""

    def __init__(self, training: bool, reduce_fn: Callable[[Tensor, str, Any], Tensor] | None = None) -> None:
        self.training = training
        self.slots: dict[tuple, _Slot] = {}
        self.fx: str | None = None  # the hook running now; set through `hook(fx)` around each call
        self._callers: list[str | None] = []  # the hooks `hook` interrupted, innermost last
        self.dataloader_idx: int | None = None  # set while a stage with several loaders runs a batch
        self.batch: Any = None
        self._batch_size: int | None = None
        self.in_batches = False  # a batch loop is running: the views show step values
        self.on_dataloader_change: Callable[[ResultCollection], None] | None = None
        self._reduce = reduce_fn or (lambda v, op, group: v)
        self.has_logger = True  # whether `logger=True` can reach a logger (else a warning)
        # several processes: sync_dist values are reduced at points every rank passes (when logged, and when
        # the batch loop ends), never when a view is read, which may happen on rank zero only (progress bar)
        self.distributed = False
        self.pending: dict[tuple, dict[str, Any]] = {}  # epoch accumulators restored from a mid-epoch checkpoint

    def hook(self, fx: str) -> ResultCollection:
        """Record what ``self.log`` logs in the ``with`` block under hook ``fx``, then restore the caller's hook
        (no allocation: it runs around every step).

        Example::

            with results.hook("training_step"):
                loss = module.training_step(batch, batch_idx)
        """
        self._callers.append(self.fx)
        self.fx = fx
        return self

    def __enter__(self) -> ResultCollection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.fx = self._callers.pop()

    # -- resuming mid-epoch ---------------------------------------------------------------------
    def accumulators(self, module: Any = None) -> dict[tuple, dict[str, Any]]:
        """What each slot logged this epoch so far: its epoch reduction (sums, weights, max/min, values of
        custom reductions), its latest step value and, where they fit in plain types, its settings, so a
        resumed run can show and log the slot even if nothing logs it again before the epoch ends.

        ``module`` (the LightningModule) names the torchmetrics objects by their attribute path."""
        paths = {id(m): n for n, m in module.named_modules()} if module is not None else {}
        out = {}
        for key, slot in self.slots.items():
            if not slot.valid or (slot.metric is not None and not slot.on_epoch):
                continue
            state: dict[str, Any] = {"acc": slot.acc, "weight": slot.weight, "values": list(slot.values),
                                     "step": slot.step() if slot.on_step else None}
            settings = _settings(slot, paths)
            if settings is not None:
                state["settings"] = settings
            elif not slot.on_epoch or slot.metric is not None:
                continue  # nothing a re-logged slot could pick up (as before settings were saved)
            out[key] = state
        out.update((k, v) for k, v in self.pending.items() if k not in out)  # restored but not logged again yet
        return out

    def load_accumulators(self, state: dict[tuple, dict[str, Any]], module: Any = None,
                          device: torch.device | None = None) -> None:
        """Continue the epoch's values. A slot saved with its settings is rebuilt now (its values show at the
        epoch's end even if nothing logs it again); one saved without (an older checkpoint) picks its values
        up when it is first logged again."""
        self.pending = {}
        modules = dict(module.named_modules()) if module is not None else {}
        device = device if device is not None else torch.device("cpu")
        for key, saved in state.items():
            if key in self.slots:
                self._resume_slot(self.slots[key], saved)
                continue
            slot = _rebuilt(key, saved.get("settings"), modules, device)
            if slot is None:
                self.pending[key] = saved
                continue
            self._resume_slot(slot, saved)
            self.slots[key] = slot
            if slot.step_value is not None:
                self.in_batches = True  # saved after a batch: the views show its step values until the epoch ends

    @staticmethod
    def _resume_slot(slot: _Slot, state: dict[str, Any]) -> None:
        move = lambda v: v.to(slot.device) if isinstance(v, Tensor) else v  # noqa: E731
        slot.acc, slot.weight = move(state["acc"]), state["weight"]
        slot.values = [move(v) for v in state["values"]]
        if state.get("step") is not None and slot.on_step:
            slot.step_value = move(state["step"])
        slot.valid, slot.epoch_value = True, None

    def new_batch(self, batch: Any, dataloader_idx: int | None) -> None:
        """Called by the loops before each batch (cheap: a few attribute writes)."""
        if dataloader_idx != self.dataloader_idx and self.in_batches and self.on_dataloader_change is not None:
            self.on_dataloader_change(self)
        self.batch, self._batch_size, self.dataloader_idx, self.in_batches = batch, None, dataloader_idx, True

    def batch_size(self) -> int:
        if self._batch_size is None:
            from fulmen._utils import extract_batch_size

            self._batch_size = extract_batch_size(self.batch) if self.batch is not None else 1
        return self._batch_size

    def reset(self) -> None:
        """Forget the values (not the settings) of every slot; torchmetrics objects are reset too."""
        for slot in self.slots.values():
            slot.reset()
        self.pending = {}
        self.in_batches = False
        self.dataloader_idx = None

    # -- reading --------------------------------------------------------------------------------
    def view(self, on_step: bool, dataloader_idx: Any = _ALL) -> tuple[dict, dict, dict]:
        """``(callback, logged, progress bar)`` values of the latest step, or of the epoch so far."""
        callback: dict[str, Tensor] = {}
        log: dict[str, Tensor] = {}
        bar: dict[str, Tensor] = {}
        reduce_fn = self._reduce
        for slot in self.slots.values():
            if not slot.valid:
                continue
            if on_step:
                if not slot.on_step or slot.dataloader_idx != self.dataloader_idx:
                    continue
                value, forked = slot.step(), slot.step_key
            else:
                if not slot.on_epoch or (dataloader_idx is not _ALL and slot.dataloader_idx != dataloader_idx):
                    continue
                value, forked = slot.epoch(reduce_fn), slot.epoch_key
            if value is None:
                continue
            if slot.logger:
                log[forked] = value
            if self.training or not on_step:
                callback[slot.key] = callback[forked] = value
            if slot.prog_bar:
                bar[forked] = value
        return callback, log, bar

    def per_dataloader(self, n: int) -> list[dict[str, float]]:
        """What ``trainer.validate/test`` return: each loader's logged epoch values, as Python numbers."""
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for slot in self.slots.values():
            if not (slot.valid and slot.on_epoch and slot.logger):
                continue
            value = slot.epoch(self._reduce)
            if value is None:
                continue
            for i in range(n) if slot.dataloader_idx is None else (slot.dataloader_idx,):
                out[i][slot.epoch_key] = value
        return [to_floats(d) for d in out]

    # -- recording ------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool, logger: bool | None, on_step: bool | None,
            on_epoch: bool | None, reduce_fx: str | Callable, enable_graph: bool, sync_dist: bool,
            sync_dist_group: Any, add_dataloader_idx: bool, batch_size: int | None, device: torch.device) -> None:
        fx, dl_idx = self.fx, self.dataloader_idx
        key = (fx, name, dl_idx if add_dataloader_idx else None)
        config = (prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist, add_dataloader_idx, dl_idx)
        if isinstance(value, (Tensor, Number)):
            metric = None
        elif _is_torchmetric(value):
            metric = value
        else:
            raise MisconfigurationException(
                f"`self.log({name!r}, value)` got a {type(value).__name__}; log a Python number, a scalar tensor "
                "or a torchmetrics Metric. For a dict of values use `self.log_dict(...)`."
            )
        slot = self.slots.get(key)
        if slot is None or slot.config is None:  # config None: rebuilt from a checkpoint, not logged since
            restored = slot
            slot = self._new_slot(key, config, metric, sync_dist_group, device)
            if restored is not None:
                slot.take_values(restored)
        elif slot.config != config:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` was called twice in `{fx}` with different arguments "
                f"(first {_describe(slot.config)}; now {_describe(config)}). Log it with the same arguments each "
                "time, or use a different name."
            )
        if metric is not None or slot.metric is not None:
            if metric is None or metric is not slot.metric:
                raise MisconfigurationException(
                    f"`self.log({name!r}, ...)` in `{fx}` got a {type(value).__name__}, but a different kind of "
                    "value was logged under this name before. Log the same torchmetrics Metric object each time "
                    "(or plain values each time), or use a different name."
                )
            slot.valid, slot.epoch_value = True, None
            return
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise MisconfigurationException(
                    f"`self.log({name!r}, value)` got a tensor of shape {tuple(value.shape)}; only single values "
                    f"can be logged. Reduce it first, e.g. `self.log({name!r}, value.mean())`."
                )
            if value.ndim:
                value = value.reshape(())
            if not enable_graph:
                value = value.detach()
            if not value.is_floating_point():
                value = value.to(torch.get_default_dtype())
        else:
            value = float(value)  # becomes a tensor (on the module's device) only when it is read
        if slot.on_epoch and slot.reduce == "mean":
            slot.update(value, self.batch_size() if batch_size is None else int(batch_size))
        else:
            slot.update(value, 1)
        if self.distributed and slot.sync_dist:
            if slot.on_step:
                op = slot.reduce if slot.reduce in ("sum", "max", "min") else "mean"
                slot.step_value = self._reduce(slot._tensor(slot.step_value), op, slot.sync_dist_group)
            if not LOGGABLE_HOOKS[slot.fx][2]:  # an epoch-level hook: its value is final now
                slot.epoch(self._reduce)

    def sync_epoch_values(self) -> None:
        """Reduce every epoch value that needs other ranks (sync_dist, torchmetrics); all ranks call this."""
        if not self.distributed:
            return
        for slot in self.slots.values():
            if slot.valid and slot.on_epoch and (slot.sync_dist or slot.metric is not None):
                slot.epoch(self._reduce)
            elif slot.valid and slot.on_epoch and slot.name not in _WARNED_UNSYNCED:
                _WARNED_UNSYNCED.add(slot.name)
                from fulmen._utils import rank_zero_warn

                rank_zero_warn(f"`self.log({slot.name!r}, ...)` logs an epoch value that each process computes from its "
                               f"own share of the data. Add `sync_dist=True` to reduce it across processes, so every "
                               "process (and ModelCheckpoint/EarlyStopping) sees the same value.")

    def _new_slot(self, key: tuple, config: tuple, metric: Any, sync_dist_group: Any, device: torch.device) -> _Slot:
        fx, name, suffix_idx = key
        prog_bar, logger, on_step, on_epoch, reduce_fx, _, sync_dist, add_dataloader_idx, dl_idx = config
        if fx not in LOGGABLE_HOOKS:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` cannot be called in `{fx}`. Values are recorded only in the training, "
                "validation and test steps and in their batch, epoch and start hooks (e.g. `on_train_epoch_end`, "
                "`on_validation_batch_end`). Move the call there, or write to `self.logger.experiment` directly."
            )
        default_step, default_epoch, per_step = LOGGABLE_HOOKS[fx]
        on_step = default_step if on_step is None else bool(on_step)
        on_epoch = default_epoch if on_epoch is None else bool(on_epoch)
        if not per_step and (on_step or not on_epoch):
            raise MisconfigurationException(
                f"`self.log({name!r}, on_step={on_step}, on_epoch={on_epoch})` is not possible in `{fx}`, which runs "
                "once per epoch: values logged there are epoch values. Drop the on_step/on_epoch arguments."
            )
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"`self.log({name!r}, on_step=False, on_epoch=False)` would record nothing; set one of them to True."
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)`: the name already contains '/dataloader_idx_', which fulmen appends "
                "itself. Drop it from the name, or pass `add_dataloader_idx=False`."
            )
        if isinstance(reduce_fx, str):
            reduce: str | Callable | None = _REDUCE_NAMES.get(reduce_fx.lower())
        else:
            reduce = _REDUCE_FNS.get(reduce_fx) or (reduce_fx if callable(reduce_fx) else None)
        if reduce is None:
            raise MisconfigurationException(
                f"`self.log({name!r}, reduce_fx={reduce_fx!r})` is not supported; use 'mean', 'sum', 'max', 'min' "
                "or a callable that reduces a 1-d tensor, such as torch.median."
            )
        if logger and not self.has_logger:
            from fulmen._utils import rank_zero_warn

            rank_zero_warn(f"`self.log({name!r}, ..., logger=True)` was called, but the Trainer has no logger. "
                           "Pass one, e.g. `Trainer(logger=CSVLogger('logs'))`.")
        suffix = "" if suffix_idx is None else f"/dataloader_idx_{suffix_idx}"
        slot = _Slot(name, suffix, fx, config, on_step, on_epoch, bool(prog_bar), True if logger is None else bool(logger),
                     reduce, bool(sync_dist), sync_dist_group, dl_idx, device)
        slot.metric = metric
        self.slots[key] = slot
        if key in self.pending:
            self._resume_slot(slot, self.pending.pop(key))
        return slot


def _settings(slot: _Slot, metric_paths: dict[int, str]) -> dict[str, Any] | None:
    """A slot's settings as plain values (a checkpoint opens with ``weights_only=True``), or None where they do
    not fit: a custom process group, a reduction that is not a function of ``torch``, an unknown metric."""
    reduce = slot.reduce
    if callable(reduce):
        name = getattr(reduce, "__name__", None)
        if name is None or getattr(torch, name, None) is not reduce:
            return None
        reduce = f"torch.{name}"
    metric = None
    if slot.metric is not None:
        metric = metric_paths.get(id(slot.metric))
        if metric is None:
            return None
    if slot.sync_dist_group is not None:
        return None
    return {"name": slot.name, "suffix": slot.suffix, "fx": slot.fx, "on_step": slot.on_step,
            "on_epoch": slot.on_epoch, "prog_bar": slot.prog_bar, "logger": slot.logger, "reduce": reduce,
            "sync_dist": slot.sync_dist, "dataloader_idx": slot.dataloader_idx, "metric": metric}


def _rebuilt(key: tuple, settings: dict[str, Any] | None, modules: dict[str, Any],
             device: torch.device) -> _Slot | None:
    """The slot ``_settings`` described, with no config yet: the first ``self.log`` of it after the resume
    supplies that (and checks its arguments as for a new slot)."""
    if not settings:
        return None
    reduce = settings["reduce"]
    if reduce.startswith("torch."):
        reduce = getattr(torch, reduce[len("torch."):], None)
        if reduce is None:
            return None
    metric = None
    if settings["metric"] is not None:
        metric = modules.get(settings["metric"])
        if metric is None or not _is_torchmetric(metric):
            return None
    slot = _Slot(settings["name"], settings["suffix"], settings["fx"], None, settings["on_step"],
                 settings["on_epoch"], settings["prog_bar"], settings["logger"], reduce, settings["sync_dist"], None,
                 settings["dataloader_idx"], device)
    slot.metric = metric
    return slot


def _describe(config: tuple) -> str:
    names = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "enable_graph", "sync_dist",
             "add_dataloader_idx", "dataloader_idx")
    return ", ".join(f"{n}={v!r}" for n, v in zip(names, config))


class MetricsHub:
    """The trainer's side of logging: the three metric views and the hand-over to loggers.

    ``current`` is the collection ``self.log`` writes to (the running stage's). Assigning another one
    first folds the old one's values into the views, so they keep what was shown before.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.callback: dict[str, Tensor] = {}
        self.logged: dict[str, Tensor] = {}
        self.pbar: dict[str, Tensor] = {}
        self._current: ResultCollection | None = None
        self.reset_all()

    def _reduce(self, value: Tensor, op: str, group: Any) -> Tensor:
        return self.trainer.strategy.reduce(value, group=group, reduce_op=op)

    def _collection(self, training: bool) -> ResultCollection:
        results = ResultCollection(training, self._reduce)
        results.on_dataloader_change = self._dataloader_done
        results.has_logger = bool(self.trainer.loggers)
        results.distributed = self.trainer.world_size > 1
        return results

    def reset_all(self) -> None:
        """A new run (fit, validate, test): empty views, fresh collections."""
        self.callback.clear()
        self.logged.clear()
        self.pbar.clear()
        self._current = None
        self.train = self._collection(training=True)
        self.eval = self._collection(training=False)

    @property
    def current(self) -> ResultCollection | None:
        return self._current

    @current.setter
    def current(self, results: ResultCollection | None) -> None:
        if results is not self._current:
            self._absorb(self._current)
            self._current = results

    def hook(self, fx: str) -> Any:
        """``current.hook(fx)``, or nothing to record when no stage is running (set-up hooks)."""
        results = self._current
        return results.hook(fx) if results is not None else _NOTHING_TO_RECORD

    # -- views ------------------------------------------------------------------------------------
    def _absorb(self, results: ResultCollection | None, on_step: bool | None = None,
                dataloader_idx: Any = _ALL) -> tuple[dict, dict, dict]:
        if results is None:
            return {}, {}, {}
        views = results.view(results.in_batches if on_step is None else on_step, dataloader_idx)
        self.callback.update(views[0])
        self.logged.update(views[1])
        self.pbar.update(views[2])
        return views

    def callback_metrics(self) -> dict[str, Tensor]:
        self._absorb(self._current)
        return self.callback

    def logged_metrics(self) -> dict[str, Tensor]:
        self._absorb(self._current)
        return self.logged

    def progress_bar_metrics(self) -> dict[str, float]:
        self._absorb(self._current)
        return to_floats(self.pbar)

    # -- events from the loops --------------------------------------------------------------------
    def _dataloader_done(self, results: ResultCollection) -> None:
        """Between two evaluation loaders: keep the finished loader's step and epoch values in the views."""
        self._absorb(results, on_step=True)
        self._absorb(results, on_step=False, dataloader_idx=results.dataloader_idx)

    def epoch_end_reached(self, results: ResultCollection) -> None:
        """The batch loop of ``results`` is over: from now on the views show its epoch values."""
        results.sync_epoch_values()
        if results.in_batches:
            self._absorb(results, on_step=True)
        results.in_batches = False
        results.dataloader_idx = None

    def step_end(self, results: ResultCollection, step: int) -> None:
        """A batch's step values go to the loggers (training: every ``log_every_n_steps``, with the epoch)."""
        if self.trainer.loggers:
            self._send(results.view(on_step=True)[1], step, with_epoch=results.training)

    def train_epoch_end(self, step: int) -> None:
        """After the train epoch-end hooks: log the epoch values, then start the next epoch afresh."""
        results = self.train
        self.epoch_end_reached(results)
        self._send(self._absorb(results, on_step=False)[1], step, with_epoch=True)
        results.reset()

    def eval_epoch_end(self, step: int | None, num_loaders: int) -> list[dict[str, float]]:
        """After the evaluation epoch-end hooks: log the epoch values (unless ``step`` is None, as in the
        sanity check) and return them per dataloader."""
        results = self.eval
        self.epoch_end_reached(results)
        log = self._absorb(results, on_step=False)[1]
        if step is not None:
            self._send(log, step, with_epoch=True)
        per_loader = results.per_dataloader(num_loaders)
        # the logged torchmetrics objects start the next evaluation (another trainer.test() call) empty, as in
        # Lightning; their epoch values are computed and cached in the slots by now
        for slot in results.slots.values():
            if slot.metric is not None:
                slot.metric.reset()
        return per_loader

    def pending_train_row(self, step: int) -> tuple[dict[str, float], int] | None:
        """The step row about to go to the loggers, as numbers (written into a checkpoint saved before it)."""
        if not self.trainer.is_global_zero:
            return None
        row = to_floats(self.train.view(on_step=True)[1])
        row.setdefault("epoch", self.trainer.current_epoch)
        return (row, step) if row else None

    def send_row(self, row: dict[str, float], step: int) -> None:
        if self.trainer.is_global_zero:
            for lg in self.trainer.loggers:
                lg.log_metrics(dict(row), step=step)

    def _send(self, metrics: dict[str, Tensor], step: int, with_epoch: bool) -> None:
        trainer = self.trainer
        loggers = trainer.loggers
        if not metrics or not loggers:
            return
        self.logged.update(metrics)
        if not trainer.is_global_zero:
            return
        scalars = to_floats(metrics)
        if with_epoch:
            scalars.setdefault("epoch", trainer.current_epoch)
        for lg in loggers:
            lg.log_metrics(scalars, step=step)
            lg.save()


def log_hyperparams(trainer: Any) -> None:
    """Send the module's and the datamodule's saved hyperparameters to the loggers (rank zero), once per run."""
    if not trainer.loggers or not trainer.enable_autolog_hparams:
        return
    module, dm = trainer.lightning_module, trainer.datamodule
    params: dict[str, Any] = {}
    # only sources that called save_hyperparameters() (logger=True) are logged; with none, loggers get no call
    # (so no hp_metric either), as in Lightning
    sources = getattr(module, "_log_hyperparams", False) or (dm is not None and getattr(dm, "_log_hyperparams", False))
    if getattr(module, "_log_hyperparams", False):
        params.update(module._hparams_to_save(initial=True))
    if dm is not None and getattr(dm, "_log_hyperparams", False):
        dm_params = dm._hparams_to_save(initial=True)
        # LightningCLI's "_class_path" differs by nature; it is not logged either, as in Lightning
        overlap = {k for k in dm_params if k in params and not _same(params[k], dm_params[k]) and k != "_class_path"}
        if overlap:
            raise MisconfigurationException(
                f"The module and the datamodule both save hyperparameter(s) {sorted(overlap)} with different values; "
                "rename one of them."
            )
        params.update(dm_params)
    params.pop("_class_path", None)
    if trainer.is_global_zero:
        for lg in trainer.loggers:
            if sources:
                lg.log_hyperparams(params)
            if getattr(lg, "_log_graph", False) and hasattr(lg, "log_graph"):
                lg.log_graph(module)
            lg.save()


def _same(a: Any, b: Any) -> bool:
    """Whether two hyperparameter values agree (tensors by value; objects that cannot compare: by identity)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    try:
        return bool(a == b)
    except Exception:
        return a is b


# the results table trainer.validate / trainer.test print
def print_results(stage: RunningStage, results: list[dict[str, float]], console_kwargs: dict[str, Any] | None) -> None:
    """The results table as Lightning prints it: metrics by name, one column per dataloader, every value
    to full precision (people copy them into papers); a rich table with ``console_kwargs`` (RichProgressBar's
    console settings, which the loop passes under that progress bar), else plain text.

    Example::

        print_results(RunningStage.TESTING, [{"test_loss": 0.25}], None)
    """
    results = [{k.split("/dataloader_idx_")[0]: v for k, v in r.items()} for r in results]
    names = sorted({k for r in results for k in r})
    headers = [f"{'Validate' if stage == RunningStage.VALIDATING else 'Test'} metric"]
    headers += [f"DataLoader {i}" for i in range(len(results))]
    cells = [[name] + [str(_plain(r[name])) if name in r else " " for r in results] for name in names]
    columns = shutil.get_terminal_size(fallback=(120, 30)).columns or 120
    width = int(min(max(len(max(names + headers[1:], key=len)), 25), columns / 2))
    if console_kwargs is not None:
        from rich.console import Console
        from rich.table import Column, Table

        table = Table(*[Column(h, justify="center", style="magenta" if i else "cyan", width=width)
                        for i, h in enumerate(headers)])
        for row in cells:
            table.add_row(*row)
        Console(**console_kwargs).print(table)
        return
    try:
        rule_char = "─"
        rule_char.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        rule_char = "-"
    rule = rule_char * columns

    def line(row: list[str]) -> str:
        return "".join(f"{cell:^{width}}" for cell in row).rstrip()

    print("\n".join([rule, line(headers), rule, *(line(row) for row in cells), rule]))


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
