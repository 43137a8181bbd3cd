"""``LambdaCallback``: a callback made of plain functions, one per hook."""

from __future__ import annotations

from typing import Any, Callable

from fulmen.callbacks.callback import CALLBACK_HOOKS, Callback
from fulmen.errors import MisconfigurationException


class LambdaCallback(Callback):
    """Pass functions by hook name; each is called with the hook's arguments (``trainer, pl_module, ...``).

    Example::

        seen = []
        cb = LambdaCallback(on_train_epoch_end=lambda trainer, module: seen.append(trainer.current_epoch))
        fulmen.Trainer(callbacks=[cb]).fit(model, loader)
    """

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        unknown = sorted(set(hooks) - set(CALLBACK_HOOKS))
        if unknown:
            raise MisconfigurationException(
                f"LambdaCallback got {unknown}, which are not callback hooks. Hooks are: {sorted(CALLBACK_HOOKS)}."
            )
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)  # an instance attribute: the Trainer sees the hook as overridden
