"""``fulmen run``: start a script in one process per device, as ``torchrun`` does, with the run's settings in
the environment (Lightning's ``fabric run``).

Each process gets torchrun's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), so ``Trainer``/``Fabric`` and plain ``torch.distributed.init_process_group("gloo")`` find
their ranks; and Lightning's ``LT_*`` variables, which Fabric reads as its defaults: ``LT_CLI_USED=1``,
``LT_DEVICES``, ``LT_NUM_NODES`` always, ``LT_ACCELERATOR``, ``LT_STRATEGY``, ``LT_PRECISION`` when given.

Example::

    fulmen run --devices 2 --strategy ddp train.py --lr 0.1
    fulmen fabric run --devices 2 train.py          # the same: Lightning's `fabric run` spelling
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fulmen.errors import MisconfigurationException

#: the accelerator names the command takes (TPUs are not supported by fulmen)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _strategies() -> list[str]:
    """Strategy names that run in processes someone else starts: those that spawn or fork their own workers
    would start them again inside each launched process."""
    from fulmen.strategies import STRATEGY_NAMES

    return ["auto"] + [n for n in STRATEGY_NAMES if not n.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook"))]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's exit, with the fix where we know it
        self.print_usage(sys.stderr)
        self.exit(2, f"fulmen run: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fulmen run", description="Run SCRIPT in one process per device (like torchrun), exporting "
                "the settings as LT_* variables that Fabric reads as its defaults. Arguments after SCRIPT go to it.")
    p.add_argument("--accelerator", help=f"the hardware: {', '.join(ACCELERATORS)}")
    p.add_argument("--strategy", help="how processes share the work, e.g. ddp, fsdp, deepspeed_stage_2")
    p.add_argument("--devices", default="1", help="devices per machine: a number, indices ('0,1') or 'auto' "
                   "(default 1)")
    p.add_argument("--num-nodes", "--num_nodes", type=int, default=1, help="how many machines (default 1)")
    p.add_argument("--node-rank", "--node_rank", type=int, default=0, help="this machine's index, 0..num_nodes-1")
    p.add_argument("--main-address", "--main_address", default="127.0.0.1", help="address of the machine with "
                   "node rank 0")
    p.add_argument("--main-port", "--main_port", type=int, default=29400, help="port on that machine")
    p.add_argument("--precision", help="e.g. 32-true, bf16-mixed, 16-mixed, 64-true (or 32, 16, bf16, 64)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def _processes(accelerator: str | None, devices: str) -> int:
    """How many processes to start on this machine: the accelerator reads ``devices``."""
    from fulmen.accelerators import resolve_accelerator

    acc = resolve_accelerator(accelerator or "auto")
    value: Any = devices.strip()
    if value.lstrip("-").isdigit():
        value = int(value)
    parsed = acc.parse_devices(value)
    return parsed if isinstance(parsed, int) else len(parsed)


def check(args: argparse.Namespace) -> int:
    """Validate the settings and return the number of processes per machine; raises with the fix."""
    if not os.path.isfile(args.script):
        raise MisconfigurationException(
            f"The script {args.script!r} does not exist (looked in {os.getcwd()}). Pass the path of a Python file: "
            "fulmen run [options] train.py [script args].")
    if args.accelerator is not None and args.accelerator.lower() not in ACCELERATORS:
        raise MisconfigurationException(
            f"--accelerator {args.accelerator!r} is not known; use one of {', '.join(ACCELERATORS)}.")
    if args.strategy is not None and args.strategy.lower() not in _strategies():
        raise MisconfigurationException(
            f"--strategy {args.strategy!r} is not one `fulmen run` can start; use one of {', '.join(_strategies())} "
            "(strategies that spawn their own processes start themselves: run `python script.py` instead).")
    if args.precision is not None:
        from fulmen.precision import normalize_precision

        normalize_precision(args.precision)  # raises, listing the valid names
    if args.num_nodes < 1:
        raise MisconfigurationException(f"--num-nodes {args.num_nodes}: pass the number of machines, 1 or more.")
    if not 0 <= args.node_rank < args.num_nodes:
        raise MisconfigurationException(
            f"--node-rank {args.node_rank} is outside 0..{args.num_nodes - 1} (--num-nodes {args.num_nodes}); give "
            "each machine its own index in that range.")
    return _processes(args.accelerator, args.devices)


def environment(args: argparse.Namespace) -> dict[str, str]:
    """The ``LT_*`` variables every launched process sees (Lightning's names; Fabric reads them as defaults).

    Example::

        environment(_parser().parse_args(["--devices", "2", "train.py"]))
        # {'LT_CLI_USED': '1', 'LT_DEVICES': '2', 'LT_NUM_NODES': '1'}
    """
    env = {"LT_CLI_USED": "1", "LT_DEVICES": str(args.devices), "LT_NUM_NODES": str(args.num_nodes)}
    given = {"LT_ACCELERATOR": args.accelerator, "LT_STRATEGY": args.strategy, "LT_PRECISION": args.precision}
    return env | {key: str(value) for key, value in given.items() if value is not None}


def main(argv: list[str]) -> int:
    """``fulmen run [options] SCRIPT [script args]``; returns the exit status (the first failing process's).

    Example::

        from fulmen.run_command import main
        main(["--devices", "2", "--strategy", "ddp", "train.py"])
    """
    args = _parser().parse_args(argv)
    try:
        nprocs = check(args)
    except MisconfigurationException as err:
        sys.stderr.write(f"fulmen run: error: {err}\n")
        return 2
    os.environ.update(environment(args))
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun would set 1 and warn; share the cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nprocs))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    torchrun_args = get_args_parser().parse_args([
        f"--nproc-per-node={nprocs}", f"--nnodes={args.num_nodes}", f"--node-rank={args.node_rank}",
        f"--master-addr={args.main_address}", f"--master-port={args.main_port}",
        args.script, *args.script_args])
    try:
        run(torchrun_args)
    except ChildFailedError as err:  # torchrun has printed which rank failed and how
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    return 0
