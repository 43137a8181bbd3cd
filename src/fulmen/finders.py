"""The searches behind the Tuner and the finder callbacks: a learning-rate range test and the largest batch
size that fits, both run inside ``trainer.fit`` (see :mod:`fulmen.tuner` for how to call them).

Both run short trainings on the real Trainer, then put the module, its optimizers and the Trainer back
as they were, and write what they found into the module (its ``lr``/``learning_rate`` or
``batch_size`` attribute, or the same name in ``hparams``).
"""

from __future__ import annotations

import copy
import gc
import math
from typing import Any, Callable

import torch

from fulmen._utils import collect_rng_states, rank_zero_info, rank_zero_warn, restore_rng_states
from fulmen.errors import FulmenError, MisconfigurationException, missing_extra


# ==================================================================================================
# attributes the tuners read and write: on the module, its hparams, the datamodule or its hparams
# ==================================================================================================
def _holders(trainer: Any, module: Any, name: str) -> list[Any]:
    """Every object holding ``name``: the module, ``module.hparams``, the datamodule, ``datamodule.hparams``."""
    out = []
    for obj in (module, getattr(trainer, "datamodule", None)):
        if obj is None:
            continue
        if name in getattr(obj, "__dict__", {}) or (hasattr(type(obj), name) and not callable(getattr(type(obj), name))):
            out.append(obj)
        hparams = getattr(obj, "hparams", None)
        if hparams is not None and name in hparams:
            out.append(hparams)
    return out


def _set_attr(holders: list[Any], name: str, value: Any) -> None:
    for h in holders:
        if isinstance(h, dict):
            h[name] = value
        else:
            setattr(h, name, value)


def _is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` reports running out of (device or host) memory."""
    # torch.cuda.OutOfMemoryError is torch.OutOfMemoryError, any device's, since torch 2.5
    return isinstance(exc, torch.cuda.OutOfMemoryError) or isinstance(exc, RuntimeError) and any(
        s in str(exc) for s in ("out of memory", "CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_ALLOC_FAILED",
                                "DefaultCPUAllocator: can't allocate memory"))


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ==================================================================================================
# running a few training steps inside a fit, and putting everything back afterwards
# ==================================================================================================
class _Snapshot:
    """What a search inside ``fit`` changes, saved so it can be restored exactly afterwards."""

    _TRAINER_ATTRS = ("callbacks", "_hooks", "_monitoring_epoch_end", "_loggers", "max_steps", "max_epochs",
                      "min_epochs", "min_steps", "max_time", "_enable_validation", "lr_scheduler_configs",
                      "train_dataloader", "_train_iterable", "num_training_batches", "_val_check_batch", "_loop",
                      "is_last_batch")

    def __init__(self, trainer: Any, module: Any) -> None:
        self.trainer, self.module = trainer, module
        self.attrs = {a: getattr(trainer, a) for a in self._TRAINER_ATTRS if hasattr(trainer, a)}
        self.weights = copy.deepcopy(module.state_dict())
        self.optimizers = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
        self.schedulers = [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]
        self.precision = copy.deepcopy(trainer.strategy.precision.state_dict())
        self.rng = collect_rng_states()
        self.stage, self.training = trainer.state.stage, module.training

    def restore(self) -> None:
        trainer, module = self.trainer, self.module
        for a, v in self.attrs.items():
            setattr(trainer, a, v)
        module.load_state_dict(self.weights)
        module.zero_grad(set_to_none=True)
        for opt, state in zip(trainer.optimizers, self.optimizers):
            opt.load_state_dict(state)
        for cfg, state in zip(trainer.lr_scheduler_configs, self.schedulers):
            cfg.scheduler.load_state_dict(state)
        if self.precision:
            trainer.strategy.precision.load_state_dict(self.precision)
        restore_rng_states(self.rng)
        trainer._metrics.reset_all()
        trainer.state.stage = self.stage
        module.train(self.training)


def _train_steps(trainer: Any, module: Any, num_steps: int, recorder: Any, max_epochs: int | None = None) -> None:
    """Run up to ``num_steps`` optimizer steps of real training (precision, accumulation, clipping) with
    only ``recorder`` as callback, no loggers and no validation, in at most ``max_epochs`` epochs (None or
    -1: as many as the steps need). The caller restores the state."""
    from fulmen.trainer import loops
    from fulmen.trainer.context import RunContext
    from fulmen.trainer.data import setup_train_data
    from fulmen.trainer.state import LoopState, RunningStage

    trainer.callbacks = [recorder] if recorder is not None else []
    trainer._collect_hooks()
    trainer._loggers = []
    trainer.max_steps, trainer.max_epochs, trainer.min_epochs, trainer.min_steps = num_steps, -1, None, None
    trainer.max_time = None
    trainer._enable_validation = False
    trainer._loop = loop = LoopState()
    setup_train_data(trainer)
    trainer.state.stage = RunningStage.TRAINING
    module.train()
    ctx = RunContext.of(trainer)  # with the hooks, loop state and flags set above
    while loop.global_step < num_steps and not loop.should_stop:
        if max_epochs not in (None, -1) and loop.epoch >= max_epochs:
            break
        seen = loop.total_batches
        loops.train_epoch(ctx)
        loop.epoch, loop.batches_in_epoch, loop.epoch_loop_done = loop.epoch + 1, 0, False
        if loop.total_batches == seen:  # an empty epoch: nothing more will come
            break


# ==================================================================================================
# learning-rate finder
# ==================================================================================================
class _LRFinder:
    """The result of ``Tuner.lr_find``: ``results`` ({"lr": [...], "loss": [...]}), ``suggestion()``, ``plot()``.

    Example::

        finder = Tuner(trainer).lr_find(model)
        finder.results["lr"][:3], finder.suggestion()
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, lr_min, lr_max, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate of sweep step ``step`` (0-based): from ``lr_min`` to ``lr_max``.

        Lightning's grid, so that a seeded sweep tries the same rates and suggests the same one: step 0 uses
        ``lr_min``, step k >= 1 sits at fraction (k + 1) / num_training of the way (the last step at ``lr_max``).
        """
        r = 0.0 if step == 0 else min((step + 1) / max(self.num_training, 1), 1.0)
        if self.mode == "linear":
            return self.lr_min + r * (self.lr_max - self.lr_min)
        return self.lr_min * (self.lr_max / self.lr_min) ** r

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate where the (smoothed) loss falls fastest: the steepest negative slope of the loss along
        the sweep (against log lr for the exponential sweep), ignoring the first ``skip_begin`` and last
        ``skip_end`` points. None when too few points remain."""
        lrs = torch.tensor(self.results["lr"], dtype=torch.float64)
        losses = torch.tensor(self.results["loss"], dtype=torch.float64)
        idx = torch.arange(len(losses))[skip_begin:len(losses) - skip_end if skip_end else None]
        idx = idx[torch.isfinite(losses[idx])]
        if len(idx) < 2:
            rank_zero_warn(
                f"lr_find recorded {len(self.results['loss'])} point(s), too few to suggest a learning rate after "
                f"skipping {skip_begin} at the start and {skip_end} at the end. Raise num_training or lower skip_begin."
            )
            self._optimal_idx = None
            return None
        # the slope against the learning rate itself, as Lightning computes it, so both suggest the same rate
        slope = torch.gradient(losses[idx], spacing=[lrs[idx]])[0]
        self._optimal_idx = int(idx[int(torch.argmin(slope))])
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """Loss against learning rate (log axis for the exponential sweep), the suggestion as a red dot.

        Returns the matplotlib Figure. Example::

            finder.plot(suggest=True).savefig("lr_find.png")
        """
        try:
            import matplotlib

            if not show:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise missing_extra("matplotlib", "plot", "LR finder plots") from None
        fig, ax = plt.subplots() if ax is None else (ax.figure, ax)
        lrs, losses = self.results["lr"], self.results["loss"]
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest and (self._optimal_idx is not None or self.suggestion() is not None):
            ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


class _LRRecorder:
    """The callback active during the sweep: sets each step's rate, records the smoothed loss, stops on divergence."""

    def __init__(self, finder: _LRFinder, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        from fulmen.callbacks.callback import Callback

        self.finder, self.threshold, self.beta = finder, early_stop_threshold, beta
        self.avg, self.best, self.window = 0.0, math.inf, []
        self.diverged_at: int | None = None  # the number of points when the loss diverged (the sweep stopped)
        recorder = self

        class Hooks(Callback):  # built here so that importing the tuner stays light
            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
                lr = finder.lr_at(trainer.global_step)
                for opt in trainer.optimizers:
                    for g in opt.param_groups:
                        g["lr"] = lr

            def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
                recorder.on_batch_end(trainer, outputs, batch_idx)

        self.callback = Hooks()

    def on_batch_end(self, trainer: Any, outputs: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.window.append(float(loss))
        # one point per optimizer step: the loop's answer of whether this batch ended its accumulation window
        if not trainer._ends_window or not self.window:
            return
        n = len(self.finder.results["loss"])
        value = sum(self.window) / len(self.window)
        self.window = []
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        # the bias correction counts optimizer steps taken including this one, plus one, as Lightning's does
        # (its first points read about half the loss): the same curve, hence the same early stop and suggestion
        smoothed = self.avg / (1 - self.beta ** (n + 2))
        self.finder.results["lr"].append(trainer.optimizers[0].param_groups[0]["lr"])
        self.finder.results["loss"].append(smoothed)
        diverged = self.threshold is not None and n > 0 and smoothed > self.threshold * self.best
        if diverged or not math.isfinite(smoothed):
            trainer.should_stop = True
            self.diverged_at = n + 1
        self.best = min(self.best, smoothed)


def _lr_attr(trainer: Any, module: Any, attr_name: str) -> tuple[str, list[Any]]:
    names = [attr_name] if attr_name else ["lr", "learning_rate"]
    for name in names:
        holders = _holders(trainer, module, name)
        if holders:
            return name, holders
    raise MisconfigurationException(
        f"lr_find(update_attr=True) writes the suggestion into {' or '.join(repr(n) for n in names)}, and neither "
        f"{type(module).__name__}, its hparams nor the datamodule has it. Add `self.lr = ...` (and use it in "
        "configure_optimizers), pass attr_name='your_attribute', or pass update_attr=False."
    )


def lr_find_in_fit(trainer: Any, module: Any, min_lr: float = 1e-8, max_lr: float = 1.0, num_training: int = 100,
                   mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                   attr_name: str = "") -> _LRFinder | None:
    """The sweep itself, run from inside ``trainer.fit`` once optimizers exist (what ``LearningRateFinder`` calls).

    Afterwards the module, optimizers, schedulers and Trainer are as before the sweep, except that
    (with ``update_attr``) the module's lr attribute holds the suggestion and the optimizers use it.
    """
    if mode not in ("exponential", "linear"):
        raise MisconfigurationException(f"lr_find mode={mode!r} is not known; use 'exponential' or 'linear'.")
    if not 0 < min_lr < max_lr:
        raise MisconfigurationException(f"lr_find needs 0 < min_lr < max_lr; got min_lr={min_lr}, max_lr={max_lr}.")
    if len(trainer.optimizers) != 1:
        raise MisconfigurationException(
            f"lr_find sweeps one optimizer, and configure_optimizers returned {len(trainer.optimizers)}. Tune with a "
            "single optimizer, or run the sweep for each by hand."
        )
    name, holders = _lr_attr(trainer, module, attr_name) if update_attr else ("", [])
    finder = _LRFinder(mode, min_lr, max_lr, num_training)
    recorder = _LRRecorder(finder, early_stop_threshold)
    snapshot = _Snapshot(trainer, module)
    try:
        trainer.lr_scheduler_configs = []  # the sweep sets the rate itself
        # the Trainer's max_epochs bounds the sweep, as in Lightning: a short loader gives fewer points
        _train_steps(trainer, module, num_training, recorder.callback, max_epochs=trainer.max_epochs)
    finally:
        snapshot.restore()
    if recorder.diverged_at is not None:
        rank_zero_info(f"lr_find stopped after {recorder.diverged_at} steps: the loss diverged.")
    lr = finder.suggestion() if update_attr else None
    if lr is not None:
        _set_attr(holders, name, lr)
        for opt in trainer.optimizers:  # this fit goes on with the optimizer built before the sweep
            for g in opt.param_groups:
                g["lr"] = lr
                if "initial_lr" in g:
                    g["initial_lr"] = lr
        for cfg in trainer.lr_scheduler_configs:
            if hasattr(cfg.scheduler, "base_lrs"):
                cfg.scheduler.base_lrs = [lr] * len(cfg.scheduler.base_lrs)
        rank_zero_info(f"lr_find set the learning rate to its suggestion, {lr} (`{name}`).")
    return finder


# ==================================================================================================
# batch-size scaling
# ==================================================================================================
def _check_search_args(mode: str, init_val: int, margin: float, max_val: int) -> None:
    """Fail early, naming the argument, on what the batch-size search cannot use."""
    if mode not in ("power", "binsearch"):
        raise MisconfigurationException(f"scale_batch_size mode={mode!r} is not known; use 'power' or 'binsearch'.")
    if not isinstance(init_val, int) or init_val < 1:
        raise MisconfigurationException(f"scale_batch_size init_val={init_val!r}: pass a batch size >= 1.")
    if not 0.0 <= margin < 1.0:
        raise MisconfigurationException(
            f"scale_batch_size margin={margin!r}: pass a fraction in [0, 1), e.g. 0.05 to keep 5% of headroom."
        )
    if not isinstance(max_val, int) or max_val < 1:
        raise MisconfigurationException(f"scale_batch_size max_val={max_val!r}: pass the largest batch size to try, >= 1.")


def _search(try_size: Callable[[int], bool], mode: str, init_val: int, max_trials: int,
            cap: Callable[[], int | None], margin: float = 0.05, max_val: int = 8192) -> int:
    """The largest batch size for which ``try_size`` succeeds: doubling from ``init_val`` until a trial
    fails ("power" keeps the last success), then bisecting between the last success and the first
    failure ("binsearch", which then keeps ``margin`` of headroom). Sizes above ``max_val`` are never
    tried. ``cap()`` (the dataset's length, known once a loader was built) bounds the growth: a larger
    batch would hold no more samples."""
    _check_search_args(mode, init_val, margin, max_val)
    size, good, bad = min(init_val, max_val), 0, None
    for _ in range(max_trials):
        if try_size(size):
            good = size
            if bad is None:  # still growing
                limit = cap()
                nxt = min(size * 2, max_val)
                nxt = nxt if limit is None else max(min(nxt, limit), size)
                if nxt == size:
                    break
            else:
                nxt = (good + bad) // 2
        else:
            bad = size
            nxt = (good + bad) // 2 if good else size // 2
            if nxt < 1:
                raise FulmenError(
                    "scale_batch_size: even a batch of 1 ran out of memory. Make the model smaller, use a lower "
                    "precision (e.g. precision='bf16-mixed'), or train on a device with more memory."
                )
        if good and bad is not None and (mode == "power" or bad - good <= 1):
            break
        size = nxt
    if not good:
        raise FulmenError(
            f"scale_batch_size found no batch size that fits within max_trials={max_trials} (last tried {size}). "
            "Raise max_trials or lower init_val."
        )
    if mode == "binsearch" and margin > 0:  # headroom for what the trials did not see (longer inputs, fragmentation)
        good = max(1, int(good * (1 - margin)))
    return good


def _batch_attr(trainer: Any, module: Any, name: str) -> list[Any]:
    holders = _holders(trainer, module, name)
    if not holders:
        raise MisconfigurationException(
            f"scale_batch_size changes the attribute {name!r}, which neither {type(module).__name__}, its hparams nor "
            "the datamodule has. Store the batch size there (e.g. `self.batch_size = 32`, used by *_dataloader()), "
            "or pass batch_arg_name='your_attribute'."
        )
    return holders


def _dataset_len(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def _trial(run: Callable[[], None]) -> bool:
    try:
        run()
        return True
    except BaseException as exc:  # noqa: BLE001 - only memory errors are swallowed
        if not _is_oom(exc):
            raise
        _free_memory()
        return False


def scale_batch_size_in_fit(trainer: Any, module: Any, mode: str = "power", steps_per_trial: int = 3,
                            init_val: int = 2, max_trials: int = 25, batch_arg_name: str = "batch_size",
                            margin: float = 0.05, max_val: int = 8192) -> int:
    """The search itself, run from inside ``trainer.fit`` (what ``BatchSizeFinder`` calls): each trial trains
    ``steps_per_trial`` steps with the candidate size; the state is restored after every trial."""
    if trainer._given_train_loaders is not None:
        raise MisconfigurationException(
            "scale_batch_size rebuilds the training loader with each candidate batch size, so it cannot use a "
            "loader passed to fit(). Define train_dataloader() on the module or a datamodule, reading the batch "
            "size from `self.batch_size` (or `self.hparams.batch_size`)."
        )
    holders = _batch_attr(trainer, module, batch_arg_name)
    snapshot = _Snapshot(trainer, module)

    def try_size(size: int) -> bool:
        _set_attr(holders, batch_arg_name, size)
        try:
            return _trial(lambda: _train_steps(trainer, module, steps_per_trial, None))
        finally:
            loader = trainer.train_dataloader  # built by this trial; its dataset bounds the search
            snapshot.restore()
            trainer.train_dataloader = loader

    try:
        found = _search(try_size, mode, init_val, max_trials, lambda: _dataset_len(trainer.train_dataloader),
                        margin, max_val)
    finally:
        snapshot.restore()
    _set_attr(holders, batch_arg_name, found)
    return found


def scale_batch_size_for_evaluation(trainer: Any, model: Any, method: str, dataloaders: Any, datamodule: Any,
                                    mode: str = "power", steps: int = 3, init_val: int = 2, max_trials: int = 25,
                                    name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> int:
    """The search for ``trainer.validate/test/predict``: each trial is a real run of ``method`` over ``steps``
    batches, without callbacks or loggers; the weights are restored afterwards. Loaders passed in are used as
    they are (their batch size cannot change; the attribute still gets the size found, as in Lightning)."""
    if datamodule is not None:
        trainer.datamodule, datamodule.trainer = datamodule, trainer
    holders = _batch_attr(trainer, model, name)
    stage = {"validate": "val", "test": "test", "predict": "predict"}[method]
    limit, loader_attr = f"limit_{stage}_batches", f"{stage}_dataloaders"  # e.g. limit_val_batches, val_dataloaders
    saved = {a: getattr(trainer, a) for a in (limit, "callbacks", "_loggers")}
    weights = copy.deepcopy(model.state_dict())
    kwargs = {"verbose": False} if method != "predict" else {"return_predictions": False}

    def try_size(size: int) -> bool:
        _set_attr(holders, name, size)
        setattr(trainer, limit, steps)
        trainer.callbacks, trainer._loggers = [], []
        try:
            return _trial(lambda: getattr(trainer, method)(model, dataloaders, datamodule=datamodule, **kwargs))
        finally:
            for a, v in saved.items():
                setattr(trainer, a, v)

    def cap() -> int | None:
        loaders = getattr(trainer, loader_attr)
        first = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        return _dataset_len(first)  # None without a loader

    try:
        found = _search(try_size, mode, init_val, max_trials, cap, margin, max_val)
    finally:
        model.load_state_dict(weights)
    _set_attr(holders, name, found)
    return found
