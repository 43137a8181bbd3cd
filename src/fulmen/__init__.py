"""fulmen: PyTorch Lightning's API with almost none of its overhead.

Example::

    import fulmen as pl

    trainer = pl.Trainer(max_epochs=3)
    trainer.fit(model, train_loader)
"""

from fulmen._utils import seed_everything
from fulmen._version import __version__
from fulmen.callbacks.callback import Callback
from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.trainer.trainer import Trainer

import logging as _logging

# informational lines (fit stopped, checkpoint restored, ...) show at INFO on stderr, as Lightning's do,
# unless the program configured logging itself; logging.getLogger("fulmen") routes or silences them
_logger = _logging.getLogger(__name__)
_logger.setLevel(_logging.INFO)
if not _logging.getLogger().hasHandlers():
    _logger.addHandler(_logging.StreamHandler())
    _logger.propagate = False

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "cli_lightning_logo", "seed_everything",
           "callbacks", "loggers"]

_LOGO = r"""
     __       _
    / _|_   _| |_ __ ___   ___ _ __
   | |_| | | | | '_ ` _ \ / _ \ '_ \
   |  _| |_| | | | | | | |  __/ | | |
   |_|  \__,_|_|_| |_| |_|\___|_| |_|
"""


def cli_lightning_logo() -> None:
    """Print fulmen's logo; what Lightning's example scripts call first in ``__main__``.

    Example::

        if __name__ == "__main__":
            fulmen.cli_lightning_logo()
            main()
    """
    print(_LOGO)


def __getattr__(name: str):
    # submodules load on first use, keeping `import fulmen` fast
    import importlib

    if name in ("callbacks", "loggers", "strategies", "profilers", "tuner", "cli", "generation", "utilities",
                "precision", "checkpoint", "errors", "plot", "core", "demos", "plugins"):
        return importlib.import_module(f"fulmen.{name}")
    raise AttributeError(f"module 'fulmen' has no attribute {name!r}")
