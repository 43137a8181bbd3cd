"""The ``fulmen`` command (also ``python -m fulmen``).

Example::

    fulmen fit --model my_pkg.LitModel --data my_pkg.DigitsData --trainer.max_epochs 3
    fulmen fit --config lightning_logs/version_0/config.yaml       # repeat a run exactly
    fulmen test --model my_pkg.LitModel --data my_pkg.DigitsData --ckpt_path last.ckpt
    fulmen plot lightning_logs/version_0
    fulmen consolidate checkpoints/last.ckpt                 # a sharded FSDP/DeepSpeed directory -> one file
    fulmen run --devices 2 --strategy ddp train.py            # one process per device, like torchrun
"""

from __future__ import annotations

import difflib
import os
import sys

_COMMANDS = {
    "fit": "train a model: --model pkg.Class --data pkg.Class --trainer.* flags, or --config run.yaml",
    "validate": "run one validation epoch on a model (--ckpt_path to load weights first)",
    "test": "run one test epoch on a model (--ckpt_path to load weights first)",
    "predict": "run prediction over the predict data (--ckpt_path to load weights first)",
    "plot": "plot a run's logged metrics (CSV or TensorBoard) into a PNG: fulmen plot RUN_DIR [-o OUT]",
    "consolidate": "write a sharded FSDP/DeepSpeed checkpoint directory as one file: fulmen consolidate DIR [-o FILE]",
    "run": "start a script in one process per device (like torchrun, or Lightning's `fabric run`): "
           "fulmen run [--devices N] [--strategy S] script.py [args]",
}
_RUN_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    width = max(map(len, _COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in _COMMANDS.items()]
    return (
        "usage: fulmen <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "Run `fulmen <command> --help` for the options of one command.\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Run one ``fulmen`` command and return its exit status (0 ok, 2 bad input, 1 missing extra).

    Example::

        from fulmen.__main__ import main
        main(["fit", "--model", "my_pkg.LitModel", "--trainer.max_epochs", "1"])
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from fulmen import __version__

        print(f"fulmen {__version__}")
        return 0
    command = args[0]
    if command == "plot":
        from fulmen.plot import main as plot_main

        return plot_main(args[1:])
    if command == "consolidate":
        from fulmen.strategies.sharded_checkpoint import cli_main

        return cli_main(args[1:])
    if command == "run" or args[:2] == ["fabric", "run"]:  # `fabric run` as Lightning spells it
        from fulmen.run_command import main as run_main

        return run_main(args[1:] if command == "run" else args[2:])
    if command in _RUN_COMMANDS:
        return _run(args)
    close = difflib.get_close_matches(command, list(_COMMANDS), n=1)
    hint = f" Did you mean `fulmen {close[0]}`?" if close else ""
    sys.stderr.write(f"fulmen: error: unknown command {command!r}.{hint} Commands: {', '.join(_COMMANDS)}.\n")
    return 2


def _run(args: list[str]) -> int:
    """``fulmen fit|validate|test|predict``: LightningCLI with the model and data chosen on the command line."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the user's packages in the current directory import
    from fulmen.errors import FulmenError, MissingDependencyError

    saved_argv, sys.argv = sys.argv, ["fulmen", *args]  # LightningCLI reads the command line itself
    try:
        from fulmen.cli import LightningCLI  # needs the `cli` extra

        LightningCLI(parser_kwargs={"prog": "fulmen"})
    except SystemExit as exit_:  # the parser already printed its message (or the help)
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    except MissingDependencyError as err:
        sys.stderr.write(f"fulmen {args[0]}: {err}\n")
        return 1
    except FulmenError as err:  # misuse found while running: its message already says what to change
        sys.stderr.write(f"fulmen {args[0]}: error: {err}\n")
        return 2
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
