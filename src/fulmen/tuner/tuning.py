"""The Tuner: a learning-rate range test (``lr_find``) and the largest batch size that fits
(``scale_batch_size``).

Both run short trainings on the real Trainer, then put the module, its optimizers and the Trainer back
as they were, and write what they found into the module (its ``lr``/``learning_rate`` or
``batch_size`` attribute, or the same name in ``hparams``).

Example::

    tuner = fulmen.tuner.Tuner(trainer)
    finder = tuner.lr_find(model, train_loader)        # model.lr now holds the suggestion
    fig = finder.plot(suggest=True)
    tuner.scale_batch_size(model, mode="binsearch")   # model.batch_size: the largest that fits
    trainer.fit(model)
"""

from __future__ import annotations

import copy
from typing import Any

from fulmen._utils import rank_zero_warn
from fulmen.errors import MisconfigurationException
from fulmen.finders import _LRFinder, _check_search_args, scale_batch_size_for_evaluation

__all__ = ["Tuner"]


class Tuner:
    """Find a learning rate and the largest batch size before training.

    Example::

        trainer = fulmen.Trainer(max_epochs=10)
        tuner = fulmen.tuner.Tuner(trainer)
        tuner.lr_find(model)                      # sets model.lr (or model.learning_rate)
        tuner.scale_batch_size(model)             # sets model.batch_size
        trainer.fit(model)
    """

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def _check_no_callback(self, kind: str) -> None:
        from fulmen import callbacks

        cls = getattr(callbacks, kind)
        if any(isinstance(cb, cls) for cb in self._trainer.callbacks):
            raise MisconfigurationException(
                f"The Trainer already has a {kind} callback, which runs the same search at fit start. Remove it from "
                "`callbacks`, or drop the Tuner call."
            )

    def _fit_with(self, callback: Any, model: Any, train_dataloaders: Any, val_dataloaders: Any, datamodule: Any) -> None:
        """One fit with ``callback`` first among the Trainer's callbacks, ending when its search ends."""
        callback._early_exit = True
        trainer = self._trainer
        saved = trainer.callbacks
        trainer.callbacks = [callback] + list(saved)
        try:
            trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
        finally:
            trainer.callbacks = saved

    def lr_find(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, dataloaders: Any = None,
                datamodule: Any = None, method: str = "fit", min_lr: float = 1e-8, max_lr: float = 1.0,
                num_training: int = 100, mode: str = "exponential", early_stop_threshold: float | None = 4.0,
                update_attr: bool = True, attr_name: str = "") -> _LRFinder | None:
        """Train ``num_training`` steps with the rate growing from ``min_lr`` to ``max_lr`` (exponentially or
        linearly), record the loss, and suggest the rate where it falls fastest.

        The module and Trainer are restored afterwards; with ``update_attr`` the suggestion is written into
        ``model.lr``/``model.learning_rate`` (or ``attr_name``). Returns the finder (None under fast_dev_run).

        Example::

            finder = Tuner(trainer).lr_find(model, train_loader, num_training=50)
            print(finder.suggestion())
        """
        if method != "fit":
            raise MisconfigurationException(f"lr_find(method={method!r}): the learning-rate sweep trains, so use method='fit'.")
        self._check_no_callback("LearningRateFinder")
        if self._trainer.fast_dev_run:
            rank_zero_warn("lr_find is skipped with fast_dev_run; the learning rate stays as it is.")
            return None
        from fulmen.callbacks.lr_finder import LearningRateFinder

        cb = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                early_stop_threshold=early_stop_threshold, update_attr=update_attr, attr_name=attr_name)
        self._fit_with(cb, model, train_dataloaders, val_dataloaders, datamodule)
        return cb.optimal_lr

    def scale_batch_size(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                         dataloaders: Any = None, datamodule: Any = None, method: str = "fit", mode: str = "power",
                         steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                         batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> int | None:
        """Find the largest batch size that runs without running out of memory, and set it on the model.

        "power" doubles the size until a trial fails; "binsearch" then bisects between the last success and
        the failure, and keeps ``margin`` (a fraction) of headroom below it. No size above ``max_val`` is
        tried. Each trial runs ``steps_per_trial`` steps of ``method`` ("fit", "validate", "test" or
        "predict"); weights, optimizers and the Trainer are restored afterwards. Returns the size found.

        Example::

            new_size = Tuner(trainer).scale_batch_size(model, mode="binsearch", init_val=16)
        """
        if method not in ("fit", "validate", "test", "predict"):
            raise MisconfigurationException(
                f"scale_batch_size(method={method!r}) is not known; use 'fit', 'validate', 'test' or 'predict'."
            )
        self._check_no_callback("BatchSizeFinder")
        _check_search_args(mode, init_val, margin, max_val)
        if self._trainer.fast_dev_run:
            rank_zero_warn("scale_batch_size is skipped with fast_dev_run; the batch size stays as it is.")
            return None
        if method == "fit":
            from fulmen.callbacks.batch_size_finder import BatchSizeFinder

            cb = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                                 batch_arg_name=batch_arg_name, margin=margin, max_val=max_val)
            self._fit_with(cb, model, train_dataloaders, val_dataloaders, datamodule)
            return cb.optimal_batch_size
        if dataloaders is not None:
            raise MisconfigurationException(
                f"scale_batch_size(method={method!r}) rebuilds the loader with each candidate size, so it cannot use "
                f"dataloaders passed in. Define {'val' if method == 'validate' else method}_dataloader() on the module "
                "or a datamodule, reading `self.batch_size`."
            )
        return scale_batch_size_for_evaluation(self._trainer, model, method, None, datamodule, mode, steps_per_trial,
                                               init_val, max_trials, batch_arg_name, margin, max_val)
