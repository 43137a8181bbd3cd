"""Numeric precision of a run: autocast, gradient scaling, or converting the module's dtype.

``Trainer(precision=...)`` picks one of these; the strategy holds it and the loop never asks which.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen._utils import apply_to_collection
from fulmen.errors import MisconfigurationException

_ALIASES = {
    "32": "32-true", 32: "32-true", "32-true": "32-true",
    "64": "64-true", 64: "64-true", "64-true": "64-true",
    "16": "16-mixed", 16: "16-mixed", "16-mixed": "16-mixed",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16-true": "16-true", "bf16-true": "bf16-true",
}


def normalize_precision(value: Any) -> str:
    """Lightning's spellings (32, "16", "bf16", ...) to one canonical name, e.g. ``"16-mixed"``."""
    if value is None:
        return "32-true"
    key = value if isinstance(value, int) else str(value)
    if key not in _ALIASES:
        raise MisconfigurationException(
            f"precision={value!r} is not supported; use one of '32-true', '64-true', '16-mixed', 'bf16-mixed', "
            "'16-true', 'bf16-true' (or 32, 64, 16, 'bf16')."
        )
    return _ALIASES[key]


class Precision:
    """Full float32 ("32-true"): the base every precision builds on; does nothing to the numbers.

    Subclass and pass it in ``Trainer(plugins=[...])`` for a custom scheme.
    """

    name = "32-true"
    #: when None the loop calls steps directly, skipping a context manager per step
    autocast: Callable[[], ContextManager] | None = None

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def convert_input(self, data: Any) -> Any:
        return data

    def convert_output(self, data: Any) -> Any:
        """What a Fabric module's forward returns is given back in this form (the default dtype, float32, for
        the precisions that compute in another one)."""
        return data

    def forward_context(self) -> ContextManager:
        return nullcontext() if self.autocast is None else self.autocast()

    def tensor_init_context(self) -> ContextManager:
        """What tensors created inside get (``Trainer.init_module`` uses it): the default dtype here.

        Example::

            with TruePrecision("64-true").tensor_init_context():
                layer = torch.nn.Linear(2, 2)  # float64 weights
        """
        return nullcontext()

    def backward(self, loss: Tensor, module: Any, *args: Any, **kwargs: Any) -> None:
        if module is not None and hasattr(module, "backward"):
            module.backward(loss, *args, **kwargs)
        else:
            loss.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None,
                       after_closure: Callable[[], None] | None, **kwargs: Any) -> Any:
        """Step ``optimizer``; ``after_closure`` runs hooks and clipping once gradients exist."""
        if closure is None:
            if after_closure is not None:
                after_closure()
            return optimizer.step(**kwargs)
        if after_closure is None:
            return optimizer.step(closure=closure, **kwargs)

        def wrapped() -> Any:
            out = closure()
            after_closure()
            return out

        return optimizer.step(closure=wrapped, **kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Make gradients their true size before clipping or inspection (a no-op unless scaled)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MixedPrecision(Precision):
    """Autocast to float16 ("16-mixed", with gradient scaling) or bfloat16 ("bf16-mixed").

    Steps whose gradients overflow are skipped by the scaler, as ``torch.amp.GradScaler`` does.
    """

    def __init__(self, name: str, device_type: str, scaler: Any = None) -> None:
        self.name = name
        self.device_type = device_type
        self.dtype = torch.float16 if name == "16-mixed" else torch.bfloat16
        if name == "16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(device_type)
        self.scaler = scaler if name == "16-mixed" else None
        self._unscaled: set[int] = set()  # optimizers whose gradients were unscaled since the last step
        # a partial, not a lambda: strategy="ddp_spawn" pickles the precision plugin with the trainer
        self.autocast = functools.partial(torch.autocast, self.device_type, dtype=self.dtype)

    def convert_output(self, data: Any) -> Any:
        return _to_default_dtype(data)  # autocast's half-precision results, as Lightning Fabric returns them

    def backward(self, loss: Tensor, module: Any, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        super().backward(loss, module, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None,
                       after_closure: Callable[[], None] | None, **kwargs: Any) -> Any:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure, after_closure, **kwargs)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise MisconfigurationException(
                "LBFGS cannot be used with precision='16-mixed': its closure re-evaluates the loss, which gradient "
                "scaling does not support. Use precision='bf16-mixed' or '32-true'."
            )
        out = closure() if closure is not None else None
        # no loss from the closure (training_step returned None): no backward ran, so neither unscale nor step
        skipped = closure is not None and out is None
        if not skipped:
            self.unscale_gradients(optimizer)  # hooks and clipping after the closure see true-size gradients
        if after_closure is not None:
            after_closure()
        if not skipped:
            self.scaler.step(optimizer, **kwargs)  # the scaler itself skips steps whose gradients hold inf/NaN
            self.scaler.update()
            self._unscaled.clear()
        return out

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        # once per step: the scaler refuses a second unscale_ before update()
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's state (its scale and growth tracker), as Lightning stores it."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class TruePrecision(Precision):
    """Parameters and floating inputs in one dtype: "64-true", "16-true" or "bf16-true"."""

    _DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = self._DTYPES[name]

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.dtype)

    def convert_input(self, data: Any) -> Any:
        return apply_to_collection(data, Tensor, lambda t: t.to(self.dtype) if t.is_floating_point() else t)

    def convert_output(self, data: Any) -> Any:
        return _to_default_dtype(data)

    def forward_context(self) -> ContextManager:
        return _default_dtype(self.dtype)

    tensor_init_context = forward_context


class DoublePrecision(TruePrecision):
    """Float64 parameters and inputs (``precision="64-true"``), under Lightning's plugin name.

    Example::

        trainer = fulmen.Trainer(plugins=[DoublePrecision()])
    """

    def __init__(self) -> None:
        super().__init__("64-true")


class HalfPrecision(TruePrecision):
    """Half-precision parameters and inputs: ``"16-true"`` (float16) or ``"bf16-true"`` (bfloat16).

    Example::

        trainer = fulmen.Trainer(plugins=[HalfPrecision("bf16-true")])
    """

    def __init__(self, precision: str = "16-true") -> None:
        if precision not in ("16-true", "bf16-true"):
            raise MisconfigurationException(
                f"HalfPrecision(precision={precision!r}): pass '16-true' or 'bf16-true' "
                "(for mixed precision use MixedPrecision or Trainer(precision='16-mixed'))."
            )
        super().__init__(precision)


def _to_default_dtype(data: Any) -> Any:
    """Floating tensors in ``data`` as the default dtype (float32 unless the program changed it), as Lightning
    Fabric hands a low- (or double-) precision module's outputs back to the code around it."""
    dtype = torch.get_default_dtype()
    return apply_to_collection(data, Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t)


class _default_dtype:
    """Tensors created inside (e.g. ``torch.zeros`` in forward) get the run's dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: Any) -> None:
        torch.set_default_dtype(self.previous)


def make_precision(value: Any, device_type: str) -> Precision:
    """The Precision object for ``Trainer(precision=value)`` on ``device_type``."""
    if isinstance(value, Precision):
        return value
    name = normalize_precision(value)
    if name == "32-true":
        return Precision()
    if name in ("16-mixed", "bf16-mixed"):
        if device_type == "mps" and name == "bf16-mixed":
            raise MisconfigurationException("bf16-mixed is not supported on MPS; use precision='16-mixed'.")
        return MixedPrecision(name, device_type)
    return TruePrecision(name)
