"""What ``self.log`` records, how it is reduced, and where it goes.

Logged tensors stay on their device: a step value is a reference to a detached tensor and an epoch
value a running weighted sum on the device. Nothing is turned into a Python number until a logger
or the progress bar reads it, so logging every step adds no device sync to the loop.
"""

from __future__ import annotations

from numbers import Number
from typing import Any, Callable

import torch
from torch import Tensor

from fulmen.errors import MisconfigurationException

# hook -> (default on_step, default on_epoch, may log per step). Hooks missing here may not log.
_STEP = (True, False, True)
_EPOCH = (False, True, False)
_EVAL_STEP = (False, True, True)
LOGGABLE_HOOKS: dict[str, tuple[bool, bool, bool]] = {
    **dict.fromkeys(
        (
            "training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward",
            "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "optimizer_step",
            "optimizer_zero_grad", "configure_gradient_clipping", "clip_gradients", "lr_scheduler_step",
            "backward", "manual_backward",
        ),
        _STEP,
    ),
    **dict.fromkeys(("on_train_start", "on_train_epoch_start", "on_train_epoch_end"), _EPOCH),
    **dict.fromkeys(
        (
            "validation_step", "on_validation_batch_start", "on_validation_batch_end",
            "test_step", "on_test_batch_start", "on_test_batch_end",
        ),
        _EVAL_STEP,
    ),
    **dict.fromkeys(
        (
            "on_validation_start", "on_validation_epoch_start", "on_validation_epoch_end",
            "on_test_start", "on_test_epoch_start", "on_test_epoch_end",
        ),
        _EPOCH,
    ),
}

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}


def _is_torchmetric(value: Any) -> bool:
    # avoids importing torchmetrics: it is optional and slow to import
    return type(value).__module__.startswith("torchmetrics") or any(
        c.__module__.startswith("torchmetrics") and c.__name__ == "Metric" for c in type(value).__mro__
    )


class _Slot:
    """One logged name in one hook: its settings and its step and epoch values."""

    __slots__ = (
        "name", "fx", "config", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist",
        "sync_dist_group", "dataloader_idx", "step_value", "acc", "weight", "values", "metric",
        "epoch_value",
    )

    def __init__(self, name: str, fx: str, config: tuple, on_step: bool, on_epoch: bool, prog_bar: bool,
                 logger: bool, reduce: str | Callable, sync_dist: bool, sync_dist_group: Any,
                 dataloader_idx: int | None) -> None:
        self.name, self.fx, self.config = name, fx, config
        self.on_step, self.on_epoch, self.prog_bar, self.logger = on_step, on_epoch, prog_bar, logger
        self.reduce, self.sync_dist, self.sync_dist_group = reduce, sync_dist, sync_dist_group
        self.dataloader_idx = dataloader_idx
        self.step_value: Tensor | None = None
        self.acc: Tensor | None = None
        self.weight: Tensor | float = 0.0
        self.values: list[Tensor] = []
        self.metric: Any = None
        self.epoch_value: Tensor | None = None

    @property
    def step_key(self) -> str:
        return f"{self.name}_step" if self.on_epoch else self.name

    @property
    def epoch_key(self) -> str:
        return f"{self.name}_epoch" if self.on_step else self.name

    def reset(self) -> None:
        self.step_value = self.acc = self.epoch_value = None
        self.weight = 0.0
        self.values = []
        if self.metric is not None:
            self.metric.reset()

    def update(self, value: Tensor, batch_size: int) -> None:
        self.step_value = value
        if not self.on_epoch:
            return
        reduce = self.reduce
        if reduce == "mean":
            v = value * batch_size
            self.acc = v if self.acc is None else self.acc + v
            self.weight += batch_size
        elif reduce == "sum":
            self.acc = value if self.acc is None else self.acc + value
        elif reduce == "max":
            self.acc = value if self.acc is None else torch.maximum(self.acc, value)
        elif reduce == "min":
            self.acc = value if self.acc is None else torch.minimum(self.acc, value)
        else:
            self.values.append(value)

    def compute_epoch(self, reduce_fn: Callable[[Tensor, str, Any], Tensor]) -> Tensor | None:
        """The epoch value; ``reduce_fn`` syncs across processes when ``sync_dist`` asks for it."""
        if self.metric is not None:
            value = self.metric.compute()
        elif self.reduce == "mean":
            if self.acc is None:
                return self.epoch_value
            acc, weight = self.acc, self.weight
            if self.sync_dist:
                acc = reduce_fn(acc, "sum", self.sync_dist_group)
                weight = reduce_fn(torch.as_tensor(weight, dtype=acc.dtype, device=acc.device), "sum",
                                   self.sync_dist_group)
            self.epoch_value = acc / weight
            return self.epoch_value
        elif self.reduce in ("sum", "max", "min"):
            if self.acc is None:
                return self.epoch_value
            value = self.acc
            if self.sync_dist:
                value = reduce_fn(value, self.reduce, self.sync_dist_group)
        else:
            if not self.values:
                return self.epoch_value
            value = self.reduce(torch.stack(self.values))
            if self.sync_dist:
                value = reduce_fn(value, "mean", self.sync_dist_group)
        self.epoch_value = value
        return value

    def current_step_value(self, reduce_fn: Callable[[Tensor, str, Any], Tensor]) -> Tensor | None:
        v = self.step_value
        if v is not None and self.sync_dist:
            op = self.reduce if self.reduce in ("sum", "max", "min") else "mean"
            v = reduce_fn(v, op, self.sync_dist_group)
        return v


class ResultCollection:
    """Everything logged during one stage (training, validation, test) of a run."""

    def __init__(self, training: bool) -> None:
        self.training = training
        self.slots: dict[tuple, _Slot] = {}
        self.fx: str | None = None  # the hook running now; set by the trainer before it calls one
        self.dataloader_idx: int | None = None  # set when the stage has several loaders
        self.batch: Any = None
        self._batch_size: int | None = None

    def new_batch(self, batch: Any, dataloader_idx: int | None) -> None:
        self.batch, self._batch_size, self.dataloader_idx = batch, None, dataloader_idx

    def batch_size(self) -> int:
        if self._batch_size is None:
            from fulmen.utilities import extract_batch_size

            self._batch_size = extract_batch_size(self.batch) if self.batch is not None else 1
        return self._batch_size

    def reset(self) -> None:
        for slot in self.slots.values():
            slot.reset()

    # -- recording ----------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool, logger: bool | None, on_step: bool | None,
            on_epoch: bool | None, reduce_fx: str | Callable, enable_graph: bool, sync_dist: bool,
            sync_dist_group: Any, add_dataloader_idx: bool, batch_size: int | None, device: torch.device) -> None:
        fx = self.fx
        dl_idx = self.dataloader_idx if add_dataloader_idx else None
        key = (fx, name, dl_idx)
        slot = self.slots.get(key)
        config = (prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx)
        if slot is None:
            slot = self._new_slot(key, config, value)
        elif slot.config != config:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` was called twice in `{fx}` with different arguments "
                f"(first {self._describe(slot.config)}, now {self._describe(config)}). "
                "Log it with the same arguments every time, or use another name."
            )
        if slot.metric is not None:
            if value is not slot.metric:
                raise MisconfigurationException(
                    f"`self.log({name!r}, ...)` got a different torchmetrics object than before in `{fx}`; "
                    "log the same Metric instance each time."
                )
            cached = getattr(value, "_forward_cache", None)
            slot.step_value = cached.detach() if isinstance(cached, Tensor) else None
            return
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise MisconfigurationException(
                    f"`self.log({name!r}, value)` got a tensor of shape {tuple(value.shape)}; only scalars can be "
                    f"logged. Reduce it first, e.g. `self.log({name!r}, value.mean())`."
                )
            if value.ndim:
                value = value.reshape(())
            if not enable_graph:
                value = value.detach()
            if not value.is_floating_point():
                value = value.to(torch.get_default_dtype())
        elif isinstance(value, Number):
            value = torch.tensor(float(value), device=device)
        else:
            raise MisconfigurationException(
                f"`self.log({name!r}, value)` got a {type(value).__name__}; log a Python number, a scalar tensor "
                "or a torchmetrics Metric. For a dict of values use `self.log_dict(...)`."
            )
        if slot.on_epoch and slot.reduce == "mean":
            slot.update(value, self.batch_size() if batch_size is None else int(batch_size))
        else:
            slot.update(value, 1)

    def _new_slot(self, key: tuple, config: tuple, value: Any) -> _Slot:
        fx, name, dl_idx = key
        prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, _ = config
        if fx not in LOGGABLE_HOOKS:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` cannot be called in `{fx}`: values are only recorded in the "
                "training, validation and test steps and their batch/epoch hooks. Move the call into "
                "one of those, e.g. `on_train_epoch_end` or `validation_step`."
            )
        default_step, default_epoch, step_allowed = LOGGABLE_HOOKS[fx]
        on_step = default_step if on_step is None else bool(on_step)
        on_epoch = default_epoch if on_epoch is None else bool(on_epoch)
        if on_step and not step_allowed:
            raise MisconfigurationException(
                f"`self.log({name!r}, on_step=True)` is not possible in `{fx}`, which runs once per epoch. "
                "Drop `on_step=True`."
            )
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"`self.log({name!r}, on_step=False, on_epoch=False)` would record nothing; set one of them to True."
            )
        if isinstance(reduce_fx, str):
            if reduce_fx.lower() not in _REDUCE_NAMES:
                raise MisconfigurationException(
                    f"`self.log({name!r}, reduce_fx={reduce_fx!r})` is not supported; use 'mean', 'sum', 'max', "
                    "'min' or a callable such as torch.median."
                )
            reduce: str | Callable = _REDUCE_NAMES[reduce_fx.lower()]
        elif reduce_fx in (torch.mean,):
            reduce = "mean"
        elif reduce_fx in (torch.sum,):
            reduce = "sum"
        elif reduce_fx in (torch.max, max):
            reduce = "max"
        elif reduce_fx in (torch.min, min):
            reduce = "min"
        elif callable(reduce_fx):
            reduce = reduce_fx
        else:
            raise MisconfigurationException(f"`reduce_fx` must be a string or a callable, got {reduce_fx!r}.")
        full = name if dl_idx is None else f"{name}/dataloader_idx_{dl_idx}"
        slot = _Slot(full, fx, config, on_step, on_epoch, bool(prog_bar), True if logger is None else bool(logger),
                     reduce, bool(sync_dist), None, dl_idx)
        if _is_torchmetric(value):
            slot.metric = value
        self.slots[key] = slot
        return slot

    @staticmethod
    def _describe(config: tuple) -> str:
        names = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "sync_dist", "add_dataloader_idx")
        return ", ".join(f"{n}={v!r}" for n, v in zip(names, config))


def _item(v: Tensor) -> float:
    return v.item()


class MetricsHub:
    """The trainer's view of logged values: ``callback_metrics``, ``logged_metrics``,
    ``progress_bar_metrics``, and the hand-over to loggers."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.callback: dict[str, Tensor] = {}
        self.logged: dict[str, Tensor] = {}
        self.pbar: dict[str, Tensor] = {}
        self.train = ResultCollection(training=True)
        self.eval = ResultCollection(training=False)
        self.current: ResultCollection | None = None  # the collection self.log writes into now

    def _reduce(self, value: Tensor, op: str, group: Any) -> Tensor:
        return self.trainer.strategy.reduce(value, group=group, reduce_op=op)

    def reset_all(self) -> None:
        self.callback.clear()
        self.logged.clear()
        self.pbar.clear()
        self.train = ResultCollection(training=True)
        self.eval = ResultCollection(training=False)

    # -- views ------------------------------------------------------------------------------------
    def callback_metrics(self) -> dict[str, Tensor]:
        """Step values of the running training batch on top of everything reduced so far."""
        out = dict(self.callback)
        for slot in self.train.slots.values():
            if slot.on_step and slot.step_value is not None:
                v = slot.current_step_value(self._reduce)
                out[slot.step_key] = v
                out[slot.name] = v
        return out

    def progress_bar_metrics(self) -> dict[str, float]:
        out = {k: _item(v) for k, v in self.pbar.items()}
        for slot in self.train.slots.values():
            if slot.prog_bar and slot.on_step and slot.step_value is not None:
                out[slot.step_key] = _item(slot.current_step_value(self._reduce))
        return out

    # -- events -----------------------------------------------------------------------------------
    def train_step_end(self, step: int, flush: bool) -> None:
        """After a training batch: hand step values to the loggers every ``log_every_n_steps``."""
        if not flush:
            return
        metrics: dict[str, Tensor] = {}
        for slot in self.train.slots.values():
            if slot.on_step and slot.step_value is not None:
                v = slot.current_step_value(self._reduce)
                self.callback[slot.name] = self.callback[slot.step_key] = v
                if slot.prog_bar:
                    self.pbar[slot.step_key] = v
                if slot.logger:
                    metrics[slot.step_key] = v
        if metrics:
            metrics["epoch"] = self.trainer.current_epoch
            self._send(metrics, step)

    def eval_step_end(self, step: int, flush: bool) -> None:
        if not flush:
            return
        metrics = {s.step_key: s.step_value for s in self.eval.slots.values()
                   if s.on_step and s.logger and s.step_value is not None}
        if metrics:
            self._send(metrics, step)

    def epoch_end(self, results: ResultCollection) -> dict[str, Tensor]:
        """Reduce epoch values into the views; returns what went to the loggers."""
        to_log: dict[str, Tensor] = {}
        for slot in results.slots.values():
            if not slot.on_epoch:
                if not results.training and slot.on_step and slot.step_value is not None:
                    self.callback[slot.name] = slot.step_value
                continue
            v = slot.compute_epoch(self._reduce)
            if v is None:
                continue
            v = v.detach()
            self.callback[slot.epoch_key] = self.callback[slot.name] = v
            if slot.prog_bar:
                self.pbar[slot.epoch_key] = v
            if slot.logger:
                to_log[slot.epoch_key] = v
        return to_log

    def send_epoch(self, metrics: dict[str, Tensor], step: int, with_epoch: bool = True) -> None:
        if metrics:
            metrics = dict(metrics)
            if with_epoch:
                metrics["epoch"] = self.trainer.current_epoch
            self._send(metrics, step)

    def _send(self, metrics: dict[str, Any], step: int) -> None:
        self.logged.update(metrics)
        loggers = self.trainer.loggers
        if not loggers or not self.trainer.is_global_zero:
            return
        scalars = {k: _item(v) if isinstance(v, Tensor) else v for k, v in metrics.items()}
        for lg in loggers:
            lg.log_metrics(scalars, step=step)
