"""Lightning 1.x hooks, signatures and Trainer flags that 2.x removed, each with what to write instead.

Where Lightning 2.x stops the run (the module's ``*_epoch_end`` hooks for the stage that would run them,
``optimizer_idx`` signatures, removed Trainer flags) fulmen raises; a removed hook that 2.x simply never
calls (``Callback.on_epoch_end``, ``LightningModule.on_batch_start``, ...) gets one warning and the run
goes on, as it does on Lightning. Checked once per run (signatures are read then, never per step).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from fulmen._utils import is_overridden, rank_zero_warn
from fulmen.errors import LegacyAPIError

_OUTPUTS_HINT = "To use the step outputs, keep them on the module (e.g. append to a list in the step) and clear it there."

# removed LightningModule hooks -> what to write in 2.x
MODULE_HOOKS: dict[str, str] = {
    "training_epoch_end": f"Use `on_train_epoch_end(self)` instead. {_OUTPUTS_HINT}",
    "validation_epoch_end": f"Use `on_validation_epoch_end(self)` instead. {_OUTPUTS_HINT}",
    "test_epoch_end": f"Use `on_test_epoch_end(self)` instead. {_OUTPUTS_HINT}",
    "training_step_end": "Do that work at the end of `training_step` itself.",
    "validation_step_end": "Do that work at the end of `validation_step` itself.",
    "test_step_end": "Do that work at the end of `test_step` itself.",
    "on_epoch_start": "Use `on_train_epoch_start` (or on_validation_epoch_start / on_test_epoch_start).",
    "on_epoch_end": "Use `on_train_epoch_end` (or on_validation_epoch_end / on_test_epoch_end).",
    "on_batch_start": "Use `on_train_batch_start(self, batch, batch_idx)`.",
    "on_batch_end": "Use `on_train_batch_end(self, outputs, batch, batch_idx)`.",
    "on_pretrain_routine_start": "Use `on_fit_start` (or `setup`).",
    "on_pretrain_routine_end": "Use `on_fit_start` (or `setup`).",
    "tbptt_split_batch": "Truncated back-propagation is written by hand in 2.x: split the batch in `training_step` "
                         "with manual optimization.",
    "on_hpc_save": "Use `on_save_checkpoint(self, checkpoint)`.",
    "on_hpc_load": "Use `on_load_checkpoint(self, checkpoint)`.",
    "get_progress_bar_dict": "Override the progress bar's `get_metrics(trainer, pl_module)` instead.",
}

# removed Callback hooks -> what to write in 2.x
CALLBACK_HOOKS: dict[str, str] = {
    "on_epoch_start": "Use `on_train_epoch_start(self, trainer, pl_module)` (or the validation/test ones).",
    "on_epoch_end": "Use `on_train_epoch_end(self, trainer, pl_module)` (or the validation/test ones).",
    "on_batch_start": "Use `on_train_batch_start(self, trainer, pl_module, batch, batch_idx)`.",
    "on_batch_end": "Use `on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx)`.",
    "on_init_start": "Do it in the callback's `__init__`.",
    "on_init_end": "Use `setup(self, trainer, pl_module, stage)`.",
    "on_pretrain_routine_start": "Use `on_fit_start(self, trainer, pl_module)`.",
    "on_pretrain_routine_end": "Use `on_fit_start(self, trainer, pl_module)`.",
    "on_keyboard_interrupt": "Use `on_exception(self, trainer, pl_module, exception)` and check "
                             "`isinstance(exception, KeyboardInterrupt)`.",
    "on_configure_sharded_model": "Use the module's `configure_model(self)`.",
}

# hooks whose 1.x signature took `optimizer_idx` -> their 2.x signature
_OPTIMIZER_IDX_HOOKS: dict[str, str] = {
    "optimizer_step": "optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure)",
    "optimizer_zero_grad": "optimizer_zero_grad(self, epoch, batch_idx, optimizer)",
    "on_before_optimizer_step": "on_before_optimizer_step(self, optimizer)",
    "configure_gradient_clipping": "configure_gradient_clipping(self, optimizer, gradient_clip_val, "
                                   "gradient_clip_algorithm)",
    "lr_scheduler_step": "lr_scheduler_step(self, scheduler, metric)",
    "backward": "backward(self, loss, *args, **kwargs)",
    "toggle_optimizer": "toggle_optimizer(self, optimizer)",
}

# epoch-end hooks that took the epoch's outputs in 1.x and take none in 2.x
_NO_OUTPUTS_HOOKS = ("on_train_epoch_end", "on_validation_epoch_end", "on_test_epoch_end", "on_predict_epoch_end")

# removed Trainer flags -> what to write in 2.x
TRAINER_FLAGS: dict[str, str] = {
    "gpus": "Use `Trainer(accelerator='gpu', devices=N)` (devices may be a count, a list of indices or 'auto').",
    "tpu_cores": "TPUs are not supported by fulmen; use `accelerator='gpu'` or 'cpu' with `devices=N`.",
    "ipus": "IPUs are not supported by fulmen; use `accelerator='gpu'` or 'cpu' with `devices=N`.",
    "hpus": "HPUs are not supported by fulmen; use `accelerator='gpu'` or 'cpu' with `devices=N`.",
    "num_processes": "Use `Trainer(accelerator='cpu', devices=N)`.",
    "auto_select_gpus": "Use `Trainer(accelerator='gpu', devices='auto')`.",
    "auto_lr_find": "Use the Tuner: `fulmen.tuner.Tuner(trainer).lr_find(model)` before `trainer.fit(model)`.",
    "auto_scale_batch_size": "Use the Tuner: `fulmen.tuner.Tuner(trainer).scale_batch_size(model)` before "
                             "`trainer.fit(model)`.",
    "resume_from_checkpoint": "Pass the path to fit: `trainer.fit(model, ckpt_path='path/to.ckpt')`.",
    "track_grad_norm": "Log the norms yourself in `on_before_optimizer_step(self, optimizer)`, e.g. "
                       "`self.log_dict(grad_norm(self, norm_type=2))` with `from fulmen.utilities.grads import grad_norm`.",
    "replace_sampler_ddp": "Use `use_distributed_sampler=`.",
    "amp_backend": "Use `precision='16-mixed'` (or 'bf16-mixed'): torch's native AMP is the only backend.",
    "amp_level": "Use `precision='16-mixed'` (or 'bf16-mixed'): torch's native AMP is the only backend.",
    "move_metrics_to_cpu": "Remove it: logged values stay on the device until a logger reads them.",
    "multiple_trainloader_mode": "Wrap the loaders: `CombinedLoader(loaders, mode='max_size_cycle')`.",
    "terminate_on_nan": "Use `detect_anomaly=True`; a non-finite loss is always reported.",
    "weights_save_path": "Use `callbacks=[ModelCheckpoint(dirpath=...)]` (or `default_root_dir=`).",
    "weights_summary": "Use `enable_model_summary=` or `callbacks=[ModelSummary(max_depth=...)]`.",
    "progress_bar_refresh_rate": "Use `callbacks=[TQDMProgressBar(refresh_rate=...)]`.",
    "process_position": "Use `callbacks=[TQDMProgressBar(process_position=...)]`.",
    "flush_logs_every_n_steps": "Pass it to the logger, e.g. `CSVLogger(save_dir, flush_logs_every_n_steps=...)`.",
    "checkpoint_callback": "Use `enable_checkpointing=`.",
    "stochastic_weight_avg": "Use `callbacks=[StochasticWeightAveraging(swa_lrs=...)]`.",
    "prepare_data_per_node": "Set `self.prepare_data_per_node` on the LightningModule or LightningDataModule.",
    "log_gpu_memory": "Use `callbacks=[DeviceStatsMonitor()]`.",
    "reload_dataloaders_every_epoch": "Use `reload_dataloaders_every_n_epochs=1`.",
    "truncated_bptt_steps": "Split the sequence in `training_step` with manual optimization.",
    "distributed_backend": "Use `strategy=`.",
    "row_log_interval": "Use `log_every_n_steps=`.",
    "log_save_interval": "Pass `flush_logs_every_n_steps=` to the logger.",
    "train_percent_check": "Use `limit_train_batches=`.",
    "val_percent_check": "Use `limit_val_batches=`.",
    "test_percent_check": "Use `limit_test_batches=`.",
    "overfit_pct": "Use `overfit_batches=`.",
}


def trainer_flag_hint(name: str) -> str | None:
    """What to write in 2.x for a removed Trainer flag; None when ``name`` never was one."""
    hint = TRAINER_FLAGS.get(name)
    return f"`Trainer({name}=...)` was removed in Lightning 2.0. {hint}" if hint else None


def _own(obj: Any, name: str, base: type) -> Callable | None:
    """``obj``'s ``name`` when it defines one that ``base`` does not."""
    fn = getattr(obj, name, None)
    return fn if callable(fn) and getattr(base, name, None) is None else None


def _params(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins, some C callables: nothing to check
        return {}


# the removed epoch-end hooks Lightning 2.x refuses, by the stage (TrainerFn value) that would have run them
_FATAL_MODULE_HOOKS: dict[str, tuple[str, ...]] = {
    "fit": ("training_epoch_end", "validation_epoch_end"),
    "validate": ("validation_epoch_end",),
    "test": ("test_epoch_end",),
}

_warned: set[tuple[type, str]] = set()  # (class, hook) already warned about: once per process


def _never_called(obj: Any, owner: str, name: str, hint: str) -> None:
    key = (type(obj), name)
    if key not in _warned:
        _warned.add(key)
        rank_zero_warn(f"{owner} defines `{name}`, a Lightning 1.x hook that 2.x (and fulmen) never call: it will not "
                       f"run. {hint}")


def check_module(model: Any, base: type, stage: str = "fit") -> None:
    """Raise where Lightning 2.x raises for a 1.x hook or signature on ``model``; warn once for the rest."""
    cls = type(model).__name__
    fatal = _FATAL_MODULE_HOOKS.get(stage, ())
    for name, hint in MODULE_HOOKS.items():
        if _own(model, name, base) is None:
            continue
        if name in fatal:
            raise LegacyAPIError(
                f"{cls} defines `{name}`, a Lightning 1.x hook that 2.x (and fulmen) no longer call. {hint}"
            )
        _never_called(model, cls, name, hint)
    if "optimizer_idx" in _params(model.training_step):
        raise LegacyAPIError(
            f"{cls}.training_step takes `optimizer_idx`: the Lightning 1.x way to train several optimizers, removed "
            "in 2.0. Write `training_step(self, batch, batch_idx)`, set `self.automatic_optimization = False` in "
            "__init__, and step each optimizer yourself: `opt_g, opt_d = self.optimizers()`, then "
            "`self.manual_backward(loss)`, `opt_g.step()`, `opt_g.zero_grad()`."
        )
    for name, signature in _OPTIMIZER_IDX_HOOKS.items():
        if is_overridden(name, model, base) and "optimizer_idx" in _params(getattr(model, name)):
            raise LegacyAPIError(
                f"{cls}.{name} takes `optimizer_idx`, its Lightning 1.x signature. In 2.x it is `{signature}`."
            )
    for name in _NO_OUTPUTS_HOOKS:
        _check_no_outputs(model, name, cls, 0, base)


def check_callback(callback: Any, base: type) -> None:
    """Warn once for a removed 1.x hook on ``callback`` (Lightning 2.x skips it and goes on); raise for an
    ``outputs`` parameter, which would fail at the epoch's end."""
    if type(callback).__module__.startswith("fulmen."):
        return  # fulmen's own callbacks are written for 2.x
    cls = type(callback).__name__
    for name, hint in CALLBACK_HOOKS.items():
        if _own(callback, name, base) is not None:
            _never_called(callback, f"Callback {cls}", name, hint)
    for name in _NO_OUTPUTS_HOOKS:
        _check_no_outputs(callback, name, f"Callback {cls}", 2, base)


def _check_no_outputs(obj: Any, name: str, owner: str, skip: int, base: type) -> None:
    """``name`` takes ``skip`` arguments (trainer, pl_module) in 2.x and no outputs: one more required
    positional parameter is the 1.x ``outputs``, which would fail at the epoch's end."""
    if not is_overridden(name, obj, base):  # fulmen's own hooks are 2.x ones: only user code is read
        return
    fn = getattr(obj, name)
    required = [p for p in _params(fn).values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(required) > skip:
        args = "self, trainer, pl_module" if skip else "self"
        raise LegacyAPIError(
            f"{owner}.{name} takes `{required[skip].name}`: in Lightning 1.x it received the epoch's outputs, in 2.x "
            f"it takes none. Write `{name}({args})`. {_OUTPUTS_HINT}"
        )
