"""What a checkpoint holds, and putting a run back from one: the module, the callbacks, the optimizers and
schedulers, the precision plugin and the resumable ``LoopState`` (with the training loader's own state, its
workers' random streams and the epoch's logged values so far), in Lightning's layout.
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor

from fulmen.trainer import data as _data
from fulmen.trainer.state import LoopState
from fulmen._utils import collect_rng_states, is_overridden, rank_zero_info, rank_zero_warn, restore_rng_states


def restore_first_valid(trainer: Any, paths: list[str], weights_only: bool | None,
                         announce: bool) -> dict[str, Any] | None:
    """Restore the first of ``paths`` that loads; with several (``"last"``), a damaged one is skipped by name.
    ``announce``: say which file a ``"last"``/``"hpc"``/``"best"`` resolved to."""
    from fulmen.errors import CheckpointCorruptedError

    for path in paths:
        try:
            checkpoint = restore_checkpoint(trainer, path, weights_only, True)
        except CheckpointCorruptedError as err:
            if len(paths) == 1:
                raise
            rank_zero_warn(f'ckpt_path="last" skips a damaged checkpoint: {err}')
            continue
        trainer.ckpt_path = path
        if announce:
            rank_zero_info(f"Resuming from {path} (global step {trainer.global_step}).")
        return checkpoint
    rank_zero_info('ckpt_path="last": every checkpoint of this run is damaged, so training starts from scratch.')
    trainer.ckpt_path = None
    return None


def dump_checkpoint(trainer: Any, weights_only: bool = False) -> dict[str, Any]:
    """The whole resumable state of the run, as one dict (Lightning's layout plus fulmen's loop state)."""
    from fulmen._version import __version__

    module = trainer.lightning_module
    checkpoint: dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": "2.5.0",  # lets Lightning's own loaders read fulmen checkpoints
        "fulmen_version": __version__,
        "fulmen_saved_at": time.time(),  # ranks checkpoints for ckpt_path="last" (with global_step)
        "state_dict": trainer.strategy.lightning_module_state_dict(),
        "loops": {"fulmen": _loop_state_for_save(trainer)},
    }
    if not weights_only:
        checkpoint["rng_states"] = collect_rng_states()
        if trainer.world_size > 1:
            # each rank draws its own random numbers (dropout, loader seeds) and sums its own share of the epoch's
            # logged values and metric states (synced only when reported): keep them all
            own = checkpoint["loops"]["fulmen"]
            checkpoint["rng_states_per_rank"] = trainer.strategy.all_gather_object(
                {"rng_states": checkpoint["rng_states"], "epoch_start_rng": trainer._loop.epoch_start_rng,
                 "worker_streams": own["worker_streams"], "epoch_metrics": own.get("epoch_metrics"),
                 "metric_states": own.get("metric_states")})
        checkpoint["callbacks"] = {cb.state_key: state for cb in trainer.callbacks if (state := cb.state_dict())}
        checkpoint["optimizer_states"] = [trainer.strategy.optimizer_state(o) for o in trainer.optimizers]
        checkpoint["lr_schedulers"] = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
        precision = trainer.strategy.precision
        if precision_state := precision.state_dict():  # under the plugin's class name, as Lightning writes it
            checkpoint[type(precision).__qualname__] = precision_state
    dm = trainer.datamodule
    for prefix, owner in (("", module), ("datamodule_", dm)):  # "hyper_parameters", "datamodule_hyper_parameters"
        if owner is not None and owner.hparams:
            checkpoint[f"{prefix}hparams_name"] = getattr(owner, "_hparams_name", None) or "kwargs"
            checkpoint[f"{prefix}hyper_parameters"] = owner._hparams_to_save()
    if dm is not None and not weights_only and (state := dm.state_dict()):
        checkpoint[type(dm).__qualname__] = state
    if not weights_only:
        for cb in trainer.callbacks:
            if is_overridden("on_save_checkpoint", cb, type(cb).__mro__[-2]):
                cb.on_save_checkpoint(trainer, module, checkpoint)
    module.on_save_checkpoint(checkpoint)
    if dm is not None:
        dm.on_save_checkpoint(checkpoint)
    return checkpoint


def _loop_state_for_save(trainer: Any) -> dict[str, Any]:
    """The loop state, with what the training loader holds at this moment (its own state mid-epoch, the
    current state of its random generators)."""
    loop = trainer._loop
    loader = trainer._train_iterable if trainer.train_dataloader is not None else None
    mid_epoch = loop.batches_in_epoch > 0 and not loop.epoch_loop_done
    loop.loader_state = _data.loader_state(loader) if loader is not None and mid_epoch else None
    loop.loader_generators = _data.generator_states(loader) if loader is not None else None
    loop.worker_streams = {key: saved for key, streams in trainer._worker_streams.items()
                           if (saved := streams.saved()) is not None} or None
    if mid_epoch:  # the epoch's logged values so far, so its epoch means come out as without the interruption
        loop.epoch_metrics = trainer._metrics.train.accumulators(trainer.lightning_module)
        loop.metric_states = _metric_states(trainer)
        if trainer._step_row_due and trainer.loggers:  # saved in a batch-end hook
            loop.pending_step_row = trainer._metrics.pending_train_row(loop.batches_stepped - 1)
    loop.val_pending = trainer._val_due
    if trainer.is_global_zero:  # loggers write on rank zero, which also writes the checkpoint
        loop.logger_states = [lg._resume_state() if hasattr(lg, "_resume_state") else None for lg in trainer.loggers]
    try:
        return loop.state_dict()
    finally:
        loop.loader_state = loop.loader_generators = loop.epoch_metrics = loop.metric_states = None
        loop.logger_states = loop.pending_step_row = loop.worker_streams = None
        loop.val_pending = False


def _metric_states(trainer: Any) -> dict[str, Any] | None:
    """The state of each torchmetrics Metric logged this epoch, by its attribute path in the module."""
    logged = {id(slot.metric) for slot in trainer._metrics.train.slots.values() if slot.metric is not None}
    if not logged:
        return None
    return {
        name: {"states": {k: getattr(m, k) for k in m._defaults}, "update_count": m._update_count}
        for name, m in trainer.lightning_module.named_modules() if id(m) in logged
    }


def _resume_epoch_metrics(trainer: Any, loop: LoopState) -> None:
    if loop.epoch_metrics:
        trainer._metrics.train.load_accumulators(loop.epoch_metrics, trainer.lightning_module,
                                                 trainer.strategy.root_device)
    if loop.metric_states:
        modules = dict(trainer.lightning_module.named_modules())
        for name, saved in loop.metric_states.items():
            metric = modules.get(name)
            if metric is None:
                continue
            for key, value in saved["states"].items():
                if isinstance(value, Tensor):
                    value = value.to(metric.device)
                elif isinstance(value, list):
                    value = [v.to(metric.device) if isinstance(v, Tensor) else v for v in value]
                setattr(metric, key, value)
            metric._update_count = saved["update_count"]
            metric._computed = None
    for lg, state in zip(trainer.loggers, loop.logger_states or []):
        if state is not None and hasattr(lg, "_resume_from"):
            lg._resume_from(state)
    if loop.pending_step_row is not None:  # the row of the batch the checkpoint was written after
        trainer._metrics.send_row(*loop.pending_step_row)
    loop.epoch_metrics = loop.metric_states = loop.logger_states = loop.pending_step_row = None


def restore_checkpoint(trainer: Any, path: Any, weights_only: bool | None, training: bool) -> dict[str, Any]:
    """Load ``path`` into the module (and, when fitting, the callbacks, optimizers, schedulers and loop)."""
    from fulmen.errors import CheckpointError

    # said once the file is read: a missing or unreadable path raises without claiming a restore began
    checkpoint = trainer.strategy.load_checkpoint(path, weights_only=weights_only)
    rank_zero_info(f"Restoring states from the checkpoint path at {path}")
    if "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} has no 'state_dict', so it is not a fulmen/Lightning checkpoint. For a plain state_dict use "
            "model.load_state_dict(torch.load(path))."
        )
    module = trainer.lightning_module
    module.on_load_checkpoint(checkpoint)
    trainer.strategy.load_model_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    dm = trainer.datamodule
    if dm is not None:
        dm.on_load_checkpoint(checkpoint)
        if type(dm).__qualname__ in checkpoint:
            dm.load_state_dict(checkpoint[type(dm).__qualname__])
    if not training:
        return checkpoint
    states = checkpoint.get("callbacks", {})
    for cb in trainer.callbacks:
        cb.on_load_checkpoint(trainer, module, checkpoint)
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])
    saved_opts = checkpoint.get("optimizer_states")
    if saved_opts is None:
        raise CheckpointError(
            f"{path} holds weights only (no optimizer state), so training cannot resume from it exactly. Load the "
            "weights with Module.load_from_checkpoint and start a new fit, or pass a full checkpoint."
        )
    if len(saved_opts) != len(trainer.optimizers):
        raise CheckpointError(
            f"{path} has {len(saved_opts)} optimizer state(s) but configure_optimizers returned "
            f"{len(trainer.optimizers)}. Resume with the same optimizer set-up."
        )
    for opt, state in zip(trainer.optimizers, saved_opts):
        trainer.strategy.load_optimizer_state_dict(opt, state)
    for cfg, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(state)
    precision = trainer.strategy.precision
    if type(precision).__qualname__ in checkpoint:
        precision.load_state_dict(checkpoint[type(precision).__qualname__])
    loop_state = checkpoint.get("loops", {}).get("fulmen")
    trainer._loop = LoopState()
    if loop_state is not None:
        trainer._loop.load_state_dict(loop_state)
    else:  # a Lightning checkpoint: continue with the first epoch it had not processed (from its start)
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        processed = fit_loop.get("epoch_progress", {}).get("current", {}).get("processed")
        trainer._loop.epoch = checkpoint.get("epoch", 0) + 1 if processed is None else processed
        trainer._loop.global_step = checkpoint.get("global_step", 0)
        stepped = fit_loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
        trainer._loop.batches_stepped = trainer._loop.global_step if stepped is None else stepped
    per_rank = checkpoint.get("rng_states_per_rank")
    saved_world = len(per_rank) if per_rank is not None else 1
    if saved_world != trainer.world_size:
        # another number of processes: a rank that existed takes its own states and share of the epoch's logged
        # sums, a new one starts with none; the loader workers start fresh (trainer/elastic.py moves the data)
        trainer._loop.worker_streams = None
        if trainer.global_rank >= saved_world:
            trainer._loop.epoch_metrics = trainer._loop.metric_states = None
    if per_rank is not None and trainer.global_rank < saved_world:
        own = per_rank[trainer.global_rank]
        restore_rng_states(own["rng_states"])
        trainer._loop.epoch_start_rng = own["epoch_start_rng"]
        if saved_world == trainer.world_size:
            trainer._loop.worker_streams = own.get("worker_streams")
        for key in ("epoch_metrics", "metric_states"):  # this rank's share, not rank zero's (older files lack it)
            if key in own:
                setattr(trainer._loop, key, own[key])
    elif "rng_states" in checkpoint and trainer.global_rank < saved_world:
        restore_rng_states(checkpoint["rng_states"])
    _resume_epoch_metrics(trainer, trainer._loop)
    # the loaders' workers continue their random streams when their first iterator is made
    trainer._worker_streams = {"train": _data._WorkerStreams()}
    for key, saved in (trainer._loop.worker_streams or {}).items():
        trainer._worker_streams[key] = _data._WorkerStreams(pending=saved)
    trainer._loop.worker_streams = None
    return checkpoint
