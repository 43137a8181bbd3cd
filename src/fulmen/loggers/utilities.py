"""Lightning's path to the helper its loggers use to find the checkpoints to upload; the code lives in
``fulmen.loggers.logger``.

Example::

    from fulmen.loggers.utilities import _scan_checkpoints

    new = _scan_checkpoints(trainer.checkpoint_callback, {})  # [(mtime, path, score, "latest"|"best"|"best_k")]
"""

from fulmen.loggers.logger import _scan_checkpoints

__all__ = ["_scan_checkpoints"]
