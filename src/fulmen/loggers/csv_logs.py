"""CSVLogger: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``, no extra packages.

Layout (same as Lightning's)::

    save_dir/name/version_0/metrics.csv
    save_dir/name/version_0/hparams.yaml
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from argparse import Namespace
from typing import Any

from fulmen.loggers.logger import (
    _VersionedLogger,
    _rank_zero_only,
    rank_zero_experiment,
    _add_prefix,
    _convert_params,
    _filesystem,
    _join,
    _scalar,
    _warn,
)
from fulmen.saving import _atomic_write_text, _write_hparams_yaml


class ExperimentWriter:
    """Buffers metric rows and writes them to ``log_dir/metrics.csv``; what ``CSVLogger.experiment`` returns.

    The header is the sorted union of every key seen, ``step`` included. When a row brings a new key the
    whole file is rewritten with the wider header, so the file is always a valid, rectangular CSV.

    Example::

        writer = ExperimentWriter("logs/run")
        writer.log_metrics({"loss": 0.5}, step=0)
        writer.save()
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    NAME_METRICS_FILE = "metrics.csv"

    def __init__(self, log_dir: str, keep_rows: int | None = None) -> None:
        self.fs, self.log_dir = _filesystem(log_dir)
        self.metrics_file_path = _join(self.log_dir, self.NAME_METRICS_FILE)
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []  # rows not yet on disk
        self.metrics_keys: list[str] = []  # the header of the file on disk
        self._rows_saved = 0
        # only files this writer replaces count: a checkpoints/ folder written first is expected
        files = (self.NAME_METRICS_FILE, self.NAME_HPARAMS_FILE)
        if keep_rows is None and any(self.fs.exists(_join(self.log_dir, f)) for f in files):
            _warn(
                f"Log directory {self.log_dir} exists and is not empty; its metrics.csv and hparams.yaml "
                "will be replaced. Pass a new `version` to keep them."
            )
        self.fs.makedirs(self.log_dir, exist_ok=True)
        if keep_rows is not None:  # a resumed run continues the file of the run it resumes
            self.keep_rows(keep_rows)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Merge ``params`` into the recorded hyperparameters and rewrite ``hparams.yaml``."""
        self.hparams.update(params)
        _write_hparams_yaml(self.fs, _join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> int:
        """Buffer one row and return its step; ``step`` defaults to the number of rows logged so far.

        (Lightning counts only the rows not yet flushed, so its default restarts after each save.)
        """
        if step is None:
            step = self._rows_saved + len(self.metrics)
        row = {key: _scalar(value) for key, value in metrics.items()}
        row["step"] = step
        self.metrics.append(row)
        return step

    def save(self) -> None:
        """Write the buffered rows: append when the header still fits, else rewrite the file wider."""
        if not self.metrics:
            return
        keys = set(self.metrics_keys).union(*self.metrics)
        if self._rows_saved and len(keys) == len(self.metrics_keys):
            with self.fs.open(self.metrics_file_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
        else:
            old_rows = self._read()[1] if self._rows_saved else []
            self.metrics_keys = sorted(keys)
            self._rewrite(self.metrics_keys, old_rows + self.metrics)
        self._rows_saved += len(self.metrics)
        self.metrics = []

    def keep_rows(self, n: int) -> None:
        """Keep the first ``n`` rows of the file on disk (those written before the checkpoint a run resumes
        from) and continue after them: rows logged after that checkpoint are logged again by the resumed run."""
        self.metrics = []
        if not n or not self.fs.exists(self.metrics_file_path):
            self._rows_saved, self.metrics_keys = 0, []
            return
        header, rows = self._read(n)
        self._rewrite(header, rows)
        self._rows_saved, self.metrics_keys = len(rows), header

    def _read(self, n: int | None = None) -> tuple[list[str], list[dict[str, str]]]:
        """The file's header and its first ``n`` rows (all of them for None)."""
        with self.fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(itertools.islice(reader, n))
            return list(reader.fieldnames or []), rows

    def _rewrite(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write_text(self.fs, self.metrics_file_path, buffer.getvalue())


class CSVLogger(_VersionedLogger):
    """Log to CSV and YAML files on any fsspec filesystem (local paths, ``memory://``, ``s3://`` ...).

    Args:
        save_dir: Folder that holds the experiment folders.
        name: Experiment folder name; ``""`` or ``None`` writes versions directly into ``save_dir``.
        version: An int gives ``version_<int>``, a string is used as the folder name; ``None`` picks the
            next free ``version_N``.
        prefix: Prepended to every metric name, joined with ``-``.
        flush_logs_every_n_steps: Write buffered rows to disk every this many steps.

    Example::

        logger = CSVLogger("logs", name="mnist")
        trainer = Trainer(logger=logger)  # -> logs/mnist/version_0/metrics.csv
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        self._init_folders(save_dir, name, version)
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: ExperimentWriter | None = None
        self._keep_rows: int | None = None  # set when a run resumes: continue metrics.csv after these rows

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The :class:`ExperimentWriter`; creating it makes the log folder."""
        if self._experiment is None:
            self._experiment = ExperimentWriter(self.log_dir, keep_rows=self._keep_rows)
        return self._experiment

    def _resume_state(self) -> dict[str, int]:
        """Written into each checkpoint: how many rows are on disk once the buffer is flushed."""
        if self._experiment is None:
            return {"rows": 0, "version": self._version}
        self._experiment.save()
        return {"rows": self._experiment._rows_saved, "version": self.version}

    def _resume_from(self, state: dict[str, int]) -> None:
        self._keep_rows = int(state.get("rows", 0))
        if self._experiment is not None:
            self._experiment.keep_rows(self._keep_rows)

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any) -> None:
        self.experiment.log_hparams(_convert_params(params))

    @_rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        step = self.experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @_rank_zero_only
    def save(self) -> None:
        # nothing logged yet: do not create an empty log folder
        if self._experiment is not None:
            self._experiment.save()
