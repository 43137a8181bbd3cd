"""Lightning's path to the launchers that start the processes of a multi-process run, under Lightning's names; the
code lives in ``fulmen.strategies.launcher``: ``ScriptLauncher`` re-runs the script once per process
(``strategy="ddp"``), ``SpawnLauncher`` starts workers with ``torch.multiprocessing`` (``"ddp_spawn"``).

Example::

    from fulmen.strategies.launchers import _MultiProcessingLauncher

    trainer = fulmen.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn")
    assert isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
"""

from fulmen.strategies.launcher import ScriptLauncher, SpawnLauncher

_SubprocessScriptLauncher = ScriptLauncher
_MultiProcessingLauncher = SpawnLauncher

__all__ = ["_MultiProcessingLauncher", "_SubprocessScriptLauncher"]
