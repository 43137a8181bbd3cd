"""Checks of the user's code that fail early with the fix: before a run (the module can be trained, hook
signatures fit the data) and on what ``training_step`` returns (a usable loss, a finite one).

Signatures (and which hooks the module overrides) are read once per run, never per step; the finite-loss check syncs with the device only as
often as ``FiniteLossCheck`` says.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from fulmen._utils import is_overridden
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, NonFiniteLossError
from fulmen.module import LightningModule
from fulmen.trainer import legacy
from fulmen.trainer.state import LoopState, RunningStage, logging_due


def check_fit_configuration(model: Any) -> None:
    """Fail before anything runs when the module cannot be trained."""
    if not is_overridden("training_step", model, LightningModule):
        raise MisconfigurationException(
            f"trainer.fit needs a training step, and {type(model).__name__} has none: define "
            "`training_step(self, batch, batch_idx)` and return the loss."
        )
    if not is_overridden("configure_optimizers", model, LightningModule):
        raise MisconfigurationException(
            f"trainer.fit needs an optimizer, and {type(model).__name__} defines no `configure_optimizers(self)`: "
            "define it, e.g. `return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )


def check_legacy(module: Any, callbacks: list[Any], stage: str) -> None:
    """Lightning 1.x hooks: those Lightning 2.x refuses for ``stage`` fail here with the 2.x way; the
    others warn once (Lightning 2.x skips them)."""
    legacy.check_module(module, LightningModule, stage)
    for cb in callbacks:
        legacy.check_callback(cb, Callback)


def takes(fn: Callable, name: str, min_args: int | None = None) -> bool:
    """Whether ``fn`` accepts ``name`` positionally: by that name, through ``*args``, or (with
    ``min_args``) by having that many positional parameters, as Lightning reads hook signatures."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): pass everything
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (any(p.name == name for p in params) or any(p.kind == p.VAR_POSITIONAL for p in params)
            or (min_args is not None and len(positional) >= min_args))


def step_fn(strategy: Any, module: Any, name: str) -> Callable:
    """The strategy's ``name`` step called as ``fn(batch, batch_idx, *dataloader_idx)``, even when the
    module's step takes no ``batch_idx`` (legal in Lightning: the argument is passed only when the
    signature has it). Decided once per run, so the step itself pays nothing."""
    fn = strategy.step_function(name)
    if takes(getattr(module, name), "batch_idx", min_args=2):
        return fn
    return lambda batch, batch_idx, *dataloader_idx: fn(batch, *dataloader_idx)


def module_hook(module: Any, name: str) -> Callable | None:
    """The module's hook when it overrides it, else None (so the loop can skip the call)."""
    return getattr(module, name) if is_overridden(name, module, LightningModule) else None


def check_dataloader_idx(module: Any, stage: RunningStage, multi: bool) -> None:
    """Lightning's rule for ``dataloader_idx`` in the evaluation/predict step and batch hooks: required
    with several loaders, and without a default a mistake with one."""
    prefix = stage.dataloader_prefix
    hook = "validation" if prefix == "val" else prefix
    step = f"{hook}_step"
    for name in (step, f"on_{hook}_batch_start", f"on_{hook}_batch_end"):
        if name != step and not is_overridden(name, module, LightningModule):
            continue
        fn = getattr(module, name)
        if multi and not takes(fn, "dataloader_idx"):
            raise MisconfigurationException(
                f"There are several {prefix} dataloaders, but `{type(module).__name__}.{name}()` has no "
                "`dataloader_idx` argument. Add `dataloader_idx=0` to its signature."
            )
        if not multi:
            param = legacy._params(fn).get("dataloader_idx")
            if param is not None and param.default is inspect.Parameter.empty:
                raise MisconfigurationException(
                    f"There is a single {prefix} dataloader, but `{type(module).__name__}.{name}()` requires "
                    "`dataloader_idx`. Remove the argument or give it a default: `dataloader_idx=0`."
                )


def training_loss(out: Any) -> Tensor | None:
    """The loss in what ``training_step`` returned (None: skip the batch); anything unusable fails with the fix."""
    if isinstance(out, Tensor):
        loss = out
    elif out is None:
        return None
    elif isinstance(out, dict):
        if "loss" not in out:
            raise MisconfigurationException(
                f"training_step returned a dict without 'loss' (keys: {sorted(out)}). Put the loss under 'loss', "
                "e.g. `return {'loss': loss, 'acc': acc}`."
            )
        loss = out["loss"]
        if not isinstance(loss, Tensor):
            raise MisconfigurationException(f"training_step's 'loss' is a {type(loss).__name__}; it must be a tensor.")
    else:
        raise MisconfigurationException(
            f"training_step returned a {type(out).__name__}. Return the loss tensor, a dict with a 'loss' tensor, or "
            "None to skip the batch."
        )
    if not loss.requires_grad:
        raise MisconfigurationException(
            "training_step returned a loss that does not require grad, so there is nothing to train. Was it "
            "computed under torch.no_grad(), from .detach()/.item(), or from frozen parameters only?"
        )
    return loss


def step_outputs(out: Any) -> Any:
    """What on_train_batch_end receives: ``{"loss": detached loss, **extras}``, as in Lightning;
    anything else (manual optimization may return what it likes) is passed on as it is."""
    if isinstance(out, Tensor):
        return {"loss": out.detach()}
    if isinstance(out, dict):
        return {k: (v.detach() if k == "loss" and isinstance(v, Tensor) else v) for k, v in out.items()}
    return out


def raise_if_not_finite(loss: Tensor, loop: LoopState, batch_idx: int, where: str | None = None) -> None:
    """Fail naming the step when ``loss`` is NaN or infinite (a device sync: called only where it is wanted)."""
    if where is None:
        if bool(torch.isfinite(loss).all()):
            return
        where = f"at global step {loop.global_step}"
    raise NonFiniteLossError(
        f"The training loss became {loss.detach().float().flatten()[0].item()} {where} (epoch {loop.epoch}, "
        f"batch {batch_idx}). Lower the learning rate, clip gradients (Trainer(gradient_clip_val=1.0)) or check "
        "the data; Trainer(detect_anomaly=True) stops at the exact step and names the operation. To skip such "
        "batches instead, return None from training_step when `not torch.isfinite(loss)`."
    )


class FiniteLossCheck:
    """A check that the training loss is finite, run every ``every`` optimizer steps and at an epoch's end.

    Checking costs a device sync, so by default it runs only every ``log_every_n_steps`` steps (50 when
    logging is off) and at the epoch's last batch: a loss gone NaN/inf stays so (the weights are then
    NaN), so a late check still catches it, naming the window it happened in. With
    ``detect_anomaly=True`` the automatic step checks each loss before its backward instead (see
    ``raise_if_not_finite``) and names the exact step. 16-mixed is not checked (``for_run`` gives None):
    its gradient scaler skips non-finite steps, which is what choosing it asks for.

    Example::

        check = FiniteLossCheck.for_run(trainer, loop)
        if check is not None and check.due(stepped, is_last):
            check(outputs, batch_idx)
    """

    def __init__(self, loop: LoopState, every: int) -> None:
        self.loop, self.every = loop, every
        self.last_ok = loop.global_step

    @classmethod
    def for_run(cls, trainer: Any, loop: LoopState) -> FiniteLossCheck | None:
        if getattr(trainer.strategy.precision, "scaler", None) is not None:
            return None
        return cls(loop, 1 if trainer.detect_anomaly else (trainer.log_every_n_steps or 50))

    def due(self, stepped: bool, is_last: bool) -> bool:
        return stepped and (is_last or logging_due(self.loop.batches_stepped, self.every))

    def __call__(self, outputs: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        loop = self.loop
        if bool(torch.isfinite(loss).all()):
            self.last_ok = loop.global_step
            return
        raise_if_not_finite(loss, loop, batch_idx, f"between global steps {self.last_ok} and {loop.global_step} "
                                                   f"(checked every {self.every} steps)")
