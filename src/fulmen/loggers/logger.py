"""The logger interface the trainer talks to, and the helpers every logger shares.

The trainer calls loggers on global rank zero only. Each logger creates its backend object
(``experiment``) lazily, on first use, so building one is cheap and touches no files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from fulmen.errors import missing_extra
from fulmen.saving import _filesystem, _scalar


class Logger(ABC):
    """Base class of every logger: where metrics and hyperparameters go.

    A subclass implements ``name``, ``version``, ``log_metrics`` and ``log_hyperparams``;
    everything else has a sensible default.

    Example::

        class PrintLogger(Logger):
            name, version = "print", 0

            def log_metrics(self, metrics, step=None):
                print(step, metrics)

            def log_hyperparams(self, params, *args, **kwargs):
                print(params)

        trainer = Trainer(logger=PrintLogger())
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name; checkpoints go under ``save_dir/name/version``."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The run's version inside the experiment (a number, or a string such as a run id)."""

    @property
    def root_dir(self) -> str | None:
        """The folder holding all versions of this experiment, if the logger writes locally."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder this run writes to, if the logger writes locally."""
        return None

    @property
    def save_dir(self) -> str | None:
        """The folder that holds the experiment folders, if the logger writes locally."""
        return None

    @property
    def experiment(self) -> Any:
        """The backend object (a writer, a client, a run), created on first access."""
        return None

    @property
    def group_separator(self) -> str:
        """What joins nested names, such as ``"a/b"`` for ``{"a": {"b": 1}}``."""
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record scalar ``metrics`` at ``step`` (the trainer's global step)."""

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters."""

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Record the model's computational graph; most loggers ignore it."""

    def save(self) -> None:
        """Write out anything buffered."""

    def finalize(self, status: str) -> None:
        """The run ended with ``status`` ("success", "failed" or "interrupted"): flush and close."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after the checkpoint callback saved a file; loggers that upload models use it."""


class _VersionedLogger(Logger):
    """A logger that writes into ``save_dir/name/version_N``: the folder scheme CSV and TensorBoard share."""

    def _init_folders(self, save_dir: str | os.PathLike, name: str | None, version: int | str | None) -> None:
        self._fs, self._save_dir = _filesystem(save_dir)
        self._name = name or ""
        self._version = version

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(self._fs, self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return _join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        return _join(self.root_dir, _version_dir(self.version))


class DummyLogger(Logger):
    """A logger that records nothing; what ``fast_dev_run`` uses so that no files are written.

    Example::

        logger = DummyLogger()
        logger.log_metrics({"loss": 1.0}, step=0)  # does nothing
    """

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def experiment(self) -> DummyExperiment:
        return DummyExperiment()

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getitem__(self, index: int) -> DummyLogger:
        # lets code written for `trainer.logger[0]` keep working
        return self

    def __getattr__(self, name: str) -> Any:
        # any other logger method (log_image, watch, ...) is accepted and ignored
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class DummyExperiment:
    """The experiment of :class:`DummyLogger`: every method call, index and assignment is accepted and ignored.

    Example::

        exp = DummyExperiment()
        exp.add_image("x", image)   # does nothing
        exp["key"] = 1              # does nothing
    """

    def nop(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing."""

    def __getattr__(self, _: str) -> Any:
        return lambda *args, **kwargs: None

    def __getitem__(self, index: Any) -> DummyExperiment:
        return self

    def __setitem__(self, *args: Any) -> None:
        pass


# ----------------------------------------------------------------------------- rank zero


def _global_rank() -> int:
    """This process's global rank: what the strategy recorded, else (before that) the launcher's environment."""
    from fulmen._utils import rank_zero_only  # here, to keep torch off import time

    return int(rank_zero_only.rank)


def rank_zero_experiment(fn: Any) -> Any:
    """Decorate a logger's ``experiment`` getter: other ranks get an object that ignores every call.

    User code such as ``self.logger.experiment.add_image(...)`` then runs unchanged under DDP without
    every process opening its own run.

    Example::

        class MyLogger(Logger):
            @property
            @rank_zero_experiment
            def experiment(self):
                return open_run()
    """

    @functools.wraps(fn)
    def get(self: Any) -> Any:
        return fn(self) if _global_rank() == 0 else DummyExperiment()

    return get


def _rank_zero_only(fn: Any) -> Any:
    """Run a logger method on global rank zero only; elsewhere it does nothing."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if _global_rank() == 0 else None

    return wrapped


# ----------------------------------------------------------------------------- helpers


def _convert_params(params: Mapping[str, Any] | argparse.Namespace | None) -> dict[str, Any]:
    """Turn what users pass as hyperparameters (dict, Namespace, None) into a plain dict."""
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    return dict(params)


def _flatten_dict(params: Mapping[Any, Any], delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """Flatten nested dicts, Namespaces and dataclass instances into ``"a/b"`` keys.

    Example::

        _flatten_dict({"a": {"b": 1}, "c": 2})  # {"a/b": 1, "c": 2}
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent_key}{delimiter}{key}" if parent_key else str(key)
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, MutableMapping) and value:
            flat.update(_flatten_dict(value, delimiter, name))
        else:
            flat[name] = value
    return flat


def _sanitize_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Keep bool/int/float/str values (unwrapping scalar tensors); anything else becomes its ``str``.

    Backends such as TensorBoard's hparams plugin accept only these types. A callable is recorded
    by its name rather than called: calling user code while logging could have side effects.
    """
    clean: dict[str, Any] = {}
    for key, value in params.items():
        value = _scalar(value)
        if isinstance(value, (bool, int, float, str)):
            clean[key] = value
        elif callable(value) and hasattr(value, "__qualname__"):
            clean[key] = value.__qualname__
        else:
            clean[key] = str(value)
    return clean


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    """Prepend ``prefix + separator`` to every key; no-op for an empty prefix."""
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def _next_version(fs: Any, root_dir: str) -> int:
    """One more than the highest ``version_N`` folder in ``root_dir`` (0 when there is none)."""
    try:
        entries = fs.listdir(root_dir, detail=True)
    except (FileNotFoundError, OSError):
        return 0
    versions = []
    for entry in entries:
        base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and base.startswith("version_") and base[8:].isdigit():
            versions.append(int(base[8:]))
    return max(versions) + 1 if versions else 0


def _version_dir(version: int | str) -> str:
    """A version as its folder name: ``3`` -> ``version_3``, a string as is."""
    return version if isinstance(version, str) else f"version_{version}"


def _join(*parts: str) -> str:
    """Join path parts, skipping empty ones; URLs (``memory://...``) always use ``/``."""
    parts = [str(p) for p in parts if p]
    if "://" in parts[0]:
        return "/".join([parts[0].rstrip("/"), *(p.strip("/") for p in parts[1:])])
    return os.path.join(*parts)


def _module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (``sys.modules[name] = None`` counts as missing)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require(module: str, package: str, extra: str, feature: str) -> None:
    """Fail early, with the install command, when an optional backend is missing."""
    if not _module_available(module):
        raise missing_extra(package, extra, feature)


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- checkpoint upload


def _checkpoints_to_upload(callback: Any, uploaded: dict[str, float]) -> list[tuple[float, str, Any, bool]]:
    """Checkpoint files of ``callback`` that are new or changed since they were uploaded.

    Returns ``(mtime, path, score, is_best)`` tuples, oldest first, so that "latest" ends up on the
    newest file. ``uploaded`` maps path -> mtime of what was already sent.
    """
    scores: dict[str, Any] = {}
    if getattr(callback, "last_model_path", ""):
        scores[callback.last_model_path] = getattr(callback, "current_score", None)
    if getattr(callback, "best_model_path", ""):
        scores[callback.best_model_path] = getattr(callback, "best_model_score", None)
    scores.update(getattr(callback, "best_k_models", None) or {})
    best = getattr(callback, "best_model_path", "")
    found = []
    for path, score in scores.items():
        if path and os.path.isfile(path):
            mtime = os.path.getmtime(path)
            if path not in uploaded or uploaded[path] < mtime:
                found.append((mtime, path, _scalar(score), path == best))
    return sorted(found, key=lambda item: (item[0], item[1]))


def _scan_checkpoints(checkpoint_callback: Any, logged_model_time: dict[str, float]) -> list[tuple[float, str, Any, str]]:
    """Lightning's helper for loggers that upload checkpoints: the callback's files that are new or changed since
    ``logged_model_time`` (path -> mtime of what was uploaded), oldest first, as ``(mtime, path, score, tag)``
    with ``tag`` one of ``"latest"``, ``"best"``, ``"best_k"`` (the most specific that applies).

    Example (a logger written for Lightning)::

        for mtime, path, score, tag in _scan_checkpoints(callback, self._logged_model_time):
            self.experiment.log_artifact(path, aliases=["latest", "best"] if tag == "best" else ["latest"])
            self._logged_model_time[path] = mtime
    """
    best_k = getattr(checkpoint_callback, "best_k_models", None) or {}
    found = []
    for mtime, path, _, is_best in _checkpoints_to_upload(checkpoint_callback, logged_model_time):
        if path in best_k:
            found.append((mtime, path, best_k[path], "best_k"))
        elif is_best:
            found.append((mtime, path, getattr(checkpoint_callback, "best_model_score", None), "best"))
        else:
            found.append((mtime, path, getattr(checkpoint_callback, "current_score", None), "latest"))
    return found


def _checkpoint_metadata(callback: Any, path: str, score: Any) -> dict[str, Any]:
    """What is stored next to an uploaded checkpoint: its score, file name and the callback's settings."""
    settings = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")
    return {
        "score": score,
        "original_filename": Path(path).name,
        type(callback).__name__: {k: getattr(callback, k) for k in settings if hasattr(callback, k)},
    }


class _UploadsCheckpoints(Logger):
    """A logger with ``log_model``: ``"all"`` (or ``True`` when every checkpoint is kept) uploads at each save,
    ``True`` remembers the callback for ``finalize``; the subclass supplies ``_upload_checkpoints``."""

    @_rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        log_model = self._log_model
        if log_model == "all" or (log_model is True and getattr(checkpoint_callback, "save_top_k", None) == -1):
            self._upload_checkpoints(checkpoint_callback)
        elif log_model is True:
            self._checkpoint_callback = checkpoint_callback
