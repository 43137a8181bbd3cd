"""MLFlowLogger: params, metrics and (optionally) checkpoints to an MLflow tracking store.

Needs ``mlflow`` or ``mlflow-skinny`` (``pip install 'fulmen[mlflow]'``).

Default store: a local ``file:`` store at ``save_dir`` (``./mlruns``), Lightning's default layout,
browsable with ``mlflow ui --backend-store-uri ./mlruns``. MLflow 3 puts the file store in
"maintenance mode" and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; the alternative local
store, ``sqlite:///``, needs SQLAlchemy, which ``mlflow-skinny`` lacks. So for ``file:`` URIs this
logger sets ``MLFLOW_ALLOW_FILE_STORE=true`` unless the user already set it. Pass
``tracking_uri="sqlite:///mlflow.db"`` (with full ``mlflow`` installed) or a server URL to avoid it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fulmen.errors import MisconfigurationException
from fulmen.loggers.logger import (
    _UploadsCheckpoints,
    _rank_zero_only,
    rank_zero_experiment,
    _add_prefix,
    _checkpoint_metadata,
    _checkpoints_to_upload,
    _convert_params,
    _flatten_dict,
    _require,
    _scalar,
    _warn,
)

LOCAL_FILE_URI_PREFIX = "file:"  # Lightning's name for the scheme of a local MLflow store
_RUN_NAME_TAG = "mlflow.runName"
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLFlowLogger(_UploadsCheckpoints):
    """Log to MLflow: one MLflow run per training run, inside an experiment.

    Args:
        experiment_name: MLflow experiment, created if it does not exist.
        run_name: Shown in the MLflow UI (the ``mlflow.runName`` tag).
        tracking_uri: Where runs are stored; default ``$MLFLOW_TRACKING_URI``, else ``file:<save_dir>``.
        tags: Extra run tags.
        save_dir: Folder of the default local store.
        log_model: ``True`` uploads the checkpoint callback's files when training ends, ``"all"`` after
            every save, ``False`` never.
        prefix: Prepended to every metric name, joined with ``-``.
        artifact_location: Where a newly created experiment stores artifacts.
        run_id: Resume logging into this existing run instead of starting a new one.
        synchronous: ``False`` logs in the background (MLflow >= 2.8); ``None`` keeps MLflow's default.
        checkpoint_path_prefix: Prepended to the artifact folder of uploaded checkpoints.

    Example::

        logger = MLFlowLogger(experiment_name="mnist", save_dir="./mlruns", log_model=True)
        trainer = Trainer(logger=logger)
        # then: mlflow ui --backend-store-uri ./mlruns
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: bool | str = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
        checkpoint_path_prefix: str = "",
    ) -> None:
        _require("mlflow", "mlflow", "mlflow", "MLFlowLogger")
        if log_model not in (True, False, "all"):
            raise MisconfigurationException(f"MLFlowLogger(log_model={log_model!r}): use True, False or 'all'.")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if tracking_uri is None:
            tracking_uri = Path(save_dir or "./mlruns").expanduser().resolve().as_uri()
        self._tracking_uri = tracking_uri
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._run_name = run_name
        self._run_id = run_id
        self.tags = dict(tags or {})
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._checkpoint_path_prefix = checkpoint_path_prefix
        self._uploaded: dict[str, float] = {}  # checkpoint path -> mtime when uploaded
        self._checkpoint_callback: Any = None
        self._client: Any = None  # made on first use: then the run has started

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``MlflowClient``; first access creates (or finds) the experiment and starts the run."""
        if self._client is not None:
            return self._client
        from mlflow.tracking import MlflowClient

        if self._tracking_uri.startswith("file:"):
            # MLflow 3 refuses the file store without this opt-in; see the module docstring
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(self._tracking_uri)
        if self._run_id is not None:
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
        else:
            if self._experiment_id is None:
                found = client.get_experiment_by_name(self._experiment_name)
                if found is not None and found.lifecycle_stage == "deleted":
                    raise MisconfigurationException(
                        f"MLflow experiment {self._experiment_name!r} is deleted. Restore it "
                        "(`mlflow experiments restore`) or pass another `experiment_name`."
                    )
                self._experiment_id = (
                    found.experiment_id
                    if found is not None
                    else client.create_experiment(self._experiment_name, artifact_location=self._artifact_location)
                )
            tags = dict(self.tags)
            if self._run_name is not None:
                tags.setdefault(_RUN_NAME_TAG, self._run_name)
            from mlflow.tracking.context.registry import resolve_tags  # adds user, source, git commit

            run = client.create_run(experiment_id=self._experiment_id, tags=resolve_tags(tags))
            self._run_id = run.info.run_id
        self._client = client
        return client

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (starts the run if needed)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment id (starts the run if needed)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment id, as Lightning reports it (checkpoints go under ``save_dir/<id>/<run_id>``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local folder of a ``file:`` store; ``None`` for remote stores."""
        if self._tracking_uri.startswith("file:"):
            from urllib.request import url2pathname  # imports http.client: keep it off the import path

            return url2pathname(urlparse(self._tracking_uri).path)
        return None

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        from mlflow.entities import Param

        max_len, per_batch = _limits()
        params_list = []
        for key, value in _flatten_dict(_convert_params(params)).items():
            value = str(_scalar(value))
            if len(value) > max_len:
                _warn(f"MLflow param {key!r} is longer than {max_len} characters; it is truncated.")
                value = value[:max_len]
            params_list.append(Param(key, value))
        for i in range(0, len(params_list), per_batch):
            self.experiment.log_batch(
                run_id=self.run_id, params=params_list[i : i + per_batch], **self._log_batch_kwargs
            )

    @_rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        timestamp_ms = int(time.time() * 1000)
        metrics_list = []
        for key, value in metrics.items():
            value = _scalar(value)
            if isinstance(value, str):
                _warn(f"MLflow metric {key!r} is a string ({value!r}); only numbers can be logged, it is skipped.")
                continue
            clean = re.sub(r"[^a-zA-Z0-9_/. -]+", "", key)  # MLflow rejects other characters
            if clean != key:
                _warn(f"MLflow metric {key!r} has characters MLflow does not allow; logged as {clean!r}.")
            metrics_list.append(Metric(key=clean, value=float(value), timestamp=timestamp_ms, step=step or 0))
        for i in range(0, len(metrics_list), 1000):  # MLflow's per-request metric limit
            self.experiment.log_batch(run_id=self.run_id, metrics=metrics_list[i : i + 1000], **self._log_batch_kwargs)

    @_rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._client is None:
            return
        if self._checkpoint_callback is not None:
            self._upload_checkpoints(self._checkpoint_callback)
        if self.experiment.get_run(self._run_id):
            self.experiment.set_terminated(self._run_id, _STATUS.get(status, status.upper()))

    def _upload_checkpoints(self, callback: Any) -> None:
        """Upload new checkpoints to ``<prefix><file stem>/`` with ``metadata.yaml`` and ``aliases.txt``."""
        import yaml

        for mtime, path, score, is_best in _checkpoints_to_upload(callback, self._uploaded):
            artifact_path = f"{self._checkpoint_path_prefix}{Path(path).stem}"
            self.experiment.log_artifact(self._run_id, path, artifact_path)
            metadata = yaml.safe_dump(_checkpoint_metadata(callback, path, score), default_flow_style=False)
            aliases = str(["latest", "best"] if is_best else ["latest"])
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in (("metadata.yaml", metadata), ("aliases.txt", aliases)):
                    Path(tmp, name).write_text(text)
                    self.experiment.log_artifact(self._run_id, os.path.join(tmp, name), artifact_path)
            self._uploaded[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # the client is rebuilt from the tracking URI on first use after unpickling
        state = self.__dict__.copy()
        state["_client"] = None
        return state


def _limits() -> tuple[int, int]:
    """MLflow's longest param value and most params per request, from the installed version."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        return MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
    except ImportError:  # older MLflow: its historical limits
        return 250, 100
