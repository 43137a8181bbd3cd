"""Lightning's path to the launcher that starts ``torch.multiprocessing`` workers (``strategy="ddp_spawn"``).

Example::

    from fulmen.strategies.launchers.multiprocessing import _MultiProcessingLauncher
"""

from fulmen.strategies.launcher import SpawnLauncher

_MultiProcessingLauncher = SpawnLauncher

__all__ = ["_MultiProcessingLauncher"]
