"""TensorBoardLogger: scalars, hyperparameters and the model graph as TensorBoard event files.

Needs the ``tensorboard`` package (``pip install 'fulmen[tensorboard]'``). Layout::

    save_dir/name/version_0[/sub_dir]/events.out.tfevents.*
    save_dir/name/version_0[/sub_dir]/hparams.yaml
"""

from __future__ import annotations

import os
import warnings
from argparse import Namespace
from typing import Any

from fulmen.errors import missing_extra
from fulmen.loggers.logger import (
    _VersionedLogger,
    _rank_zero_only,
    rank_zero_experiment,
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _join,
    _module_available,
    _require,
    _sanitize_params,
    _scalar,
    _warn,
)
from fulmen.saving import _write_hparams_yaml


class TensorBoardLogger(_VersionedLogger):
    """Log to TensorBoard event files with ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        save_dir: Folder that holds the experiment folders.
        name: Experiment folder name; ``""`` or ``None`` writes versions directly into ``save_dir``.
        version: An int gives ``version_<int>``, a string is used as the folder name; ``None`` picks the
            next free ``version_N``.
        log_graph: Record the model graph (traced from ``input_array`` or ``model.example_input_array``).
        default_hp_metric: When hyperparameters are logged without metrics, log ``hp_metric = -1`` so the
            HPARAMS tab shows the run; log ``"hp_metric"`` yourself to give it a real value.
        prefix: Prepended to every metric name, joined with ``-``.
        sub_dir: Extra folder under the version folder, e.g. to keep train and eval event files apart.
        **kwargs: Passed on to ``SummaryWriter`` (``flush_secs``, ``max_queue`` ...).

    Example::

        logger = TensorBoardLogger("tb_logs", name="mnist")
        trainer = Trainer(logger=logger)
        # then: tensorboard --logdir tb_logs
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        # fail at construction, not at the first logged step deep inside fit; tensorboardX serves too, as in Lightning
        if not _module_available("tensorboardX"):
            _require("tensorboard", "tensorboard", "tensorboard", "TensorBoardLogger")
        self._init_folders(save_dir, name, version)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: Any = None
        self._events: Any = None  # the light scalar/hparams writer (see _tfevents), made on first log
        self.hparams: dict[str, Any] = {}
        self._hparams_dirty = False

    @property
    def log_dir(self) -> str:
        return _join(super().log_dir, os.path.expanduser(os.path.expandvars(self._sub_dir or "")))

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``SummaryWriter``, created (with its folder) on first access."""
        if self._experiment is None:
            SummaryWriter = _writer_module().SummaryWriter
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @_rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace,
        metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        """Record hyperparameters for the HPARAMS tab, with ``metrics`` as their result columns.

        TensorBoard reads one set of hparams per event file: log them once per run.
        """
        params = _convert_params(params)
        self.hparams.update(params)
        self._hparams_dirty = True
        if metrics is None and self._default_hp_metric:
            metrics = {"hp_metric": -1}
        if metrics:
            self.log_metrics(metrics, step or 0)

        # written into this run's own folder: SummaryWriter.add_hparams would start a separate run
        clean = _sanitize_params(_flatten_dict(params))
        events = self._event_writer()
        if events is not None:
            events.add_hparams(clean, dict(metrics or {}))
            return
        experiment, start, end = _writer_module().summary.hparams(clean, dict(metrics or {}))
        writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)

    @_rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        events = self._event_writer()
        for key, value in metrics.items():
            value = _scalar(value)
            try:
                if isinstance(value, dict):
                    self.experiment.add_scalars(key, value, step)
                elif events is not None:
                    events.add_scalar(key, value, step)
                else:
                    self.experiment.add_scalar(key, value, step)
            except Exception as err:  # noqa: BLE001 - re-raised with the metric's name
                raise ValueError(
                    f"TensorBoard cannot log metric {key!r} = {value!r}: {err}. Log a number or a one-element tensor."
                ) from err

    def _event_writer(self) -> Any:
        """The light writer for scalars and hparams when tensorboard's protos are at hand and the folder is
        local; None sends them through ``experiment`` (tensorboardX, remote folders)."""
        if self._events is None and _module_available("tensorboard"):
            from fulmen.checkpoint import _local_path

            local = _local_path(self.log_dir)
            if local is not None:
                from fulmen.loggers._tfevents import EventFileWriter

                self._events = EventFileWriter(local)
        return self._events

    @_rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Trace ``model`` with ``input_array`` (default ``model.example_input_array``) into the GRAPHS tab."""
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            _warn("Not logging the graph to TensorBoard: set `model.example_input_array` or pass `input_array`.")
            return
        if not hasattr(input_array, "shape") and not isinstance(input_array, tuple):
            _warn(
                f"Not logging the graph to TensorBoard: cannot trace an input of type {type(input_array).__name__}. "
                "Use a tensor, or a tuple of the positional arguments of `forward`."
            )
            return
        with warnings.catch_warnings():
            # add_graph traces with torch.jit, which torch marks deprecated; the user did not call it
            warnings.simplefilter("ignore", DeprecationWarning)
            self.experiment.add_graph(model, _to_model_device(model, input_array))

    @_rank_zero_only
    def save(self) -> None:
        if self._events is not None:
            self._events.flush()
        # hparams.yaml is rewritten only when hparams changed: save() is called at every logged step
        if self._hparams_dirty and self._fs.isdir(self.log_dir):
            _write_hparams_yaml(self._fs, _join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)
            self._hparams_dirty = False

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        if self._events is not None:  # a later log opens a new file, so fit() then test() still works
            self._events.close()
            self._events = None
        if self._experiment is not None:
            # close() flushes and releases the file; a later add_* call reopens it, so fit() then test() still works
            self._experiment.close()
        if status == "success":
            self._hparams_dirty = self._hparams_dirty or not self._fs.isfile(
                _join(self.log_dir, self.NAME_HPARAMS_FILE)
            )
            self.save()

    def __getstate__(self) -> dict[str, Any]:
        # a SummaryWriter holds threads and open files: it cannot be pickled (e.g. for spawn-based DDP)
        state = self.__dict__.copy()
        state["_experiment"] = None
        state["_events"] = None
        return state


def _writer_module() -> Any:
    """``torch.utils.tensorboard`` when tensorboard is installed, else ``tensorboardX`` (same API)."""
    if _module_available("tensorboard"):
        import torch.utils.tensorboard
        import torch.utils.tensorboard.summary

        return torch.utils.tensorboard
    if _module_available("tensorboardX"):
        import tensorboardX
        import tensorboardX.summary

        return tensorboardX
    raise missing_extra("tensorboard", "tensorboard", "TensorBoardLogger")


def _to_model_device(model: Any, batch: Any) -> Any:
    """Move the example input to the model's device, as the graph trace runs the model."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if param is None:
        return batch
    if isinstance(batch, tuple):
        return tuple(b.to(param.device) if hasattr(b, "to") else b for b in batch)
    return batch.to(param.device) if hasattr(batch, "to") else batch
