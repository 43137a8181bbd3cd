"""The loops, in plain sight: set-up, fit (training with validation), evaluation and prediction.

Every hook call is here, in the order Lightning 2.x makes them. Which hooks are overridden is
decided once per run (``Trainer._collect_hooks``); in the batch loop an empty hook list is skipped,
and no value is turned into a Python number, so the loop adds next to nothing to a step.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable

import torch
from torch import Tensor

from fulmen.errors import MisconfigurationException
from fulmen.precision import Precision
from fulmen.trainer import checkpointing, data as _data, logging as _logging
from fulmen.trainer.optimizers import LightningOptimizer, parse_optimizers
from fulmen.trainer.recovery import guard_training_step
from fulmen.trainer.state import LoopState, RunningStage, TrainerFn, accumulation_window
from fulmen._utils import collect_rng_states, is_overridden, rank_zero_info, rank_zero_warn, restore_rng_states


def _module_cls() -> type:
    from fulmen.module import LightningModule

    return LightningModule


def check_fit_configuration(model: Any) -> None:
    """Fail before anything runs when the module cannot be trained."""
    lm = _module_cls()
    if not is_overridden("training_step", model, lm):
        raise MisconfigurationException(
            # Lightning's first sentence (users and tests match on it), then fulmen's fix
            f"No `training_step()` method defined. {type(model).__name__} needs `training_step(self, batch, "
            "batch_idx)` for trainer.fit: define it and return the loss."
        )
    if not is_overridden("configure_optimizers", model, lm):
        raise MisconfigurationException(
            f"No `configure_optimizers()` method defined. {type(model).__name__} needs `configure_optimizers(self)` "
            "for trainer.fit: define it, e.g. `return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )


# ==================================================================================================
# set-up and tear-down
# ==================================================================================================
def run(trainer: Any, fn: TrainerFn, weights_only: bool | None) -> Any:
    """Everything one entry point does, from ``configure_callbacks`` to ``teardown``."""
    module = trainer.lightning_module
    stage = fn.value
    _merge_model_callbacks(trainer, module)
    _check_legacy(trainer, module)
    resume_from = None
    if fn == TrainerFn.FITTING:  # before any hook: resuming may pick the logger version to continue in
        from fulmen.trainer.resume import resolve_fit_path

        requested = trainer.ckpt_path
        resume_from = resolve_fit_path(trainer, requested)
        trainer.ckpt_path = resume_from[0] if resume_from else None
    trainer._collect_hooks()
    trainer._metrics.current = None
    trainer.strategy.setup_environment()
    if trainer.world_size > 1:  # every rank writes into (and checkpoints next to) rank zero's log folder
        for lg in trainer.loggers:
            if getattr(lg, "_version", 0) is None:
                lg._version = trainer.strategy.broadcast(lg.version if trainer.is_global_zero else None)
    dm = trainer.datamodule
    # once per machine (or once in all with prepare_data_per_node=False), the others wait for it
    per_node = getattr(dm if dm is not None else module, "prepare_data_per_node", True)
    if trainer.local_rank == 0 if per_node else trainer.is_global_zero:
        if dm is not None:
            dm.prepare_data()
        trainer._call_module("prepare_data")
    trainer.strategy.barrier("prepare_data")
    if dm is not None:
        dm.setup(stage)
    trainer._call_callbacks("setup", stage=stage)
    trainer._call_module("setup", stage)  # these skip a hook set to None, as Lightning does
    with trainer.strategy.model_sharded_context():
        trainer._call_module("configure_model")
    trainer.strategy.setup_module(module)
    if fn == TrainerFn.FITTING:
        _setup_optimizers(trainer, module)
    checkpoint = None
    if resume_from:
        checkpoint = checkpointing.restore_first_valid(trainer, resume_from, weights_only, announce=requested != resume_from[0])
    elif trainer.ckpt_path is not None:
        checkpoint = checkpointing.restore_checkpoint(trainer, trainer.ckpt_path, weights_only, fn == TrainerFn.FITTING)
    trainer._start_time = time.monotonic()
    if fn == TrainerFn.FITTING:
        result = fit(trainer, resumed=checkpoint is not None)
        trainer._flush_checkpoints()  # fit returns with every checkpoint on disk (or a failed write's error)
    elif fn == TrainerFn.PREDICTING:
        result = predict(trainer)
    else:
        _log_hyperparams(trainer)
        result = evaluate_entry(trainer, RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING)
    trainer.state.stage = None
    if dm is not None:
        dm.teardown(stage)
    trainer._call_callbacks("teardown", stage=stage)
    trainer._call_module("teardown", stage)
    for lg in trainer.loggers:
        lg.save()
        lg.finalize("success")
    trainer.strategy.teardown()
    return result


def _check_legacy(trainer: Any, module: Any) -> None:
    """Lightning 1.x hooks and signatures fail here, with the 2.x way, instead of never running."""
    from fulmen.callbacks.callback import Callback
    from fulmen.trainer import legacy

    legacy.check_module(module, _module_cls())
    for cb in trainer.callbacks:
        legacy.check_callback(cb, Callback)


def _merge_model_callbacks(trainer: Any, module: Any) -> None:
    """Callbacks from ``configure_callbacks`` replace the Trainer's of the same type; checkpoints go last."""
    from fulmen.callbacks.model_checkpoint import _reorder

    extra = module.configure_callbacks()
    if not extra:
        return
    extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
    types = {type(cb) for cb in extra}
    kept = [cb for cb in trainer.callbacks if type(cb) not in types]
    trainer.callbacks = _reorder(kept + extra)


def _setup_optimizers(trainer: Any, module: Any) -> None:
    if not module.automatic_optimization:
        for what, flag, value, default, instead in (
            ("accumulation", "accumulate_grad_batches", trainer.accumulate_grad_batches, 1,
             "step every N batches in training_step"),
            ("clipping", "gradient_clip_val", trainer.gradient_clip_val, None,
             "call self.clip_gradients(opt, ...) before opt.step()"),
        ):
            if value not in (default, 0):
                raise MisconfigurationException(  # Lightning's first sentence, then fulmen's fix
                    f"Automatic gradient {what} is not supported for manual optimization. Remove "
                    f"`Trainer({flag}={value!r})` or switch to automatic optimization: {type(module).__name__} sets "
                    f"automatic_optimization=False, so {instead}."
                )
    trainer._metrics.current = None
    optimizers, configs = parse_optimizers(trainer._call_module("configure_optimizers"))
    if len(optimizers) > 1 and module.automatic_optimization:
        raise MisconfigurationException(
            f"configure_optimizers returned {len(optimizers)} optimizers. Several optimizers need manual "
            "optimization: set `self.automatic_optimization = False` in __init__ and step them in training_step "
            "(`opt_g, opt_d = self.optimizers()`)."
        )
    trainer.optimizers = trainer.strategy.setup_optimizers(optimizers)
    trainer.lr_scheduler_configs = configs
    trainer._lightning_optimizers = [LightningOptimizer(o, trainer) for o in trainer.optimizers]


def _log_hyperparams(trainer: Any) -> None:
    if not trainer.loggers or not trainer.enable_autolog_hparams:
        return
    module, dm = trainer.lightning_module, trainer.datamodule
    params: dict[str, Any] = {}
    if getattr(module, "_log_hyperparams", False):
        params.update(module._hparams_to_save(initial=True))
    if dm is not None and getattr(dm, "_log_hyperparams", False):
        dm_params = dm._hparams_to_save(initial=True)
        # LightningCLI's "_class_path" differs by nature; it is not logged either, as in Lightning
        overlap = {k for k in dm_params if k in params and params[k] != dm_params[k] and k != "_class_path"}
        if overlap:
            raise MisconfigurationException(
                f"The module and the datamodule both save hyperparameter(s) {sorted(overlap)} with different values; "
                "rename one of them."
            )
        params.update(dm_params)
    params.pop("_class_path", None)
    if trainer.is_global_zero:
        for lg in trainer.loggers:
            lg.log_hyperparams(params)  # even when empty, as Lightning: the run's folder exists from the start
            if getattr(lg, "_log_graph", False) and hasattr(lg, "log_graph"):
                lg.log_graph(module)
            lg.save()


def _takes(fn: Callable, name: str, min_args: int | None = None) -> bool:
    """Whether ``fn`` accepts ``name`` positionally: by that name, through ``*args``, or (with
    ``min_args``) by having that many positional parameters, as Lightning reads hook signatures."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): pass everything
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (any(p.name == name for p in params) or any(p.kind == p.VAR_POSITIONAL for p in params)
            or (min_args is not None and len(positional) >= min_args))


def _step_fn(strategy: Any, module: Any, name: str) -> Callable:
    """The strategy's ``name`` step called as ``fn(batch, batch_idx, *dataloader_idx)``, even when the
    module's step takes no ``batch_idx`` (legal in Lightning: the argument is passed only when the
    signature has it). Decided once per run, so the step itself pays nothing."""
    fn = strategy.step_function(name)
    if _takes(getattr(module, name), "batch_idx", min_args=2):
        return fn
    return lambda batch, batch_idx, *dataloader_idx: fn(batch, *dataloader_idx)


def _check_dataloader_idx(module: Any, stage: RunningStage, multi: bool) -> None:
    """Lightning's rule for ``dataloader_idx`` in the evaluation/predict step and batch hooks: required
    with several loaders, and without a default a mistake with one."""
    prefix = stage.dataloader_prefix
    step = {"val": "validation_step", "test": "test_step", "predict": "predict_step"}[prefix]
    hook = {"val": "validation", "test": "test", "predict": "predict"}[prefix]
    for name in (step, f"on_{hook}_batch_start", f"on_{hook}_batch_end"):
        if name != step and not is_overridden(name, module, _module_cls()):
            continue
        fn = getattr(module, name)
        if multi and not _takes(fn, "dataloader_idx"):
            raise MisconfigurationException(
                f"There are several {prefix} dataloaders, but `{type(module).__name__}.{name}()` has no "
                "`dataloader_idx` argument. Add `dataloader_idx=0` to its signature."
            )
        if not multi:
            try:
                param = inspect.signature(fn).parameters.get("dataloader_idx")
            except (TypeError, ValueError):
                param = None
            if param is not None and param.default is inspect.Parameter.empty:
                raise MisconfigurationException(
                    f"There is a single {prefix} dataloader, but `{type(module).__name__}.{name}()` requires "
                    "`dataloader_idx`. Remove the argument or give it a default: `dataloader_idx=0`."
                )


def _module_hook(module: Any, name: str) -> Callable | None:
    """The module's hook when it overrides it, else None (so the loop can skip the call)."""
    return getattr(module, name) if is_overridden(name, module, _module_cls()) else None


# ==================================================================================================
# fit
# ==================================================================================================
def fit(trainer: Any, resumed: bool) -> None:
    # the trainer's loop state carries over: a second fit continues where the first stopped (and runs no
    # training at all when its limits are reached), as in Lightning; a checkpoint replaced it when resumed
    module = trainer.lightning_module
    loop: LoopState = trainer._loop
    trainer._metrics.current = trainer._metrics.train
    trainer._call_hooks("on_fit_start")
    lm = _module_cls()
    trainer._enable_validation = is_overridden("validation_step", module, lm) and trainer.limit_val_batches != 0
    trainer._val_loaders = None
    if trainer._enable_validation and trainer.num_sanity_val_steps != 0 and not resumed:
        # Lightning does not let the sanity check draw from the global generators (its val loader's
        # iterator does, for its base seed): a seeded run then shuffles its training data as plain PyTorch does
        rng = collect_rng_states()
        _sanity_check(trainer)
        restore_rng_states(rng)
    if trainer.train_dataloader is None:  # estimated_stepping_batches may have set it up already
        _data.setup_train_data(trainer)
    _log_hyperparams(trainer)
    trainer.state.stage = RunningStage.TRAINING
    trainer._metrics.current = trainer._metrics.train
    if loop.epoch_loop_done:  # the checkpoint was written at an epoch's end: continue with the next one
        loop.epoch += 1
        loop.batches_in_epoch = 0
        loop.epoch_loop_done = False
    done = _fit_done(trainer, loop)
    if not done:
        # no module.train() here: layers the user froze in eval mode stay so, as in Lightning
        trainer._call_hooks("on_train_start")
        if trainer._val_check_seconds is not None:  # a time-based val_check_interval counts from here
            trainer._last_val_time = time.monotonic()
        trainer._loop_first_epoch = True  # the first epoch this fit runs (a resumed one may start at any epoch)
        while not done:
            if trainer.reload_dataloaders_every_n_epochs and loop.epoch and loop.epoch % trainer.reload_dataloaders_every_n_epochs == 0 and loop.batches_in_epoch == 0:
                _data.setup_train_data(trainer)
                trainer._val_loaders = None
            with trainer.profiler.profile("run_training_epoch"):
                _train_epoch(trainer, module, loop)
            if loop.epoch_loop_done:
                loop.epoch += 1
                loop.batches_in_epoch = 0
                loop.epoch_loop_done = False
            done = _fit_done(trainer, loop)
        trainer._metrics.current = trainer._metrics.train
        trainer._call_hooks("on_train_end")
    trainer._metrics.current = trainer._metrics.train
    trainer._call_hooks("on_fit_end")
    trainer._metrics.current = None


def _can_stop_early(trainer: Any, loop: LoopState) -> bool:
    return (trainer.min_epochs is None or loop.epoch >= trainer.min_epochs) and (
        trainer.min_steps is None or loop.global_step >= trainer.min_steps
    )


def _fit_done(trainer: Any, loop: LoopState) -> bool:
    """Whether fit ends here; a limit reached is said on the "fulmen" logger, as Lightning says it."""
    if trainer.num_training_batches == 0:
        rank_zero_info("`Trainer.fit` stopped: No training batches.")
        return True
    if trainer.max_steps != -1 and loop.global_step >= trainer.max_steps:
        rank_zero_info(f"`Trainer.fit` stopped: `max_steps={trainer.max_steps!r}` reached.")
        return True
    if trainer.max_epochs not in (None, -1) and loop.epoch >= trainer.max_epochs:
        rank_zero_info(f"`Trainer.fit` stopped: `max_epochs={trainer.max_epochs!r}` reached.")
        return True
    if loop.should_stop:
        if _can_stop_early(trainer, loop):
            return True
        loop.should_stop = False  # asked too early: min_epochs/min_steps win, as in Lightning
    if _time_is_up(trainer):
        _log_time_limit(trainer)
        return True
    return False


def _log_time_limit(trainer: Any) -> None:
    from datetime import timedelta

    elapsed = timedelta(seconds=int(time.monotonic() - trainer._start_time))
    rank_zero_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")


def _time_is_up(trainer: Any) -> bool:
    if trainer.max_time is None:
        return False
    up = time.monotonic() - trainer._start_time >= trainer.max_time
    # every process must stop at the same batch, whatever its own clock says
    return trainer.strategy.reduce_boolean_decision(up, all=False) if trainer.world_size > 1 else up


def _sanity_check(trainer: Any) -> None:
    trainer.state.stage = RunningStage.SANITY_CHECKING
    trainer._metrics.current = None
    trainer._call_callbacks("on_sanity_check_start")
    loaders = _val_loaders(trainer)
    if loaders:
        n = trainer.num_sanity_val_steps
        limits = [min(n, b) for b in trainer.num_val_batches]
        trainer.num_sanity_val_batches = limits
        evaluate(trainer, RunningStage.SANITY_CHECKING, loaders, limits)
    trainer.state.stage = RunningStage.SANITY_CHECKING
    trainer._metrics.current = None
    trainer._call_callbacks("on_sanity_check_end")
    # what the sanity check logged is thrown away, as in Lightning
    trainer._metrics.callback.clear()
    trainer._metrics.logged.clear()
    trainer._metrics.pbar.clear()
    trainer._metrics.eval.reset()


def _val_loaders(trainer: Any) -> list[Any]:
    if trainer._val_loaders is None:
        trainer._val_loaders = _data.setup_eval_data(trainer, RunningStage.VALIDATING, trainer._given_val_loaders)
        if not trainer._val_loaders:
            trainer._enable_validation = False
    return trainer._val_loaders


def _train_epoch(trainer: Any, module: Any, loop: LoopState) -> None:
    """One training epoch: batches, in-epoch validation, then the epoch-end hooks."""
    hooks = trainer._hooks
    metrics = trainer._metrics
    results = metrics.train
    metrics.current = results
    trainer.state.stage = RunningStage.TRAINING
    torch.set_grad_enabled(True)
    trainer._call_hooks("on_train_epoch_start")

    # the epoch's data order is drawn from the RNG here: keep that state so a mid-epoch resume rebuilds it
    skip = loop.batches_in_epoch
    train_iterable = trainer._train_iterable
    if skip:
        resume_rng = collect_rng_states()
        restore_rng_states(loop.epoch_start_rng)
        _data.set_generator_states(train_iterable, loop.epoch_start_generators)
        loop.loader_generators = None
    else:
        if loop.loader_generators is not None:  # resumed at an epoch's end: the loader's generators as saved
            _data.set_generator_states(train_iterable, loop.loader_generators)
            loop.loader_generators = None
        loop.epoch_start_rng = collect_rng_states()
        loop.epoch_start_generators = _data.generator_states(train_iterable)
    if loop.sampler_seed is None:
        loop.sampler_seed = _data.sampler_seed()
    _data.set_epoch(train_iterable, loop.epoch, loop.sampler_seed)
    n_batches = trainer.num_training_batches
    # mid-epoch resume: the loader's own state, else skip at the sampler level (nothing loaded), else replay
    first_epoch_here = trainer._loop_first_epoch
    trainer._loop_first_epoch = False
    reused = first_epoch_here and loop.epoch > 0 and not trainer.reload_dataloaders_every_n_epochs
    streams = trainer._worker_streams["train"]
    iterator = _data.resume_iter(train_iterable, skip, loop.loader_state, reused_before=reused,
                                 streams=streams, saved=streams.pending)
    loop.loader_state = streams.pending = None
    if skip:
        restore_rng_states(resume_rng)

    step = _make_training_step(trainer, module, loop)
    step = guard_training_step(trainer, loop, step)  # SpikeDetection's watch, skip and roll-back (trainer/recovery.py)
    move = _data.batch_mover(trainer, module)
    profiler = trainer.profiler
    if profiler.active:  # decided once per epoch: with profiler=None nothing below is wrapped
        from fulmen.profilers import _timed, timed_iter

        step = _timed(profiler, "run_training_batch", step)
        iterator = timed_iter(profiler, "train_dataloader_next", iterator)
    cb_batch_start, cb_batch_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
    m_batch_start, m_batch_end = _module_hook(module, "on_train_batch_start"), _module_hook(module, "on_train_batch_end")
    log_every = trainer.log_every_n_steps
    max_steps = trainer.max_steps
    enable_val = trainer._enable_validation
    check_every_epoch = trainer.check_val_every_n_epoch
    val_this_epoch = enable_val and (check_every_epoch is None or (loop.epoch + 1) % check_every_epoch == 0)
    val_check_batch = trainer._val_check_batch
    val_check_seconds = trainer._val_check_seconds
    step_schedulers = [c for c in trainer.lr_scheduler_configs if c.interval == "step"] if module.automatic_optimization else []
    epoch_schedulers = [c for c in trainer.lr_scheduler_configs if c.interval == "epoch" and not c.reduce_on_plateau] if module.automatic_optimization else []
    plateau_step = [c for c in step_schedulers if c.reduce_on_plateau]
    step_schedulers = [c for c in step_schedulers if not c.reduce_on_plateau]
    max_time = trainer.max_time
    # manual optimization accumulates in training_step: each of its batches is a window of its own
    accumulate = trainer.accumulate_grad_batches if module.automatic_optimization else 1
    check_finite, finite_every = _loss_checker(trainer, loop)
    preempted = trainer._preemption.check if trainer._preemption is not None else None  # reads a bool set by SIGTERM
    writers = trainer._async_writers()  # background checkpoint writes: a failed one raises at the next step

    if loop.val_pending:  # the checkpoint was written in the batch-end hooks of a batch followed by validation
        loop.val_pending = False
        _validate_in_fit(trainer, module)
        metrics.current = results
        trainer.state.stage = RunningStage.TRAINING
    batch_idx = skip - 1
    while True:
        batch_idx += 1
        if batch_idx >= n_batches:
            break
        try:
            batch = next(iterator)
        except StopIteration:
            break
        trainer.is_last_batch = is_last = batch_idx + 1 >= n_batches
        results.new_batch(batch, None)
        batch = move(batch, 0)
        results.batch = batch
        if cb_batch_start:
            trainer._call_callbacks("on_train_batch_start", batch, batch_idx)
        if m_batch_start is not None:
            results.fx = "on_train_batch_start"
            response = m_batch_start(batch, batch_idx)
            results.fx = None
            if response == -1:
                break
        first_in_window, stepped = accumulation_window(batch_idx, accumulate, is_last)
        trainer._ends_window = stepped
        outputs = step(batch, batch_idx, first_in_window, stepped)
        loop.batches_in_epoch = batch_idx + 1
        loop.total_batches += 1
        if stepped:
            loop.batches_stepped += 1
            for cfg in step_schedulers:  # frequency counts batches of this epoch, as in Lightning
                if (batch_idx + 1) % cfg.frequency == 0:
                    _step_scheduler(trainer, module, cfg)
        if check_finite is not None and stepped and (loop.batches_stepped % finite_every == 0 or is_last):
            check_finite(outputs, batch_idx)
        if is_last:
            for cfg in epoch_schedulers:
                if (loop.epoch + 1) % cfg.frequency == 0:
                    _step_scheduler(trainer, module, cfg)
        # a finite interval alone decides (the last batch validates only when it falls on it), as in Lightning;
        # a time-based interval is read after the batch-end hooks, on the clock
        val_due = val_this_epoch and val_check_seconds is None and (
            is_last if math.isinf(val_check_batch) else
            (loop.total_batches if check_every_epoch is None else batch_idx + 1) % val_check_batch == 0)
        # a checkpoint written by a batch-end hook (before this batch's row goes to the loggers and before the
        # validation due after it) carries the row and runs that validation first when resumed
        trainer._step_row_due = bool(log_every) and stepped and loop.batches_stepped % log_every == 0
        trainer._val_due = val_due
        if cb_batch_end:
            trainer._call_callbacks("on_train_batch_end", outputs, batch, batch_idx)
        if m_batch_end is not None:
            results.fx = "on_train_batch_end"
            m_batch_end(outputs, batch, batch_idx)
            results.fx = None
        trainer._step_row_due = trainer._val_due = False
        if log_every and stepped and (loop.batches_stepped % log_every == 0 or loop.should_stop):
            metrics.train_step_end(loop.batches_stepped - 1, True)
        if max_time is not None and not loop.should_stop and _time_is_up(trainer):
            _log_time_limit(trainer)
            loop.should_stop = True
        stop = loop.should_stop and _can_stop_early(trainer, loop)
        if val_this_epoch:
            if val_check_seconds is not None:  # only the clock decides, the epoch's end included, as in Lightning
                on_interval = time.monotonic() - trainer._last_val_time >= val_check_seconds
            else:
                on_interval = val_due
            if on_interval or stop:
                _validate_in_fit(trainer, module)
                metrics.current = results
                trainer.state.stage = RunningStage.TRAINING
                # a stop asked for by this validation (EarlyStopping) ends the epoch here, as in Lightning
                stop = loop.should_stop and _can_stop_early(trainer, loop)
        for cfg in plateau_step:
            if stepped and (batch_idx + 1) % cfg.frequency == 0:
                _step_scheduler(trainer, module, cfg)
        for writer in writers:
            if writer._error is not None:
                writer.raise_if_failed()
        if preempted is not None and stepped and preempted(loop.batches_stepped):
            trainer._preemption.stop()  # saves a resumable checkpoint, then leaves fit (SIGTERMException)
        if stop or (max_steps != -1 and loop.global_step >= max_steps):
            break
    loop.epoch_loop_done = True
    trainer.is_last_batch = False

    # epoch end: callbacks, the module, then the monitoring callbacks (checkpointing, early stopping)
    metrics.current = results
    metrics.epoch_end_reached(results)
    trainer._call_callbacks("on_train_epoch_end")
    results.fx = "on_train_epoch_end"
    if module.on_train_epoch_end is not None:
        module.on_train_epoch_end()
    for hook in trainer._monitoring_epoch_end:
        hook(trainer, module)
    results.fx = None
    metrics.train_epoch_end(max(loop.batches_stepped - 1, 0))  # logs the epoch values, then resets them
    if module.automatic_optimization:
        for cfg in trainer.lr_scheduler_configs:
            if cfg.interval == "epoch" and cfg.reduce_on_plateau and (loop.epoch + 1) % cfg.frequency == 0:
                _step_scheduler(trainer, module, cfg)


def _loss_checker(trainer: Any, loop: LoopState) -> tuple[Callable[[Any, int], None] | None, int]:
    """A check that the training loss is finite, and how many optimizer steps apart it runs.

    Checking costs a device sync, so by default it runs only every ``log_every_n_steps`` steps (50 when
    logging is off) and at the epoch's last batch: a loss gone NaN/inf stays so (the weights are then
    NaN), so a late check still catches it, naming the window it happened in. With
    ``detect_anomaly=True`` the automatic step checks each loss before its backward instead (see
    ``_raise_if_not_finite``) and names the exact step. 16-mixed is not checked: its gradient scaler
    skips non-finite steps, which is what choosing it asks for.
    """
    if getattr(trainer.strategy.precision, "scaler", None) is not None:
        return None, 0
    every = 1 if trainer.detect_anomaly else (trainer.log_every_n_steps or 50)
    last_ok = [loop.global_step]

    def check(outputs: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        if bool(torch.isfinite(loss).all()):
            last_ok[0] = loop.global_step
            return
        _raise_if_not_finite(loss, loop, batch_idx, f"between global steps {last_ok[0]} and {loop.global_step} "
                                                    f"(checked every {every} steps)")

    return check, every


def _raise_if_not_finite(loss: Tensor, loop: LoopState, batch_idx: int, where: str | None = None) -> None:
    if where is None:
        if bool(torch.isfinite(loss).all()):
            return
        where = f"at global step {loop.global_step}"
    from fulmen.errors import NonFiniteLossError

    raise NonFiniteLossError(
        f"The training loss became {loss.detach().float().flatten()[0].item()} {where} (epoch {loop.epoch}, "
        f"batch {batch_idx}). Lower the learning rate, clip gradients (Trainer(gradient_clip_val=1.0)) or check "
        "the data; Trainer(detect_anomaly=True) stops at the exact step and names the operation. To skip such "
        "batches instead, return None from training_step when `not torch.isfinite(loss)`."
    )


def _step_scheduler(trainer: Any, module: Any, cfg: Any) -> None:
    metric = None
    if cfg.reduce_on_plateau:
        available = trainer.callback_metrics
        metric = available.get(cfg.monitor)
        if metric is None:
            if cfg.strict:
                raise MisconfigurationException(
                    f"ReduceLROnPlateau watches '{cfg.monitor}', which was not logged. Logged keys: {sorted(available)}. "
                    "Log it with self.log, change 'monitor', or set 'strict': False to skip the step."
                )
            rank_zero_warn(f"ReduceLROnPlateau watches '{cfg.monitor}', which was not logged; skipping its step.")
            return
    results = trainer._metrics.current
    if results is not None:
        results.fx = "lr_scheduler_step"
    module.lr_scheduler_step(cfg.scheduler, metric)
    if results is not None:
        results.fx = None


def _make_training_step(trainer: Any, module: Any, loop: LoopState) -> Callable[[Any, int, bool, bool], Any]:
    """Build the per-batch function: training_step with (automatic) backward and optimizer step.

    It is called as ``step(batch, batch_idx, first_in_window, ends_window)``, with the loop's answer of
    ``accumulation_window``: zero the gradients at a window's first batch, step the optimizer at its end.

    Everything that can be decided once (which hooks exist, precision, clipping, accumulation) is
    decided here, so the returned function does only what this run needs.
    """
    hooks = trainer._hooks
    results = trainer._metrics.train
    strategy = trainer.strategy
    precision = strategy.precision
    lm = _module_cls()
    plain_precision = type(precision).forward_context is Precision.forward_context and precision.autocast is None
    forward_context = precision.forward_context
    training_step = _step_fn(strategy, module, "training_step")
    manual = not module.automatic_optimization

    def run_training_step(batch: Any, batch_idx: int) -> Any:
        results.fx = "training_step"
        if plain_precision:
            out = training_step(batch, batch_idx)
        else:
            with forward_context():
                out = training_step(batch, batch_idx)
        results.fx = None
        return out

    if manual:
        def count_step() -> None:
            loop.global_step += 1

        # the user's opt.step() runs the hooks and counts global_step through these
        for lopt in trainer._lightning_optimizers:
            lopt.__dict__["_on_before_step"] = _before_step_hooks(trainer, module, lopt.optimizer)
            lopt.__dict__["_on_after_step"] = count_step

        def manual_step(batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
            return _outputs(run_training_step(batch, batch_idx))

        return manual_step

    if not trainer.optimizers:
        def no_optimizer_step(batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
            out = run_training_step(batch, batch_idx)
            loss = _loss_of(out)
            if loss is not None:
                strategy.backward(loss, None, module=module)
            if ends_window:
                loop.global_step += 1  # Lightning counts the steps of its stand-in optimizer
            return _outputs(out)

        return no_optimizer_step

    optimizer = trainer.optimizers[0]
    lopt = trainer._lightning_optimizers[0]
    accumulate = trainer.accumulate_grad_batches
    cb_zero, cb_bwd, cb_after_bwd = hooks["on_before_zero_grad"], hooks["on_before_backward"], hooks["on_after_backward"]
    m_zero = _module_hook(module, "on_before_zero_grad")
    m_bwd = _module_hook(module, "on_before_backward")
    m_after_bwd = _module_hook(module, "on_after_backward")
    custom_zero_grad = _module_hook(module, "optimizer_zero_grad")
    custom_step = _module_hook(module, "optimizer_step")
    custom_backward = is_overridden("backward", module, lm)
    after_closure = _before_step_hooks(trainer, module, optimizer)
    simple_backward = (not custom_backward and type(precision).backward is Precision.backward
                       and not trainer.profiler.active)  # a profiler times strategy.backward
    check_each_loss = trainer.detect_anomaly and getattr(precision, "scaler", None) is None
    state = {"out": None, "ran": False}
    no_sync = strategy.no_backward_sync() if accumulate > 1 else None  # accumulating: no gradient all-reduce

    def step(batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
        def closure() -> Tensor | None:
            state["ran"] = True
            state["out"] = out = run_training_step(batch, batch_idx)
            loss = _loss_of(out)
            if first_in_window:
                if cb_zero:
                    trainer._call_callbacks("on_before_zero_grad", optimizer)
                if m_zero is not None:
                    m_zero(optimizer)
                if custom_zero_grad is not None:
                    custom_zero_grad(trainer.current_epoch, batch_idx, optimizer)
                else:
                    optimizer.zero_grad()
            if loss is None:
                return None
            if check_each_loss:
                _raise_if_not_finite(loss, loop, batch_idx)
            if accumulate > 1:
                loss = loss / accumulate
            if cb_bwd:
                trainer._call_callbacks("on_before_backward", loss)
            if m_bwd is not None:
                results.fx = "on_before_backward"
                m_bwd(loss)
                results.fx = None
            if simple_backward:
                loss.backward()
            else:
                strategy.backward(loss, optimizer, module=module)
            if cb_after_bwd:
                trainer._call_callbacks("on_after_backward")
            if m_after_bwd is not None:
                results.fx = "on_after_backward"
                m_after_bwd()
                results.fx = None
            return loss

        if not ends_window:
            if no_sync is None:
                closure()
            else:
                with no_sync():
                    closure()
            return _outputs(state["out"])
        if custom_step is not None:
            state["ran"] = False
            lopt.__dict__["_on_before_step"] = after_closure
            lopt.__dict__["_on_after_step"] = None
            results.fx = "optimizer_step"
            custom_step(trainer.current_epoch, batch_idx, lopt, closure)
            results.fx = None
            if not state["ran"]:
                raise MisconfigurationException(
                    "`optimizer_step` did not call the closure, so training_step never ran. Call "
                    "`optimizer.step(closure=optimizer_closure)` in your override."
                )
        else:
            strategy.optimizer_step(optimizer, closure, module, after_closure)
        loop.global_step += 1
        return _outputs(state["out"])

    return step


def _before_step_hooks(trainer: Any, module: Any, optimizer: Any) -> Callable[[], None] | None:
    """What runs between backward and the optimizer step: the hooks, then gradient clipping."""
    cb = trainer._hooks["on_before_optimizer_step"]
    m_hook = _module_hook(module, "on_before_optimizer_step")
    custom_clip = _module_hook(module, "configure_gradient_clipping")
    clip_val = trainer.gradient_clip_val
    algorithm = trainer.gradient_clip_algorithm  # None unless given; the default clipping is by norm
    manual = not module.automatic_optimization
    if not cb and m_hook is None and custom_clip is None and (not clip_val or manual):
        return None
    results = trainer._metrics.train

    def run_hooks() -> None:
        caller_fx = results.fx  # with manual optimization this runs inside training_step, which may log after it
        if cb:
            trainer._call_callbacks("on_before_optimizer_step", optimizer)
        if m_hook is not None:
            results.fx = "on_before_optimizer_step"
            m_hook(optimizer)
        results.fx = caller_fx
        if manual:
            return  # with manual optimization the user clips, via self.clip_gradients
        results.fx = "configure_gradient_clipping"
        if clip_val and custom_clip is None:
            trainer.strategy.precision.unscale_gradients(optimizer)
            trainer.strategy.clip_gradients(optimizer, float(clip_val), algorithm or "norm")
        elif custom_clip is not None:
            custom_clip(optimizer, clip_val, algorithm)
        results.fx = None

    return run_hooks


def _loss_of(out: Any) -> Tensor | None:
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


def _outputs(out: Any) -> Any:
    """What on_train_batch_end receives: ``{"loss": detached loss, **extras}``, as in Lightning;
    anything else (manual optimization may return what it likes) is passed on as it is."""
    if isinstance(out, Tensor):
        return {"loss": out.detach()}
    if isinstance(out, dict):
        return {k: (v.detach() if k == "loss" and isinstance(v, Tensor) else v) for k, v in out.items()}
    return out


def _validate_in_fit(trainer: Any, module: Any) -> None:
    loaders = _val_loaders(trainer)
    if not loaders:
        return
    trainer._call_module("on_validation_model_zero_grad")
    evaluate(trainer, RunningStage.VALIDATING, loaders, trainer.num_val_batches)


# ==================================================================================================
# evaluation and prediction
# ==================================================================================================
def evaluate_entry(trainer: Any, stage: RunningStage) -> list[dict[str, float]]:
    """trainer.validate / trainer.test: set the data up, run, print the table, return the metrics."""
    step = "validation_step" if stage == RunningStage.VALIDATING else "test_step"
    if not is_overridden(step, trainer.lightning_module, _module_cls()):
        raise MisconfigurationException(
            f"No `{step}()` method defined to run `Trainer.{stage.value}`. Define `{step}(self, batch, batch_idx)` "
            f"on {type(trainer.lightning_module).__name__} and log metrics in it with self.log."
        )
    loaders = _data.setup_eval_data(trainer, stage, trainer._given_eval_loaders)
    if not loaders:
        raise MisconfigurationException(
            f"trainer.{stage.value}() has no data. Pass dataloaders, a datamodule with {stage.dataloader_prefix}_dataloader(), "
            f"or define {stage.dataloader_prefix}_dataloader() on the module."
        )
    nums = trainer.num_val_batches if stage == RunningStage.VALIDATING else trainer.num_test_batches
    out = evaluate(trainer, stage, loaders, nums)
    if trainer._verbose and trainer.is_global_zero and any(out):
        from fulmen.callbacks.progress.rich_progress import RichProgressBar

        bar = trainer.progress_bar_callback
        _logging.print_results(stage, out, bar._console_kwargs if isinstance(bar, RichProgressBar) else None)
    return out


def _eval_batches(trainer: Any, dl_idx: int, loader: Any, limit: float) -> Any:
    """An iterator over one evaluation loader's batches, made now: making it draws the loader's base seed from
    the global generator, which is why the first loader's is made before the stage's hooks run, as in Lightning
    (a hook that draws random numbers then gets Lightning's)."""
    source = loader
    if trainer.state.fn == TrainerFn.FITTING:  # persistent workers keep their random streams between validations
        streams = trainer._worker_streams.setdefault(f"val{dl_idx}", _data._WorkerStreams())
        source = _data.eval_iter(loader, streams)
    return _data.islice(source, limit)


def evaluate(trainer: Any, stage: RunningStage, loaders: list[Any], limits: list[float]) -> list[dict[str, float]]:
    """One pass over the evaluation loaders: eval mode and inference mode, then restore training mode."""
    module = trainer.lightning_module
    metrics = trainer._metrics
    prefix = "test" if stage == RunningStage.TESTING else "validation"
    previous_stage = trainer.state.stage
    trainer.state.stage = stage
    results = metrics.eval
    results.reset()
    metrics.current = results
    first = _eval_batches(trainer, 0, loaders[0], limits[0]) if loaders else None
    modes = {name: m.training for name, m in module.named_modules()}
    trainer._call_module(f"on_{prefix}_model_eval")
    multi = len(loaders) > 1
    _check_dataloader_idx(module, stage, multi)
    step_fn = _step_fn(trainer.strategy, module, f"{prefix}_step")
    hooks = trainer._hooks
    cb_start, cb_end = hooks[f"on_{prefix}_batch_start"], hooks[f"on_{prefix}_batch_end"]
    m_start, m_end = _module_hook(module, f"on_{prefix}_batch_start"), _module_hook(module, f"on_{prefix}_batch_end")
    move = _data.batch_mover(trainer, module)
    precision = trainer.strategy.precision
    loop = trainer._loop
    log_every = trainer.log_every_n_steps
    in_fit = trainer.state.fn == TrainerFn.FITTING
    log_steps = stage == RunningStage.VALIDATING and in_fit
    # inside fit (and its sanity check) no_grad, as in Lightning: inference tensors made there would meet training
    # later, and a validation_step may switch gradients on (meta-learning); validate/test may use inference_mode
    grad_ctx = trainer.strategy.evaluation_context(trainer.inference_mode and not in_fit)
    trainer.profiler.start(f"run_{prefix}")
    with grad_ctx:
        trainer._call_hooks(f"on_{prefix}_start")
        trainer._call_hooks(f"on_{prefix}_epoch_start")
        for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            extra = (dl_idx,) if multi else ()
            for batch_idx, batch in enumerate(first if dl_idx == 0 else _eval_batches(trainer, dl_idx, loader, limit)):
                results.new_batch(batch, dl_idx if multi else None)
                batch = move(batch, dl_idx)
                results.batch = batch
                if cb_start:
                    trainer._call_callbacks(f"on_{prefix}_batch_start", batch, batch_idx, *extra)
                if m_start is not None:
                    results.fx = f"on_{prefix}_batch_start"
                    m_start(batch, batch_idx, *extra)
                results.fx = f"{prefix}_step"
                with precision.forward_context():
                    out = step_fn(batch, batch_idx, *extra)
                results.fx = None
                if cb_end:
                    trainer._call_callbacks(f"on_{prefix}_batch_end", out, batch, batch_idx, *extra)
                if m_end is not None:
                    results.fx = f"on_{prefix}_batch_end"
                    m_end(out, batch, batch_idx, *extra)
                    results.fx = None
                if stage != RunningStage.SANITY_CHECKING:
                    if log_steps:
                        seen = loop.val_batches
                        if len(seen) <= dl_idx:
                            seen.extend([0] * (dl_idx + 1 - len(seen)))
                        seen[dl_idx] += 1
                        step = seen[dl_idx]
                    else:
                        step = batch_idx + 1
                    metrics.eval_step_end(step - 1, flush=bool(log_every))  # every batch, as in Lightning
        metrics.epoch_end_reached(results)
        trainer._call_hooks(f"on_{prefix}_epoch_end")
        step = None  # the sanity check logs nothing
        if stage != RunningStage.SANITY_CHECKING:
            step = max(loop.batches_stepped - 1, 0) if trainer.state.fn == TrainerFn.FITTING else loop.batches_stepped
        per_loader = metrics.eval_epoch_end(step, len(loaders))
    metrics.current = results
    trainer._call_hooks(f"on_{prefix}_end")
    train_hook = f"on_{prefix}_model_train"
    if is_overridden(train_hook, module, _module_cls()):
        trainer._call_module(train_hook)
    else:
        for name, m in module.named_modules():
            m.training = modes.get(name, m.training)
    trainer.state.stage = previous_stage
    metrics.current = None
    trainer.profiler.stop(f"run_{prefix}")
    if trainer._val_check_seconds is not None:
        trainer._last_val_time = time.monotonic()
    return per_loader


def predict(trainer: Any) -> Any:
    module = trainer.lightning_module
    if module.predict_step is None:
        raise MisconfigurationException(
            f"{type(module).__name__}.predict_step is None, so trainer.predict() has nothing to run. Remove the "
            "assignment (the default predicts `self(batch)`) or define `predict_step(self, batch, batch_idx)`."
        )
    stage = RunningStage.PREDICTING
    trainer.state.stage = stage
    loaders = _data.setup_eval_data(trainer, stage, trainer._given_eval_loaders)
    if not loaders:
        raise MisconfigurationException(
            "trainer.predict() has no data. Pass dataloaders, a datamodule with predict_dataloader(), or define "
            "predict_dataloader() on the module."
        )
    trainer._metrics.current = None
    modes = {name: m.training for name, m in module.named_modules()}
    trainer._call_module("on_predict_model_eval")
    hooks = trainer._hooks
    cb_start, cb_end = hooks["on_predict_batch_start"], hooks["on_predict_batch_end"]
    m_start, m_end = _module_hook(module, "on_predict_batch_start"), _module_hook(module, "on_predict_batch_end")
    move = _data.batch_mover(trainer, module)
    precision = trainer.strategy.precision
    keep = trainer._return_predictions
    multi = len(loaders) > 1
    _check_dataloader_idx(module, stage, multi)
    predict_step = _step_fn(trainer.strategy, module, "predict_step")
    all_preds: list[list[Any]] = []
    with trainer.strategy.evaluation_context(trainer.inference_mode):
        trainer._call_hooks("on_predict_start")
        trainer._call_hooks("on_predict_epoch_start")
        for dl_idx, (loader, limit) in enumerate(zip(loaders, trainer.num_predict_batches)):
            extra = (dl_idx,) if multi else ()
            preds: list[Any] = []
            # made after on_predict_start (Lightning: before), where prediction writers hook the batch samplers
            for batch_idx, batch in enumerate(_data.islice(loader, limit)):
                batch = move(batch, dl_idx)
                if cb_start:
                    trainer._call_callbacks("on_predict_batch_start", batch, batch_idx, *extra)
                if m_start is not None:
                    m_start(batch, batch_idx, *extra)
                with precision.forward_context():
                    out = predict_step(batch, batch_idx, *extra)
                if cb_end:
                    trainer._call_callbacks("on_predict_batch_end", out, batch, batch_idx, *extra)
                if m_end is not None:
                    m_end(out, batch, batch_idx, *extra)
                if keep:
                    preds.append(out)
            all_preds.append(preds)
        trainer._call_hooks("on_predict_epoch_end")
        trainer._call_hooks("on_predict_end")
    for name, m in module.named_modules():
        m.training = modes.get(name, m.training)
    if not keep:
        return None
    if trainer.world_size > 1:
        all_preds = [_gather_predictions(trainer, ld, preds) for ld, preds in zip(loaders, all_preds)]
    return all_preds if multi else all_preds[0]


def _gather_predictions(trainer: Any, loader: Any, preds: list[Any]) -> list[Any]:
    """Every rank's predictions, back in the loader's sample order and batch size (as one process gives them)."""
    from torch.utils.data import default_collate

    sampler = getattr(loader, "sampler", None)
    indices = list(sampler) if isinstance(sampler, _data.UnrepeatedDistributedSampler) else None
    to_cpu = lambda t: t.detach().cpu()  # noqa: E731
    from fulmen._utils import apply_to_collection

    gathered = trainer.strategy.all_gather_object((indices, apply_to_collection(preds, Tensor, to_cpu)))
    batch_size = getattr(loader, "batch_size", None)
    samples: dict[int, Any] = {}
    for rank_indices, rank_preds in gathered:
        pieces = [piece for batch in rank_preds for piece in _unbatch(batch)] if rank_indices is not None else None
        if pieces is None or batch_size is None or len(pieces) != len(rank_indices):
            rank_zero_warn("The predictions of several processes could not be put back in sample order (they are not "
                           "tensors with one row per sample); trainer.predict returns them rank after rank.")
            return [p for _, rank_preds_ in gathered for p in rank_preds_]
        samples.update(zip(rank_indices, pieces))
    ordered = [samples[i] for i in sorted(samples)]
    return [default_collate(ordered[i:i + batch_size]) for i in range(0, len(ordered), batch_size)]


def _unbatch(batch: Any) -> list[Any]:
    found: list[int] = []
    from fulmen._utils import apply_to_collection

    apply_to_collection(batch, Tensor, lambda t: found.append(t.shape[0] if t.ndim else -1))
    if not found or len(set(found)) != 1 or found[0] < 0:
        return []  # not one row per sample: the caller falls back to rank order
    return [apply_to_collection(batch, Tensor, lambda t, i=i: t[i]) for i in range(found[0])]
