"""Lightning's path to the launcher that re-runs the script once per process (``strategy="ddp"``).

Example::

    from fulmen.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
"""

from fulmen.strategies.launcher import ScriptLauncher

_SubprocessScriptLauncher = ScriptLauncher

__all__ = ["_SubprocessScriptLauncher"]
