"""Running a LightningModule step as the forward of the module (or engine) that wraps it.

FSDP and DeepSpeed do their work (gathering parameters, preparing the backward) in hooks around the
wrapped module's ``forward``. A step such as ``training_step`` is not ``forward``, so it is run in its
place for one call: the wrapper's hooks then surround the whole step, and inside the step ``self(x)``
is the real forward again.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def call_as_forward(caller: Callable[..., Any], module: Any, step: Callable[..., Any], *args: Any,
                    nested_without_hooks: bool = False, **kwargs: Any) -> Any:
    """``caller(*args, **kwargs)`` with ``module.forward`` replaced by ``step`` until the step starts.

    ``nested_without_hooks``: inside the step, ``self(x)`` runs the module's forward without its hooks
    again (DeepSpeed ZeRO-3 would otherwise partition the module's parameters when that inner call ends,
    while the rest of the step still uses them).

    Example::

        loss = call_as_forward(engine, lightning_module, lightning_module.training_step, batch, 0)
    """
    state = module.__dict__
    had_own = "forward" in state
    own = state.get("forward")

    def restore() -> None:
        if had_own:
            state["forward"] = own
        else:
            state.pop("forward", None)

    def forward(*a: Any, **k: Any) -> Any:
        restore()  # nested self(x) calls inside the step reach the real forward
        if not nested_without_hooks:
            return step(*a, **k)
        state["_call_impl"] = lambda *a2, **k2: module.forward(*a2, **k2)
        try:
            return step(*a, **k)
        finally:
            state.pop("_call_impl", None)

    state["forward"] = forward
    try:
        return caller(*args, **kwargs)
    finally:
        if state.get("forward") is forward:
            restore()


def releasing_after_eval(run: Callable[..., Any], release: Callable[[], Any]) -> Callable[..., Any]:
    """``run``, then ``release()`` when it ran with gradients off: the wrapper keeps parameters it gathered for the
    backward of a training step, and with no backward to come they would stay whole until training next
    touches them."""

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        finally:
            if not torch.is_grad_enabled():
                release()

    return evaluate
