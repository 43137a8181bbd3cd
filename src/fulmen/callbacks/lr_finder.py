"""``LearningRateFinder``: the learning-rate range test, run at the start of ``fit``."""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, _TunerExitException


class LearningRateFinder(Callback):
    """Sweep the learning rate at fit start, then train with the suggested one.

    Trains ``num_training_steps`` steps with the rate growing from ``min_lr`` to ``max_lr``, records the
    smoothed loss (stopping early once it exceeds ``early_stop_threshold`` times the best), restores the
    weights and optimizer, and, with ``update_attr``, writes the suggestion into the module's ``lr`` /
    ``learning_rate`` (or ``attr_name``) and into the optimizer this fit uses. ``optimal_lr`` holds the
    finder (``results``, ``suggestion()``, ``plot()``).

    Args:
        min_lr: Rate of the first step.
        max_lr: Rate of the last step.
        num_training_steps: How many steps the sweep takes.
        mode: "exponential" or "linear" growth of the rate.
        early_stop_threshold: Stop once the loss exceeds this multiple of the best loss. None: never stop early.
        update_attr: Write the suggested rate into the module and its optimizer.
        attr_name: The module attribute to write it to. Empty: ``lr`` or ``learning_rate``, whichever exists.

    Example::

        trainer = fulmen.Trainer(callbacks=[LearningRateFinder(num_training_steps=50)])
        trainer.fit(model)
        trainer.callbacks[0].optimal_lr.suggestion()
    """

    SUPPORTED_MODES = ("linear", "exponential")  # the values ``mode`` accepts

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        if mode not in self.SUPPORTED_MODES:
            raise MisconfigurationException(f"LearningRateFinder mode={mode!r} is not known; use 'exponential' or 'linear'.")
        self._min_lr, self._max_lr, self._num_training_steps = min_lr, max_lr, num_training_steps
        self._mode, self._early_stop_threshold = mode, early_stop_threshold
        self._update_attr, self._attr_name = update_attr, attr_name
        self._early_exit = False  # set by the Tuner: end the fit once the sweep is done
        self.optimal_lr: Any = None

    def lr_find(self, trainer: Any, pl_module: Any) -> None:
        """Run the sweep now (``on_fit_start`` calls this); override to run it at another time."""
        from fulmen.finders import lr_find_in_fit

        self.optimal_lr = lr_find_in_fit(
            trainer, pl_module, min_lr=self._min_lr, max_lr=self._max_lr, num_training=self._num_training_steps,
            mode=self._mode, early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
            attr_name=self._attr_name)
        if self._early_exit:
            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)
