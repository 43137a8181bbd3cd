"""Lightning's ``lightning.fabric.loggers`` path."""

from fulmen.fabric._loggers import CSVLogger, TensorBoardLogger
from fulmen.loggers.logger import Logger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
