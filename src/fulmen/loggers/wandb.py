"""WandbLogger: metrics, config and (optionally) checkpoints to Weights & Biases.

Needs the ``wandb`` package (``pip install 'fulmen[wandb]'``). With ``offline=True`` (or
``WANDB_MODE=offline``) nothing touches the network: the run is written under
``save_dir/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any

from fulmen.errors import MisconfigurationException, missing_extra
from fulmen.loggers.logger import (
    _UploadsCheckpoints,
    _rank_zero_only,
    rank_zero_experiment,
    _add_prefix,
    _checkpoint_metadata,
    _checkpoints_to_upload,
    _convert_params,
    _require,
    _sanitize_params,
    _scalar,
    _warn,
)

_STEP_KEY = "trainer/global_step"
_EXIT_CODE = {"success": 0, "failed": 1, "interrupted": 255}


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise missing_extra("wandb", "wandb", "WandbLogger") from None
    return wandb


class WandbLogger(_UploadsCheckpoints):
    """Log to Weights & Biases; the x axis of every chart is the trainer's global step.

    Args:
        name: Display name of the run.
        save_dir: Folder where wandb writes its local files (``save_dir/wandb``).
        version: Run id to resume (same as ``id``).
        offline: Log locally only; upload later with ``wandb sync``.
        dir: Same as ``save_dir``.
        id: Same as ``version``.
        anonymous: Allow logging without a W&B account.
        project: W&B project; default ``$WANDB_PROJECT``, else ``"lightning_logs"``.
        log_model: ``True`` uploads the checkpoint callback's files when training succeeds, ``"all"``
            after every save, ``False`` never. Works offline too: the files are synced with the run.
        experiment: An existing ``wandb`` run to log into (its owner finishes it).
        prefix: Prepended to every metric name, joined with ``-``.
        checkpoint_name: Name of the model artifact; default ``model-<run id>``.
        **kwargs: Passed on to ``wandb.init`` (``group``, ``tags``, ``entity``, ``config`` ...).

    Example::

        logger = WandbLogger(project="mnist", offline=True, save_dir="logs")
        trainer = Trainer(logger=logger)
        logger.watch(model)  # gradients and parameter histograms
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: bool | str = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        _require("wandb", "wandb", "wandb", "WandbLogger")
        if log_model not in (True, False, "all"):
            raise MisconfigurationException(f"WandbLogger(log_model={log_model!r}): use True, False or 'all'.")
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._owns_run = experiment is None  # a run handed to us is finished by whoever made it
        self._finished = False
        self._checkpoint_callback: Any = None
        self._checkpoint_name = checkpoint_name
        self._uploaded: dict[str, float] = {}
        save_dir = save_dir or dir
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": os.fspath(save_dir) if save_dir is not None else None,
            "id": version or id,
            "resume": "allow",
            "anonymous": "allow" if anonymous else None,
            **({"mode": "offline"} if offline else {}),
            **kwargs,
        }
        self._project = self._wandb_init["project"]
        self._save_dir = self._wandb_init["dir"]
        self._name = self._wandb_init["name"]
        self._id = self._wandb_init["id"]

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first access (or resumed after :meth:`finalize` finished it)."""
        if self._experiment is None or self._finished:
            wandb = _import_wandb()
            if self._save_dir is not None:
                os.makedirs(self._save_dir, exist_ok=True)  # wandb falls back to a temp dir otherwise
            if wandb.run is not None and not self._finished:
                _warn("A wandb run is already active in this process; WandbLogger logs into it.")
                self._experiment, self._owns_run = wandb.run, False
            else:
                init = dict(self._wandb_init)
                if self._finished:  # fit() then test(): continue the same run id
                    init["id"] = self._id
                self._experiment = wandb.init(**init)
                self._owns_run = True
            self._finished = False
            self._id = self._experiment.id
            # plot everything against the trainer's step, not wandb's own call counter
            if getattr(self._experiment, "define_metric", None):
                self._experiment.define_metric(_STEP_KEY)
                self._experiment.define_metric("*", step_metric=_STEP_KEY, step_sync=True)
        return self._experiment

    @property
    def name(self) -> str | None:
        """The project name, as Lightning reports it (checkpoints go under ``save_dir/<project>/<run id>``)."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id; does not start a run when there is none yet."""
        return self._experiment.id if self._experiment is not None else self._id

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = {key: _sanitize_value(value) for key, value in _convert_params(params).items()}
        self.experiment.config.update(params, allow_val_change=True)

    @_rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        metrics = {key: _scalar(value) for key, value in metrics.items()}
        if step is not None:
            metrics[_STEP_KEY] = step
        self.experiment.log(metrics)

    @_rank_zero_only
    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a table, from ``columns`` + ``data`` rows or a pandas ``dataframe``."""
        wandb = _import_wandb()
        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @_rank_zero_only
    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log text as a table (W&B shows text in tables)."""
        self.log_table(key, columns, data, dataframe, step)

    @_rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log images (tensors, arrays, PIL images or paths); ``kwargs`` are per-image lists, e.g. ``caption=[...]``."""
        wandb = _import_wandb()
        for k, v in kwargs.items():
            if len(v) != len(images):
                raise MisconfigurationException(
                    f"log_image: `{k}` has {len(v)} entries but there are {len(images)} images; give one per image."
                )
        per_image = [{k: v[i] for k, v in kwargs.items()} for i in range(len(images))]
        self.log_metrics({key: [wandb.Image(img, **extra) for img, extra in zip(images, per_image)]}, step)

    @_rank_zero_only
    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True) -> None:
        """Record gradient and/or parameter histograms of ``model`` every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        """Upload pending checkpoints (on success) and finish the run, so no wandb process lingers.

        Lightning leaves the run open until the interpreter exits; finishing here releases wandb's
        service process at once. Logging afterwards (``fit`` then ``test``) resumes the same run id.
        """
        if self._experiment is None or self._finished:
            return
        if status == "success" and self._checkpoint_callback is not None:
            self._upload_checkpoints(self._checkpoint_callback)
        if self._owns_run:
            self._experiment.finish(exit_code=_EXIT_CODE.get(status, 1))
            self._finished = True

    def _upload_checkpoints(self, callback: Any) -> None:
        """Log each new checkpoint as a ``model`` artifact, aliased "latest" (and "best" for the best)."""
        wandb = _import_wandb()
        for mtime, path, score, is_best in _checkpoints_to_upload(callback, self._uploaded):
            artifact = wandb.Artifact(
                name=self._checkpoint_name or f"model-{self.experiment.id}",
                type="model",
                metadata=_checkpoint_metadata(callback, path, score),
            )
            artifact.add_file(path, name="model.ckpt")
            self.experiment.log_artifact(artifact, aliases=["latest", "best"] if is_best else ["latest"])
            self._uploaded[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # a wandb run cannot be pickled; the copy resumes the run by id when it first logs
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def _sanitize_value(value: Any) -> Any:
    """wandb's config takes nested dicts and lists as they are; other objects are stored by name or ``str``."""
    value = _scalar(value)
    if value is None or isinstance(value, (bool, int, float, str, dict, list, tuple)):
        return value
    return _sanitize_params({"v": value})["v"]
