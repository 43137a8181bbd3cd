"""Fabric's loggers: the Trainer's CSV and TensorBoard loggers, under Lightning Fabric's argument names
(``root_dir`` where the Trainer's loggers say ``save_dir``)."""

from __future__ import annotations

import os
from typing import Any

from fulmen.loggers.csv_logs import CSVLogger as _TrainerCSVLogger
from fulmen.loggers.tensorboard import TensorBoardLogger as _TrainerTensorBoardLogger


class CSVLogger(_TrainerCSVLogger):
    """Metrics to ``root_dir/name/version_N/metrics.csv``: ``fabric.log_dict`` writes a row per step.

    Example::

        fabric = Fabric(loggers=CSVLogger(root_dir="logs", name="mnist"))
        fabric.log_dict({"loss": loss}, step=i)
    """

    def __init__(self, root_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(root_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)


class TensorBoardLogger(_TrainerTensorBoardLogger):
    """TensorBoard event files under ``root_dir/name/version_N`` (needs the ``tensorboard`` extra).

    Example::

        fabric = Fabric(loggers=TensorBoardLogger(root_dir="logs"))
    """

    def __init__(self, root_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(root_dir, name=name, version=version, **kwargs)
