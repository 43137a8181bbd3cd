"""The loops, in plain sight: set-up, fit (training with validation), evaluation and prediction.

Every hook call is here, in the order Lightning 2.x makes them. Which hooks are overridden is
decided once per run (``Trainer._collect_hooks``); in the batch loop an empty hook list is skipped,
and no value is turned into a Python number, so the loop adds next to nothing to a step.

A run's Trainer reaches the loops as a ``RunContext`` (trainer/context.py). Each training epoch first
makes its plan (``EpochPlan``: when schedulers step, when validation runs, how often logs flush), then
runs the batch loop, which reads the plan's answers.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import torch
from torch import Tensor

from fulmen._utils import collect_rng_states, is_overridden, rank_zero_info, restore_rng_states
from fulmen.errors import MisconfigurationException
from fulmen.module import LightningModule
from fulmen.precision import Precision
from fulmen.trainer import checkpointing, data as _data
from fulmen.trainer.checks import (FiniteLossCheck, check_dataloader_idx, check_legacy, module_hook, raise_if_not_finite,
                                   step_fn, step_outputs, training_loss)
from fulmen.trainer.context import EpochPlan, RunContext
from fulmen.trainer.logging import log_hyperparams, print_results
from fulmen.trainer.optimizers import setup_optimizers, step_scheduler
from fulmen.trainer.recovery import guard_training_step
from fulmen.trainer.state import LoopState, RunningStage, TrainerFn, accumulation_window, logging_due


# ==================================================================================================
# set-up and tear-down
# ==================================================================================================
def run(trainer: Any, fn: TrainerFn, weights_only: bool | None) -> Any:
    """Everything one entry point does, from ``configure_callbacks`` to ``teardown``."""
    module = trainer.lightning_module
    stage = fn.value
    trainer._merge_model_callbacks(module)
    check_legacy(module, trainer.callbacks, fn.value)
    resume_from = None
    if fn == TrainerFn.FITTING:  # before any hook: resuming may pick the logger version to continue in
        from fulmen.trainer.resume import resolve_fit_path

        requested = trainer.ckpt_path
        resume_from = resolve_fit_path(trainer, requested)
        trainer.ckpt_path = resume_from[0] if resume_from else None
    trainer._collect_hooks()
    trainer._metrics.current = None
    trainer.strategy.setup_environment()
    trainer.accelerator.setup(trainer)
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
        setup_optimizers(trainer, module)
    checkpoint = None
    if resume_from:
        checkpoint = checkpointing.restore_first_valid(trainer, resume_from, weights_only, announce=requested != resume_from[0])
    elif trainer.ckpt_path is not None:
        checkpoint = checkpointing.restore_checkpoint(trainer, trainer.ckpt_path, weights_only, fn == TrainerFn.FITTING)
    ctx = RunContext.of(trainer)  # after the restore, which replaces the loop state
    ctx.start_time = time.monotonic()
    if fn == TrainerFn.FITTING:
        result = fit(ctx, resumed=checkpoint is not None)
        trainer._flush_checkpoints()  # fit returns with every checkpoint on disk (or a failed write's error)
    elif fn == TrainerFn.PREDICTING:
        result = predict(ctx)
    else:
        log_hyperparams(trainer)
        result = evaluate_entry(ctx, RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING)
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


# ==================================================================================================
# fit
# ==================================================================================================
def fit(ctx: RunContext, resumed: bool) -> None:
    # the trainer's loop state carries over: a second fit continues where the first stopped (and runs no
    # training at all when its limits are reached), as in Lightning; a checkpoint replaced it when resumed
    trainer, module, loop, metrics = ctx.trainer, ctx.module, ctx.loop, ctx.metrics
    metrics.current = metrics.train
    ctx.call_hooks("on_fit_start")
    trainer._enable_validation = is_overridden("validation_step", module, LightningModule) and trainer.limit_val_batches != 0
    ctx.val_loaders = None
    if trainer._enable_validation and trainer.num_sanity_val_steps != 0 and not resumed:
        # Lightning does not let the sanity check draw from the global generators (its val loader's
        # iterator does, for its base seed): a seeded run then shuffles its training data as plain PyTorch does
        rng = collect_rng_states()
        _sanity_check(ctx)
        restore_rng_states(rng)
    if trainer.train_dataloader is None:  # estimated_stepping_batches may have set it up already
        _data.setup_train_data(trainer)
    log_hyperparams(trainer)
    trainer.state.stage = RunningStage.TRAINING
    metrics.current = metrics.train
    if loop.epoch_loop_done:  # the checkpoint was written at an epoch's end: continue with the next one
        _next_epoch(loop)
    done = _fit_done(ctx)
    if not done:
        # no module.train() here: layers the user froze in eval mode stay so, as in Lightning
        ctx.call_hooks("on_train_start")
        if trainer._val_check_seconds is not None:  # a time-based val_check_interval counts from here
            ctx.last_val_time = time.monotonic()
        ctx.first_epoch = True  # the first epoch this fit runs (a resumed one may start at any epoch)
        while not done:
            every = trainer.reload_dataloaders_every_n_epochs
            if every and loop.epoch and loop.epoch % every == 0 and loop.batches_in_epoch == 0:
                _data.setup_train_data(trainer)
                ctx.val_loaders = None
            with ctx.profiler.profile("run_training_epoch"):
                train_epoch(ctx)
            if loop.epoch_loop_done:
                _next_epoch(loop)
            done = _fit_done(ctx)
        metrics.current = metrics.train
        ctx.call_hooks("on_train_end")
    metrics.current = metrics.train
    ctx.call_hooks("on_fit_end")
    metrics.current = None


def _next_epoch(loop: LoopState) -> None:
    loop.epoch += 1
    loop.batches_in_epoch = 0
    loop.epoch_loop_done = False


def _fit_done(ctx: RunContext) -> bool:
    """Whether fit ends here; a limit reached is said on the "fulmen" logger, as Lightning says it."""
    trainer, loop = ctx.trainer, ctx.loop
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
        if ctx.can_stop_early():
            return True
        loop.should_stop = False  # asked too early: min_epochs/min_steps win, as in Lightning
    return ctx.time_is_up()


def _sanity_check(ctx: RunContext) -> None:
    trainer, metrics = ctx.trainer, ctx.metrics
    trainer.state.stage = RunningStage.SANITY_CHECKING
    metrics.current = None
    ctx.call_callbacks("on_sanity_check_start")
    loaders = _val_loaders(ctx)
    if loaders:  # setup_eval_data counted num_sanity_val_batches
        evaluate(ctx, RunningStage.SANITY_CHECKING, loaders, trainer.num_sanity_val_batches)
    trainer.state.stage = RunningStage.SANITY_CHECKING
    metrics.current = None
    ctx.call_callbacks("on_sanity_check_end")
    # what the sanity check logged is thrown away, as in Lightning
    metrics.callback.clear()
    metrics.logged.clear()
    metrics.pbar.clear()
    metrics.eval.reset()


def _val_loaders(ctx: RunContext) -> list[Any]:
    if ctx.val_loaders is None:
        ctx.val_loaders = _data.setup_eval_data(ctx.trainer, RunningStage.VALIDATING, ctx.given_val_loaders)
        if not ctx.val_loaders:
            ctx.trainer._enable_validation = False
    return ctx.val_loaders


def _validate_in_fit(ctx: RunContext) -> None:
    loaders = _val_loaders(ctx)
    if loaders:
        ctx.call_module("on_validation_model_zero_grad")
        evaluate(ctx, RunningStage.VALIDATING, loaders, ctx.trainer.num_val_batches)
    ctx.metrics.current = ctx.metrics.train
    ctx.trainer.state.stage = RunningStage.TRAINING


def train_epoch(ctx: RunContext) -> None:
    """One training epoch: batches, in-epoch validation, then the epoch-end hooks."""
    trainer, module, loop, metrics, hooks = ctx.trainer, ctx.module, ctx.loop, ctx.metrics, ctx.hooks
    results = metrics.train
    metrics.current = results
    trainer.state.stage = RunningStage.TRAINING
    torch.set_grad_enabled(True)
    ctx.call_hooks("on_train_epoch_start")
    skip = loop.batches_in_epoch
    first_of_fit, ctx.first_epoch = ctx.first_epoch, False
    reused = first_of_fit and loop.epoch > 0 and not trainer.reload_dataloaders_every_n_epochs
    iterator = _data.epoch_batches(trainer, loop, skip, reused_before=reused, first_of_fit=first_of_fit)
    skip = loop.batches_in_epoch  # an elastic resume counts it anew on this number of processes
    plan = EpochPlan(ctx)  # after on_train_epoch_start, where callbacks may change the flags
    step = _training_step(ctx)
    step = guard_training_step(trainer, loop, step)  # SpikeDetection's watch, skip and roll-back (trainer/recovery.py)
    move = _data.batch_mover(trainer, module)
    if ctx.profiler.active:  # decided once per epoch: with profiler=None nothing below is wrapped
        from fulmen.profilers import _timed, timed_iter

        step = _timed(ctx.profiler, "run_training_batch", step)
        iterator = timed_iter(ctx.profiler, "train_dataloader_next", iterator)
    call_callbacks = ctx.call_callbacks
    cb_batch_start, cb_batch_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
    m_batch_start, m_batch_end = module_hook(module, "on_train_batch_start"), module_hook(module, "on_train_batch_end")
    n_batches = trainer.num_training_batches
    check_finite = FiniteLossCheck.for_run(trainer, loop)
    preempted = ctx.preemption.check if ctx.preemption is not None else None  # reads a bool set by SIGTERM
    writers = trainer._async_writers()  # background checkpoint writes: a failed one raises at the next step

    if loop.val_pending:  # the checkpoint was written in the batch-end hooks of a batch followed by validation
        loop.val_pending = False
        _validate_in_fit(ctx)
    for batch_idx in itertools.count(skip):
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
            call_callbacks("on_train_batch_start", batch, batch_idx)
        if m_batch_start is not None:
            with results.hook("on_train_batch_start"):
                response = m_batch_start(batch, batch_idx)
            if response == -1:
                break
        first_in_window, stepped = accumulation_window(batch_idx, plan.accumulate, is_last)
        trainer._ends_window = stepped
        outputs = step(batch, batch_idx, first_in_window, stepped)
        loop.batches_in_epoch = batch_idx + 1
        loop.total_batches += 1
        if stepped:
            loop.batches_stepped += 1
            for cfg in plan.step_schedulers:  # frequency counts batches of this epoch, as in Lightning
                if (batch_idx + 1) % cfg.frequency == 0:
                    step_scheduler(trainer, cfg)
        if check_finite is not None and check_finite.due(stepped, is_last):
            check_finite(outputs, batch_idx)
        if is_last:
            for cfg in plan.epoch_schedulers:
                step_scheduler(trainer, cfg)
        val_due = plan.val_due(batch_idx, loop.total_batches, is_last)
        row_due = stepped and logging_due(loop.batches_stepped, plan.log_every)
        # a checkpoint written by a batch-end hook (before this batch's row goes to the loggers and before the
        # validation due after it) carries the row and runs that validation first when resumed
        trainer._step_row_due, trainer._val_due = row_due, val_due
        if cb_batch_end:
            call_callbacks("on_train_batch_end", outputs, batch, batch_idx)
        if m_batch_end is not None:
            with results.hook("on_train_batch_end"):
                m_batch_end(outputs, batch, batch_idx)
        trainer._step_row_due = trainer._val_due = False
        if row_due or (stepped and plan.log_every and loop.should_stop):
            metrics.step_end(results, loop.batches_stepped - 1)
        if plan.max_time is not None and not loop.should_stop and ctx.time_is_up():
            loop.should_stop = True
        stop = loop.should_stop and ctx.can_stop_early()
        if stop or (val_due if plan.val_check_seconds is None else plan.val_on_clock(ctx)):
            if plan.validate:
                _validate_in_fit(ctx)
                # a stop asked for by this validation (EarlyStopping) ends the epoch here, as in Lightning
                stop = loop.should_stop and ctx.can_stop_early()
        for cfg in plan.plateau_step:
            if stepped and (batch_idx + 1) % cfg.frequency == 0:
                step_scheduler(trainer, cfg)
        for writer in writers:
            if writer._error is not None:
                writer.raise_if_failed()
        if preempted is not None and stepped and preempted(loop.batches_stepped):
            ctx.preemption.stop()  # saves a resumable checkpoint, then leaves fit (SIGTERMException)
        if stop or (plan.max_steps != -1 and loop.global_step >= plan.max_steps):
            break
    loop.epoch_loop_done = True
    trainer.is_last_batch = False

    # epoch end: callbacks, the module, then the monitoring callbacks (checkpointing, early stopping)
    metrics.current = results
    metrics.epoch_end_reached(results)
    call_callbacks("on_train_epoch_end")
    with results.hook("on_train_epoch_end"):
        if module.on_train_epoch_end is not None:
            module.on_train_epoch_end()
        for hook in ctx.monitoring_epoch_end:
            hook(trainer, module)
    metrics.train_epoch_end(max(loop.batches_stepped - 1, 0))  # logs the epoch values, then resets them
    for cfg in plan.plateau_epoch:
        step_scheduler(trainer, cfg)


# ==================================================================================================
# the training step: forward, backward, optimizer step
# ==================================================================================================
def _training_step(ctx: RunContext) -> Callable[[Any, int, bool, bool], Any]:
    """The per-batch function for this epoch, called as ``step(batch, batch_idx, first_in_window,
    ends_window)`` with the loop's answer of ``accumulation_window``."""
    step = _TrainingStep(ctx)
    if not ctx.module.automatic_optimization:
        # the user's opt.step() runs the hooks and counts global_step
        for lopt in ctx.trainer._lightning_optimizers:
            lopt._set_step_hooks(_before_optimizer_step(ctx, lopt.optimizer), step.count_step)
        return step.manual
    if not ctx.trainer.optimizers:
        return step.without_optimizer
    return step.automatic


class _TrainingStep:
    """training_step with (automatic) backward and optimizer step: zero the gradients at a window's
    first batch, step the optimizer at its end.

    Everything that can be decided once (which hooks exist, precision, clipping, accumulation) is decided
    here, once per epoch, so a step does only what this run needs.
    """

    def __init__(self, ctx: RunContext) -> None:
        trainer, module, strategy, hooks = ctx.trainer, ctx.module, ctx.strategy, ctx.hooks
        self.trainer, self.module, self.strategy, self.loop = trainer, module, strategy, ctx.loop
        self.results = ctx.metrics.train
        self.call_callbacks = ctx.call_callbacks
        precision = strategy.precision
        plain_precision = type(precision).forward_context is Precision.forward_context and precision.autocast is None
        self.forward_context = None if plain_precision else precision.forward_context
        self.training_step = step_fn(strategy, module, "training_step")
        self.out: Any = None  # what the last closure's training_step returned
        self.ran = False
        if not module.automatic_optimization or not trainer.optimizers:
            return
        self.batch: Any = None
        self.batch_idx, self.first_in_window = 0, False
        self.optimizer = trainer.optimizers[0]
        self.lopt = trainer._lightning_optimizers[0]
        self.accumulate = trainer.accumulate_grad_batches
        self.cb_zero, self.cb_bwd = hooks["on_before_zero_grad"], hooks["on_before_backward"]
        self.cb_after_bwd = hooks["on_after_backward"]
        self.m_zero = module_hook(module, "on_before_zero_grad")
        self.m_bwd = module_hook(module, "on_before_backward")
        self.m_after_bwd = module_hook(module, "on_after_backward")
        self.custom_zero_grad = module_hook(module, "optimizer_zero_grad")
        self.custom_step = module_hook(module, "optimizer_step")
        self.after_closure = _before_optimizer_step(ctx, self.optimizer)
        if self.custom_step is not None:  # the user's optimizer_step calls lopt.step(closure=...)
            self.lopt._set_step_hooks(self.after_closure, None)
        self.simple_backward = (not is_overridden("backward", module, LightningModule)
                                and type(precision).backward is Precision.backward
                                and not ctx.profiler.active)  # a profiler times strategy.backward
        self.check_each_loss = trainer.detect_anomaly and getattr(precision, "scaler", None) is None
        # accumulating: no gradient all-reduce (DeepSpeed: no engine step) inside a window
        self.no_sync = strategy.no_backward_sync() if self.accumulate > 1 else None

    def run_training_step(self, batch: Any, batch_idx: int) -> Any:
        with self.results.hook("training_step"):
            if self.forward_context is None:
                return self.training_step(batch, batch_idx)
            with self.forward_context():
                return self.training_step(batch, batch_idx)

    def count_step(self) -> None:
        self.loop.global_step += 1

    def manual(self, batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
        return step_outputs(self.run_training_step(batch, batch_idx))

    def without_optimizer(self, batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
        out = self.run_training_step(batch, batch_idx)
        loss = training_loss(out)
        if loss is not None:
            self.strategy.backward(loss, None, module=self.module)
        if ends_window:
            self.loop.global_step += 1  # Lightning counts the steps of its stand-in optimizer
        return step_outputs(out)

    def automatic(self, batch: Any, batch_idx: int, first_in_window: bool, ends_window: bool) -> Any:
        self.batch, self.batch_idx, self.first_in_window = batch, batch_idx, first_in_window
        if not ends_window:
            if self.no_sync is None:
                self.closure()
            else:
                with self.no_sync():
                    self.closure()
            return step_outputs(self.out)
        if self.custom_step is not None:
            self.ran = False
            with self.results.hook("optimizer_step"):
                self.custom_step(self.trainer.current_epoch, batch_idx, self.lopt, self.closure)
            if not self.ran:
                raise MisconfigurationException(
                    "`optimizer_step` did not call the closure, so training_step never ran. Call "
                    "`optimizer.step(closure=optimizer_closure)` in your override."
                )
        else:
            self.strategy.optimizer_step(self.optimizer, self.closure, self.module, self.after_closure)
        self.loop.global_step += 1
        return step_outputs(self.out)

    def closure(self) -> Tensor | None:
        """training_step, zero_grad at a window's first batch, then backward (what optimizer.step calls)."""
        self.ran = True
        batch_idx, optimizer, results = self.batch_idx, self.optimizer, self.results
        self.out = out = self.run_training_step(self.batch, batch_idx)
        loss = training_loss(out)
        if self.first_in_window:
            if self.cb_zero:
                self.call_callbacks("on_before_zero_grad", optimizer)
            if self.m_zero is not None:
                self.m_zero(optimizer)
            if self.custom_zero_grad is not None:
                self.custom_zero_grad(self.trainer.current_epoch, batch_idx, optimizer)
            else:
                optimizer.zero_grad()
        if loss is None:
            return None
        if self.check_each_loss:
            raise_if_not_finite(loss, self.loop, batch_idx)
        if self.accumulate > 1:
            loss = loss / self.accumulate
        if self.cb_bwd:
            self.call_callbacks("on_before_backward", loss)
        if self.m_bwd is not None:
            with results.hook("on_before_backward"):
                self.m_bwd(loss)
        if self.simple_backward:
            loss.backward()
        else:
            self.strategy.backward(loss, optimizer, module=self.module)
        if self.cb_after_bwd:
            self.call_callbacks("on_after_backward")
        if self.m_after_bwd is not None:
            with results.hook("on_after_backward"):
                self.m_after_bwd()
        return loss


def _before_optimizer_step(ctx: RunContext, optimizer: Any) -> Callable[[], None] | None:
    """What runs between backward and the optimizer step: the hooks, then gradient clipping."""
    trainer, module = ctx.trainer, ctx.module
    cb = ctx.hooks["on_before_optimizer_step"]
    m_hook = module_hook(module, "on_before_optimizer_step")
    custom_clip = module_hook(module, "configure_gradient_clipping")
    clip_val = trainer.gradient_clip_val
    algorithm = trainer.gradient_clip_algorithm  # None unless given; the default clipping is by norm
    manual = not module.automatic_optimization
    if not cb and m_hook is None and custom_clip is None and (not clip_val or manual):
        return None
    results, call_callbacks, strategy = ctx.metrics.train, ctx.call_callbacks, ctx.strategy

    def run_hooks() -> None:
        if cb:
            call_callbacks("on_before_optimizer_step", optimizer)
        if m_hook is not None:
            with results.hook("on_before_optimizer_step"):
                m_hook(optimizer)
        if manual:
            return  # with manual optimization the user clips, via self.clip_gradients
        with results.hook("configure_gradient_clipping"):
            if clip_val and custom_clip is None:
                strategy.precision.unscale_gradients(optimizer)
                strategy.clip_gradients(optimizer, float(clip_val), algorithm or "norm")
            elif custom_clip is not None:
                custom_clip(optimizer, clip_val, algorithm)

    return run_hooks


# ==================================================================================================
# evaluation and prediction
# ==================================================================================================
def evaluate_entry(ctx: RunContext, stage: RunningStage) -> list[dict[str, float]]:
    """trainer.validate / trainer.test: set the data up, run, print the table, return the metrics."""
    trainer, module = ctx.trainer, ctx.module
    step = "validation_step" if stage == RunningStage.VALIDATING else "test_step"
    if not is_overridden(step, module, LightningModule):
        raise MisconfigurationException(
            f"trainer.{stage.value}() runs `{step}`, and {type(module).__name__} has none: define "
            f"`{step}(self, batch, batch_idx)` and log metrics in it with self.log."
        )
    loaders = _data.setup_eval_data(trainer, stage, ctx.given_eval_loaders)
    if not loaders:
        raise MisconfigurationException(
            f"trainer.{stage.value}() has no data. Pass dataloaders, a datamodule with {stage.dataloader_prefix}_dataloader(), "
            f"or define {stage.dataloader_prefix}_dataloader() on the module."
        )
    nums = trainer.num_val_batches if stage == RunningStage.VALIDATING else trainer.num_test_batches
    if not sum(nums):  # no batch to run (empty loaders, limit 0): skipped, hooks included, as in Lightning
        return []
    out = evaluate(ctx, stage, loaders, nums)
    if ctx.verbose and trainer.is_global_zero and any(out):
        from fulmen.callbacks.progress.rich_progress import RichProgressBar

        bar = trainer.progress_bar_callback
        print_results(stage, out, bar._console_kwargs if isinstance(bar, RichProgressBar) else None)
    return out


def evaluate(ctx: RunContext, stage: RunningStage, loaders: list[Any], limits: list[float]) -> list[dict[str, float]]:
    """One pass over the evaluation loaders: eval mode and inference mode, then restore training mode."""
    trainer, module, metrics, loop, hooks = ctx.trainer, ctx.module, ctx.metrics, ctx.loop, ctx.hooks
    prefix = "test" if stage == RunningStage.TESTING else "validation"
    previous_stage = trainer.state.stage
    trainer.state.stage = stage
    results = metrics.eval
    results.reset()
    metrics.current = results
    first = _data.eval_batches(trainer, 0, loaders[0], limits[0]) if loaders else None
    modes = {name: m.training for name, m in module.named_modules()}
    ctx.call_module(f"on_{prefix}_model_eval")
    multi = len(loaders) > 1
    check_dataloader_idx(module, stage, multi)
    eval_step = step_fn(ctx.strategy, module, f"{prefix}_step")
    start_name, step_name, end_name = f"on_{prefix}_batch_start", f"{prefix}_step", f"on_{prefix}_batch_end"
    cb_start, cb_end = hooks[start_name], hooks[end_name]
    m_start, m_end = module_hook(module, start_name), module_hook(module, end_name)
    call_callbacks = ctx.call_callbacks
    move = _data.batch_mover(trainer, module)
    forward_context = ctx.strategy.precision.forward_context
    flush = bool(trainer.log_every_n_steps)
    in_fit = trainer.state.fn == TrainerFn.FITTING
    log_steps = stage == RunningStage.VALIDATING and in_fit
    # inside fit (and its sanity check) no_grad, as in Lightning: inference tensors made there would meet training
    # later, and a validation_step may switch gradients on (meta-learning); validate/test may use inference_mode
    grad_ctx = ctx.strategy.evaluation_context(trainer.inference_mode and not in_fit)
    ctx.profiler.start(f"run_{prefix}")
    with grad_ctx:
        ctx.call_hooks(f"on_{prefix}_start")
        ctx.call_hooks(f"on_{prefix}_epoch_start")
        for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            extra = (dl_idx,) if multi else ()
            for batch_idx, batch in enumerate(first if dl_idx == 0 else _data.eval_batches(trainer, dl_idx, loader, limit)):
                results.new_batch(batch, dl_idx if multi else None)
                batch = move(batch, dl_idx)
                results.batch = batch
                if cb_start:
                    call_callbacks(start_name, batch, batch_idx, *extra)
                if m_start is not None:
                    with results.hook(start_name):
                        m_start(batch, batch_idx, *extra)
                with results.hook(step_name), forward_context():
                    out = eval_step(batch, batch_idx, *extra)
                if cb_end:
                    call_callbacks(end_name, out, batch, batch_idx, *extra)
                if m_end is not None:
                    with results.hook(end_name):
                        m_end(out, batch, batch_idx, *extra)
                if stage != RunningStage.SANITY_CHECKING:
                    if log_steps:
                        seen = loop.val_batches
                        if len(seen) <= dl_idx:
                            seen.extend([0] * (dl_idx + 1 - len(seen)))
                        seen[dl_idx] += 1
                        step = seen[dl_idx]
                    else:
                        step = batch_idx + 1
                    if flush:  # every batch, as in Lightning
                        metrics.step_end(results, step - 1)
        metrics.epoch_end_reached(results)
        ctx.call_hooks(f"on_{prefix}_epoch_end")
        step = None  # the sanity check logs nothing
        if stage != RunningStage.SANITY_CHECKING:
            step = max(loop.batches_stepped - 1, 0) if in_fit else loop.batches_stepped
        per_loader = metrics.eval_epoch_end(step, len(loaders))
    metrics.current = results
    ctx.call_hooks(f"on_{prefix}_end")
    train_hook = f"on_{prefix}_model_train"
    if is_overridden(train_hook, module, LightningModule):
        ctx.call_module(train_hook)
    else:
        for name, m in module.named_modules():
            m.training = modes.get(name, m.training)
    trainer.state.stage = previous_stage
    metrics.current = None
    ctx.profiler.stop(f"run_{prefix}")
    if trainer._val_check_seconds is not None:  # a time-based val_check_interval counts from the last one's end
        ctx.last_val_time = time.monotonic()
    return per_loader


def predict(ctx: RunContext) -> Any:
    trainer, module, hooks = ctx.trainer, ctx.module, ctx.hooks
    if module.predict_step is None:
        raise MisconfigurationException(
            f"{type(module).__name__}.predict_step is None, so trainer.predict() has nothing to run. Remove the "
            "assignment (the default predicts `self(batch)`) or define `predict_step(self, batch, batch_idx)`."
        )
    stage = RunningStage.PREDICTING
    trainer.state.stage = stage
    loaders = _data.setup_eval_data(trainer, stage, ctx.given_eval_loaders)
    if not loaders:
        raise MisconfigurationException(
            "trainer.predict() has no data. Pass dataloaders, a datamodule with predict_dataloader(), or define "
            "predict_dataloader() on the module."
        )
    if not sum(trainer.num_predict_batches):  # nothing to predict: skipped, hooks included, as in Lightning
        return None
    ctx.metrics.current = None
    modes = {name: m.training for name, m in module.named_modules()}
    ctx.call_module("on_predict_model_eval")
    cb_start, cb_end = hooks["on_predict_batch_start"], hooks["on_predict_batch_end"]
    m_start, m_end = module_hook(module, "on_predict_batch_start"), module_hook(module, "on_predict_batch_end")
    call_callbacks = ctx.call_callbacks
    move = _data.batch_mover(trainer, module)
    forward_context = ctx.strategy.precision.forward_context
    keep = ctx.return_predictions
    multi = len(loaders) > 1
    check_dataloader_idx(module, stage, multi)
    predict_step = step_fn(ctx.strategy, module, "predict_step")
    all_preds: list[list[Any]] = []
    with ctx.strategy.evaluation_context(trainer.inference_mode):
        ctx.call_hooks("on_predict_start")
        ctx.call_hooks("on_predict_epoch_start")
        for dl_idx, (loader, limit) in enumerate(zip(loaders, trainer.num_predict_batches)):
            extra = (dl_idx,) if multi else ()
            preds: list[Any] = []
            # made after on_predict_start (Lightning: before), where prediction writers hook the batch samplers
            for batch_idx, batch in enumerate(_data.islice(loader, limit)):
                batch = move(batch, dl_idx)
                if cb_start:
                    call_callbacks("on_predict_batch_start", batch, batch_idx, *extra)
                if m_start is not None:
                    m_start(batch, batch_idx, *extra)
                with forward_context():
                    out = predict_step(batch, batch_idx, *extra)
                if cb_end:
                    call_callbacks("on_predict_batch_end", out, batch, batch_idx, *extra)
                if m_end is not None:
                    m_end(out, batch, batch_idx, *extra)
                if keep:
                    preds.append(out)
            all_preds.append(preds)
        ctx.call_hooks("on_predict_epoch_end")
        ctx.call_hooks("on_predict_end")
    for name, m in module.named_modules():
        m.training = modes.get(name, m.training)
    if not keep:
        return None
    if trainer.world_size > 1:
        all_preds = [_data.gather_predictions(ctx.strategy, ld, preds) for ld, preds in zip(loaders, all_preds)]
    return all_preds if multi else all_preds[0]
