"""``BatchSizeFinder``: the largest batch size that fits, found at the start of ``fit``."""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.errors import _TunerExitException


class BatchSizeFinder(Callback):
    """Find the largest batch size that trains without running out of memory, then fit with it.

    Each trial sets the module's (or datamodule's, or their hparams') ``batch_arg_name`` attribute,
    rebuilds the training loader from it and trains ``steps_per_trial`` steps; out-of-memory errors mark
    a size as too large. "power" doubles from ``init_val`` and keeps the last size that fit;
    "binsearch" then bisects up to the first failure and keeps ``margin`` (a fraction) of headroom below
    it; no size above ``max_val`` is tried. Weights, optimizers and the Trainer are restored
    after every trial; ``optimal_batch_size`` holds the result.

    It searches at the start of ``trainer.fit``, and before ``trainer.validate/test/predict`` (trials of that
    stage), as in Lightning.

    Args:
        mode: "power" (keep doubling) or "binsearch" (double, then bisect).
        steps_per_trial: Training steps run at each size.
        init_val: First size tried.
        max_trials: Most sizes tried.
        batch_arg_name: Attribute that holds the batch size, on the module, the datamodule or their hparams.
        margin: With "binsearch": fraction kept free below the first size that failed.
        max_val: Largest size tried.

    Example::

        trainer = fulmen.Trainer(callbacks=[BatchSizeFinder(mode="binsearch")])
        trainer.fit(model)       # model.batch_size is now the largest that fits
    """

    SUPPORTED_MODES = ("power", "binsearch")  # the values ``mode`` accepts

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> None:
        from fulmen.finders import _check_search_args

        _check_search_args(mode, init_val, margin, max_val)
        self._mode, self._steps_per_trial, self._init_val = mode, steps_per_trial, init_val
        self._max_trials, self._batch_arg_name = max_trials, batch_arg_name
        self._margin, self._max_val = margin, max_val
        self._early_exit = False  # set by the Tuner: end the fit once the search is done
        self.optimal_batch_size: int | None = init_val

    def scale_batch_size_for(self, trainer: Any, pl_module: Any, stage: str, dataloaders: Any = None,
                             datamodule: Any = None) -> None:
        """Run the search for ``trainer.validate/test/predict`` (the Trainer calls this before the stage runs):
        each trial runs ``steps_per_trial`` batches of that stage."""
        from fulmen.finders import scale_batch_size_for_evaluation

        self.optimal_batch_size = scale_batch_size_for_evaluation(
            trainer, pl_module, stage, dataloaders, datamodule, mode=self._mode, steps=self._steps_per_trial,
            init_val=self._init_val, max_trials=self._max_trials, name=self._batch_arg_name, margin=self._margin,
            max_val=self._max_val)

    def scale_batch_size(self, trainer: Any, pl_module: Any) -> None:
        """Run the search now (``on_fit_start`` calls this)."""
        from fulmen.finders import scale_batch_size_in_fit

        self.optimal_batch_size = scale_batch_size_in_fit(
            trainer, pl_module, mode=self._mode, steps_per_trial=self._steps_per_trial, init_val=self._init_val,
            max_trials=self._max_trials, batch_arg_name=self._batch_arg_name, margin=self._margin,
            max_val=self._max_val)
        if self._early_exit:
            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)
