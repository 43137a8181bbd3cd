"""``ModelCheckpoint``: save the run every N epochs/steps/minutes, keep the best k by a monitored metric.

File names, best/last bookkeeping, when files are written and which old ones are removed follow
Lightning 2.x, so a run leaves the same files on disk. Paths may be local or fsspec URLs (``memory://``,
``s3://`` ...).
"""

from __future__ import annotations

import os
import re
import time
from copy import deepcopy
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from fulmen import checkpoint as _io
from fulmen._utils import rank_zero_info, rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, MonitorNotFoundError
from fulmen.trainer.state import TrainerFn


class Checkpoint(Callback):
    """Base class of the callbacks that write checkpoints; the Trainer runs them after all other callbacks.

    Example::

        class EveryBatch(fulmen.callbacks.Checkpoint):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                trainer.save_checkpoint(f"ckpts/{trainer.global_step}.ckpt")
    """


class ModelCheckpoint(Checkpoint):
    """Save checkpoints during ``fit``, keeping the ``save_top_k`` best by ``monitor`` (or the latest).

    ``filename`` is a template over the logged metrics plus ``epoch`` and ``step``: ``"{epoch}-{val_loss:.2f}"``
    gives ``epoch=3-val_loss=0.25.ckpt`` (``auto_insert_metric_name=False`` leaves out the ``name=`` parts).
    Without ``dirpath`` files go to ``<log_dir>/checkpoints`` of the first logger, else to
    ``<default_root_dir>/checkpoints``. ``save_last=True`` also keeps ``last.ckpt`` (``"link"``: a symlink to the
    newest file). ``every_n_epochs``, ``every_n_train_steps`` and ``train_time_interval`` say when to save (one of
    them); by default after every epoch. ``save_async=True`` writes the files on a background thread (see
    :class:`~fulmen.checkpoint.AsyncCheckpointIO`), so a large save does not stall training. After fit, ``best_model_path``, ``best_model_score``, ``best_k_models``
    and ``last_model_path`` describe what is on disk, and ``trainer.test(ckpt_path="best")`` uses it.

    Args:
        dirpath: Folder for the files. None: ``<log_dir>/checkpoints`` of the first logger, else
            ``<default_root_dir>/checkpoints``.
        filename: Template for the file names, over ``epoch``, ``step`` and logged metrics, e.g.
            ``"{epoch}-{val_loss:.2f}"``. None: ``"{epoch}-{step}"``.
        monitor: Logged metric that ranks the checkpoints. None: keep the latest ones.
        verbose: Log a line each time a checkpoint is saved or a metric did not improve.
        save_last: Also keep ``last.ckpt``, a copy of the newest checkpoint; ``"link"`` makes it a symlink.
        save_top_k: How many of the best checkpoints to keep; -1 keeps every one, 0 none.
        save_on_exception: Save a checkpoint when fit raises, before the error propagates.
        save_weights_only: Write only the weights (no optimizer, loop or callback states): smaller, but not
            resumable.
        mode: "min" or "max": whether a lower or a higher ``monitor`` is better.
        auto_insert_metric_name: Write ``name=value`` for each field of ``filename``; False writes the values only.
        every_n_train_steps: Save every this many optimizer steps. Mutually exclusive with the other two intervals.
        train_time_interval: Save whenever this much training time has passed.
        every_n_epochs: Save every this many epochs (default 1 when no interval is given).
        save_on_train_epoch_end: Check at the end of the training epoch instead of after validation. None: after
            validation when there is one.
        enable_version_counter: When a file name already exists, add ``-v1``, ``-v2``... instead of overwriting it.
        save_async: Write the files on a background thread so a large save does not stall training.

    Example::

        ckpt = ModelCheckpoint(monitor="val_loss", filename="{epoch}-{val_loss:.2f}", save_top_k=2, save_last=True)
        trainer = fulmen.Trainer(callbacks=[ckpt])
        trainer.fit(model, train_loader, val_loader)
        ckpt.best_model_path  # '.../epoch=7-val_loss=0.21.ckpt'
    """

    _runs_after_module_epoch_end = True
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | str | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        save_async: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            # Lightning's words first in these messages: code and tests match on them
            raise MisconfigurationException(f"`mode` can be min, max but got {mode}. Use mode='min' or mode='max'.")
        if save_last not in (None, True, False, "link"):
            raise MisconfigurationException(f"ModelCheckpoint(save_last={save_last!r}): use True, False or 'link'.")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise MisconfigurationException(
                f"Invalid value for save_top_k={save_top_k!r}. Must be >= -1: -1 keeps all, 0 none, k >= 1 the best k."
            )
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        every_n_epochs, every_n_train_steps = every_n_epochs or 0, every_n_train_steps or 0
        for flag, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if not isinstance(value, int) or value < 0:
                raise MisconfigurationException(f"Invalid value for {flag}={value!r}. Must be >= 0 (an integer).")
        if (every_n_train_steps > 0) + (every_n_epochs > 0) + (train_time_interval is not None) > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={every_n_train_steps}, every_n_epochs={every_n_epochs} "
                f"and train_time_interval={train_time_interval} should be mutually exclusive. Pick one of them to say "
                "when to save."
            )
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration. No quantity "
                "for top_k to track: it needs a `monitor` to rank checkpoints by. Pass monitor='val_loss' (say), or "
                "save_top_k=-1 to keep every checkpoint."
            )
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._every_n_train_steps = every_n_train_steps
        self._every_n_epochs = every_n_epochs
        self._train_time_interval = train_time_interval
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        if dirpath is not None:
            dirpath = os.fspath(dirpath)
            if _io.is_local(dirpath):
                dirpath = os.path.realpath(os.path.expanduser(dirpath))
        self.dirpath: str | None = dirpath
        self.filename = filename
        self.kth_value: Tensor = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        self.current_score: Tensor | None = None
        self.best_k_models: dict[str, Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self._last_checkpoint_saved = ""
        self._last_global_step_saved = 0  # nothing to save before the first step
        self._last_time_checked: float | None = None
        self._save_after_validation = False  # a step/time save that waits for a validation-only metric
        self.save_async = save_async
        self._async_io: Any = None  # the background writer when save_async=True (made in setup)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    # -- hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.save_async and self._async_io is None:
            self._async_io = _io.AsyncCheckpointIO(trainer.strategy.checkpoint_io)
        self.dirpath = trainer.strategy.broadcast(self._resolve_dirpath(trainer))
        if trainer.is_global_zero and stage == "fit":  # partial files of saves a killed run did not finish
            _io.remove_stale_temp_files(self.dirpath)
        if (trainer.is_global_zero and stage == "fit" and self.save_top_k != 0 and not trainer.ckpt_path
                and self._dir_has_files()):  # resuming into the same folder is expected
            rank_zero_warn(f"Checkpoint directory {self.dirpath} exists and is not empty.")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_time_checked = time.monotonic()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self._every_n_train_steps
        due_by_steps = every >= 1 and trainer.global_step % every == 0
        due_by_time = False
        if self._train_time_interval is not None:
            now = time.monotonic()
            last = self._last_time_checked
            due_by_time = last is not None and now - last >= self._train_time_interval.total_seconds()
            due_by_time = trainer.strategy.broadcast(due_by_time)
            if due_by_time:
                self._last_time_checked = now
        if not (due_by_steps or due_by_time):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and (self.monitor not in candidates or self._validation_follows(trainer)):
            self._save_after_validation = True  # the metric comes (fresh) from the validation about to run
            return
        if self._skip_saving(trainer):
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._skip_saving(trainer) and self._save_at_train_epoch_end(trainer):
            self._save_for_epoch(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._skip_saving(trainer) or self._save_at_train_epoch_end(trainer):
            return
        if self._save_after_validation:
            self._save_after_validation = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            return
        self._save_for_epoch(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.save_last and not self._last_checkpoint_saved and trainer.global_step > 0 and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if (not self.save_on_exception or trainer.fast_dev_run or trainer.sanity_checking
                or self._last_global_step_saved == trainer.global_step):
            return
        candidates = self._monitor_candidates(trainer)
        path = self.format_checkpoint_name(candidates)
        self._save_checkpoint(trainer, path)
        self._save_last_checkpoint(trainer, candidates)
        if self.verbose:
            rank_zero_info(f"{type(exception).__name__}: {exception}; saved checkpoint to {path}")

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "best_model_score": self.best_model_score, "best_model_path": self.best_model_path,
            "current_score": self.current_score, "dirpath": self.dirpath, "best_k_models": self.best_k_models,
            "kth_best_model_path": self.kth_best_model_path, "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath", self.dirpath)
        if saved_dir == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", self.best_k_models))
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        else:
            rank_zero_warn(
                f"ModelCheckpoint's dirpath changed from {saved_dir!r} to {self.dirpath!r}, so only best_model_path "
                "is restored from the checkpoint (not best_model_score, best_k_models or last_model_path)."
            )
        self.best_model_path = state_dict["best_model_path"]

    # -- when to save -----------------------------------------------------------------------------
    def _skip_saving(self, trainer: Any) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _save_at_train_epoch_end(self, trainer: Any) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1 or trainer._val_check_seconds is not None:
            return False  # validation decides when to save (a time-based interval: after each validation)
        if sum(trainer.num_val_batches or []) == 0 or not trainer.enable_validation:
            return True
        return trainer.val_check_interval == 1.0

    def _validation_follows(self, trainer: Any) -> bool:
        """Whether validation runs right after this (last) batch and the save should wait for its metrics."""
        if self._save_at_train_epoch_end(trainer) or not trainer.is_last_batch or not trainer.enable_validation:
            return False
        every = trainer.check_val_every_n_epoch
        return every is None or (trainer.current_epoch + 1) % every == 0

    def _save_for_epoch(self, trainer: Any) -> None:
        candidates = self._monitor_candidates(trainer)
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_topk_checkpoint(trainer, candidates)
        if self._last_global_step_saved == trainer.global_step or (self.save_last == "link" and self._last_checkpoint_saved):
            self._save_last_checkpoint(trainer, candidates)

    # -- what to save -----------------------------------------------------------------------------
    def _monitor_candidates(self, trainer: Any) -> dict[str, Tensor]:
        candidates = deepcopy(trainer.callback_metrics)
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def _save_topk_checkpoint(self, trainer: Any, candidates: dict[str, Tensor]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            path = self._free_path(trainer, candidates, self.best_model_path)
            previous = self.best_model_path
            self._save_checkpoint(trainer, path)  # bookkeeping changes only once the file is written
            self.best_model_path = path
            if self.save_top_k == 1 and previous and self._may_remove(trainer, previous, path):
                self._remove(trainer, previous)
            return
        if self.monitor not in candidates:
            logged = sorted(k for k in candidates if k not in ("epoch", "step"))
            raise MonitorNotFoundError(
                f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned "
                f"metrics: {logged}. HINT: Did you call `log({self.monitor!r}, value)` in the `LightningModule`? "
                f"Log it with `self.log({self.monitor!r}, value)` (in validation_step for a validation metric), or "
                "monitor one of those."
            )
        current = candidates[self.monitor]
        if self.check_monitor_top_k(trainer, current):
            self._update_best_and_save(current, trainer, candidates)
        elif self.verbose:
            rank_zero_info(f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}: "
                           f"{self.monitor!r} was not in top {self.save_top_k}")

    def check_monitor_top_k(self, trainer: Any, current: Tensor | None = None) -> bool:
        """Whether ``current`` earns a place among the best k checkpoints."""
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        better = torch.lt if self.mode == "min" else torch.gt
        decision = bool(better(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(decision)

    def _update_best_and_save(self, current: Tensor, trainer: Any, candidates: dict[str, Tensor]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        best_k = dict(self.best_k_models)  # committed only once the file is written: a failed save changes nothing
        dropped = None
        if len(best_k) == k:
            dropped = self.kth_best_model_path
            best_k.pop(dropped)
        if torch.isnan(current):  # a NaN never ranks as best
            current = torch.tensor(float("inf") if self.mode == "min" else float("-inf"), device=current.device)
        path = self._free_path(trainer, candidates, dropped)
        best_k[path] = current
        best = min if self.mode == "min" else max
        best_path = best(best_k, key=best_k.get)
        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}: {self.monitor!r} reached "
                f"{float(current):0.5f} (best {float(best_k[best_path]):0.5f}), saving model to {path!r} as top {k}"
            )
        self._save_checkpoint(trainer, path)
        self.current_score = current
        self.best_k_models = best_k
        if len(best_k) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(best_k, key=best_k.get)
            self.kth_value = best_k[self.kth_best_model_path]
        self.best_model_path, self.best_model_score = best_path, best_k[best_path]
        if dropped and self._may_remove(trainer, dropped, path):
            self._remove(trainer, dropped)

    def _save_last_checkpoint(self, trainer: Any, candidates: dict[str, Tensor]) -> None:
        if not self.save_last:
            return
        path = self._free_path(trainer, candidates, self.last_model_path, self.CHECKPOINT_NAME_LAST)
        previous = self.last_model_path
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            trainer._flush_checkpoints()  # link to a file that is on disk
            if trainer.is_global_zero:
                _io.link_or_copy(self._last_checkpoint_saved, path)
            trainer.strategy.barrier("ModelCheckpoint.link")
        else:
            self._save_checkpoint(trainer, path)
        self.last_model_path = path
        if previous and self._may_remove(trainer, previous, path):
            self._remove(trainer, previous)

    def _save_checkpoint(self, trainer: Any, path: str) -> None:
        if self._async_io is not None:
            trainer._save_checkpoint_async(path, self.save_weights_only, self._async_io)
        else:
            trainer.save_checkpoint(path, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = path
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def _remove(self, trainer: Any, path: str) -> None:
        if self._async_io is not None:
            if trainer.is_global_zero:
                self._async_io.remove_checkpoint(path)  # after the write of its replacement is on disk
        else:
            trainer.strategy.remove_checkpoint(path)

    def _may_remove(self, trainer: Any, previous: str, current: str) -> bool:
        """Remove an old checkpoint only when it is ours: in dirpath, not the one this run resumed from."""
        if previous == current:
            return False
        if not _io.is_local(previous):
            return True
        previous = os.path.abspath(previous)
        resumed_from = trainer.ckpt_path
        if resumed_from is not None and _io.is_local(resumed_from) and previous == os.path.abspath(resumed_from):
            return False
        return os.path.commonpath([previous, os.path.abspath(self.dirpath)]) == os.path.abspath(self.dirpath)

    # -- names ------------------------------------------------------------------------------------
    def _free_path(self, trainer: Any, candidates: dict[str, Tensor], replaceable: str | None,
                   filename: str | None = None) -> str:
        """The formatted name, with ``-v1``, ``-v2`` ... appended while a file of that name exists."""
        path = self.format_checkpoint_name(candidates, filename)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while path != replaceable and self.file_exists(path, trainer):
                path = self.format_checkpoint_name(candidates, filename, ver=version)
                version += 1
        return path

    def _fill_template(self, template: str | None, metrics: dict[str, Any], prefix: str | None = None) -> str:
        template = template or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        names = sorted({m[1:] for m in re.findall(r"(\{.*?)[:}]", template)}, key=len, reverse=True)
        for name in names:  # longest first, so "{epoch}" does not clobber "{epoch_acc}"
            head = name + self.CHECKPOINT_EQUALS_CHAR if self.auto_insert_metric_name else ""
            # "{0[name]}" lets names contain dots and slashes
            template = template.replace("{" + name, head + "{0[" + name + "]")
            metrics.setdefault(name, torch.tensor(0))
        name = template.format(metrics)
        return self.CHECKPOINT_JOIN_CHAR.join([prefix, name]) if prefix else name

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        """The checkpoint path the template gives for ``metrics``.

        Example::

            ModelCheckpoint(dirpath="ckpts", filename="{epoch}-{val_loss:.2f}").format_checkpoint_name(
                {"epoch": 2, "val_loss": 0.1234})  # 'ckpts/epoch=2-val_loss=0.12.ckpt'
        """
        name = self._fill_template(filename or self.filename, dict(metrics), prefix)
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        name += self.FILE_EXTENSION
        return _join(self.dirpath, name) if self.dirpath else name

    def file_exists(self, filepath: str, trainer: Any) -> bool:
        """Whether ``filepath`` exists (decided on rank zero, the same on every rank)."""
        found = _io.exists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.reduce_boolean_decision(found, all=False)

    def to_yaml(self, filepath: str | None = None) -> None:
        """Write ``best_k_models`` (path -> score) as YAML, by default to ``<dirpath>/best_k_models.yaml``."""
        import yaml

        filepath = filepath or _join(self.dirpath, "best_k_models.yaml")
        with _io.get_filesystem(filepath).open(filepath, "w") as f:
            yaml.dump({k: float(v) for k, v in self.best_k_models.items()}, f)

    def _resolve_dirpath(self, trainer: Any) -> str:
        if self.dirpath is not None:
            return self.dirpath
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            return _join(save_dir, str(logger.name or ""), version, "checkpoints")
        return _join(trainer.default_root_dir, "checkpoints")

    def _dir_has_files(self) -> bool:
        try:
            if _io.is_local(self.dirpath):
                return os.path.isdir(self.dirpath) and bool(os.listdir(self.dirpath))
            fs = _io.get_filesystem(self.dirpath)
            return fs.isdir(self.dirpath) and bool(fs.ls(self.dirpath))
        except OSError:
            return False


def _join(base: str, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/`` for URLs; empty parts are dropped."""
    parts = tuple(p for p in parts if p)
    if _io.is_local(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *parts])


def _reorder(callbacks: list[Callback]) -> list[Callback]:
    """Checkpoint callbacks run last, so they see what every other callback did first."""
    return [cb for cb in callbacks if not isinstance(cb, Checkpoint)] + [
        cb for cb in callbacks if isinstance(cb, Checkpoint)
    ]
