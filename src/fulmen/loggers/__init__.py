"""Where metrics and hyperparameters go: CSV files, TensorBoard, MLflow or Weights & Biases.

Importing this package imports none of the optional backends; each logger imports its own when it
is created or first used, and names the extra to install when it is missing.

Example::

    from fulmen.loggers import CSVLogger, TensorBoardLogger
    trainer = Trainer(logger=[CSVLogger("logs"), TensorBoardLogger("logs")])
"""

from fulmen.loggers.csv_logs import CSVLogger
from fulmen.loggers.logger import DummyLogger, Logger
from fulmen.loggers.mlflow import MLFlowLogger
from fulmen.loggers.tensorboard import TensorBoardLogger
from fulmen.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "DummyLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
