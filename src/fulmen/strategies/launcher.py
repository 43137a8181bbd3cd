"""Starting the processes of a multi-process run, and ending them all when one fails.

``ScriptLauncher`` (``strategy="ddp"``) re-runs the same command once per extra process with the rank
environment set (``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``), as torchrun does;
the launching process is rank 0. A thread watches the children: when one fails, the others are
ended and the launching process exits with its code. Under torchrun, SLURM & co. nothing is started.

``SpawnLauncher`` (``"ddp_spawn"``, ``"ddp_fork"``/``"ddp_notebook"``) runs the function in
``torch.multiprocessing`` workers and returns rank 0's result; a ``Handoff`` given by the caller (the
Trainer's carries the fitted weights, callback metrics and loop progress) says what else rank 0 sends
back to the calling process. The launcher itself knows nothing of its callers.
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Callable

import torch

from fulmen.errors import FulmenError, MisconfigurationException

_PARENT_ENV = "FULMEN_LAUNCHER_PID"
FAILED = False  # a run of this process raised: at exit, do not wait for the others


def _is_comm_error(exc: BaseException) -> bool:
    """An error raised because a peer process went away (the consequence of a failure elsewhere)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL"))


def _report_failure(rank: int, exc: BaseException) -> None:
    if _is_comm_error(exc):
        print(f"fulmen: rank {rank} stopped because another process ended ({str(exc).splitlines()[0][:200]})",
              file=sys.stderr, flush=True)
    elif not isinstance(exc, (KeyboardInterrupt, SystemExit)):
        print(f"fulmen: the error below was raised on global rank {rank}", file=sys.stderr, flush=True)


# ==================================================================================================
# re-running the script
# ==================================================================================================
def _command() -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in (None, "__main__"):  # python -m package.module
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    script = sys.argv[0] if sys.argv else ""
    if not script or script == "-c" or not os.path.exists(script) or hasattr(sys, "ps1"):
        raise MisconfigurationException(
            "strategy='ddp' starts the other processes by re-running your script, but this is an interactive "
            "session (or `python -c`), which cannot be re-run. Use strategy='ddp_notebook' (or 'ddp_spawn'), or "
            "put the code in a file and run `python train.py`."
        )
    return [sys.executable, *sys.argv]


class ScriptLauncher:
    """Starts processes 1..N-1 of this node by re-running the command; this process is local rank 0.

    Example::

        # python train.py  with Trainer(devices=2, strategy="ddp"): a second `python train.py` starts
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self.procs: list[subprocess.Popen] = []

    def launch(self, function: Callable[..., Any], *args: Any, handoff: Handoff | None = None, **kwargs: Any) -> Any:
        env = self.strategy.cluster_environment
        if not env.creates_processes_externally and not self.procs:
            self._start_children()
        elif os.environ.get(_PARENT_ENV):
            _watch_parent(int(os.environ[_PARENT_ENV]))
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            global FAILED
            FAILED = True
            rank = self.strategy.global_rank
            if self.procs:
                failed = self._wait_for_failure(2.0) if _is_comm_error(exc) else None
                if isinstance(exc, SystemExit):  # a stop every rank agreed on (preemption): let them finish
                    self._wait_children(30.0)
                self._end_children()
                if failed is not None:  # a child failed first; its traceback is already on screen
                    print(f"fulmen: rank {failed[0]} failed (exit code {failed[1]}); ended every process.",
                          file=sys.stderr, flush=True)
                    raise SystemExit(failed[1] or 1) from None
            _report_failure(rank, exc)
            raise

    def _start_children(self) -> None:
        strategy = self.strategy
        env = strategy.cluster_environment
        command = _command()
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        n = strategy.num_processes
        node = strategy.node_rank
        world = strategy.num_nodes * n
        for local in range(1, n):
            child_env = dict(os.environ, LOCAL_RANK=str(local), NODE_RANK=str(node), WORLD_SIZE=str(world),
                             RANK=str(node * n + local), LOCAL_WORLD_SIZE=str(n), **{_PARENT_ENV: str(os.getpid())})
            self.procs.append(subprocess.Popen(command, env=child_env))
        # from now on this process is rank 0 of a run someone started: later Trainers do not launch again
        os.environ.update(LOCAL_RANK="0", NODE_RANK=str(node), WORLD_SIZE=str(world), RANK=str(node * n),
                          LOCAL_WORLD_SIZE=str(n))
        threading.Thread(target=self._watch_children, name="fulmen-children", daemon=True).start()
        _end_children_on_sigterm(self)
        atexit.register(self._wait_at_exit)

    def _poll(self) -> tuple[int, int] | None:
        n = self.strategy.num_processes
        for i, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code not in (None, 0):
                return self.strategy.node_rank * n + i, code if code > 0 else 128 - code
        return None

    def _wait_for_failure(self, seconds: float) -> tuple[int, int] | None:
        deadline = time.monotonic() + seconds
        while (failed := self._poll()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return failed

    def _watch_children(self) -> None:
        while (failed := self._poll()) is None:
            if all(p.poll() is not None for p in self.procs):
                return
            time.sleep(0.2)
        # give this process a moment to notice on its own (its collective fails), then end everything
        time.sleep(3.0)
        self._end_children()
        print(f"fulmen: rank {failed[0]} failed (exit code {failed[1]}); ended every process.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(failed[1] or 1)

    def _wait_children(self, seconds: float, kill: bool = False) -> None:
        """Give the children ``seconds`` in all to end; then ``kill`` those still running, or stop waiting."""
        deadline = time.monotonic() + seconds
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if not kill:
                    return
                proc.kill()
                proc.wait()

    def _end_children(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        self._wait_children(5.0, kill=True)

    def _wait_at_exit(self) -> None:
        """At interpreter exit: the children finish their copy of the script; a failure becomes our exit code."""
        for proc in self.procs:
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
        failed = self._poll()
        if failed is not None:
            os._exit(failed[1])


def _end_children_on_sigterm(launcher: ScriptLauncher) -> None:
    """SIGTERM to the launching process ends its children too (Ctrl-C reaches the whole process group)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        launcher._end_children()
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


_watching_parent = False


def _watch_parent(parent: int) -> None:
    """In a child: exit when the launching process is gone, instead of waiting in a collective for ever."""
    global _watching_parent
    if _watching_parent:
        return
    _watching_parent = True

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="fulmen-parent", daemon=True).start()


# ==================================================================================================
# torch.multiprocessing
# ==================================================================================================
class Handoff:
    """What a spawned run hands back to the process that launched it, besides ``function``'s result.

    The launcher pickles the handoff to every worker with the function; in rank 0's worker ``collect()``
    runs after the function and its (picklable) return value reaches ``restore()`` in the launching
    process. ``modules()`` names the modules whose tensors each worker must own (pickling shares them).

    Example::

        class KeepWeights(Handoff):
            def __init__(self, model): self.model = model
            def modules(self): return [self.model]
            def collect(self): return {k: v.cpu() for k, v in self.model.state_dict().items()}
            def restore(self, data): self.model.load_state_dict(data)

        strategy.launch(train, model, handoff=KeepWeights(model))
    """

    def modules(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        return None

    def restore(self, data: Any) -> None:
        pass

    def suspects(self) -> list[tuple[str, Any]]:
        """(description, object) pairs to search for an unpicklable attribute when pickling fails."""
        return []


class SpawnLauncher:
    """Runs ``function`` in N ``torch.multiprocessing`` workers (spawn, fork or forkserver) and returns rank 0's
    result; what else comes back (e.g. the Trainer's fitted weights) is the caller's ``Handoff``.

    Example::

        trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn")
        trainer.fit(model)  # model holds the trained weights afterwards
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def launch(self, function: Callable[..., Any], *args: Any, handoff: Handoff | None = None, **kwargs: Any) -> Any:
        import torch.multiprocessing as mp

        strategy = self.strategy
        method = strategy._start_method
        if method == "fork" and sys.platform == "win32":
            raise MisconfigurationException("strategy='ddp_fork' needs fork, which Windows lacks; use 'ddp_spawn'.")
        os.environ["MASTER_ADDR"] = strategy.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(strategy.cluster_environment.main_port)
        if method != "fork":
            _check_picklable(handoff, function, args)
        ctx = mp.get_context(method)
        queue = ctx.SimpleQueue()
        state = _GlobalState()
        context = mp.start_processes(_worker, args=(strategy, function, args, kwargs, handoff, queue, state),
                                     nprocs=strategy.num_processes, start_method=method, join=False)
        output = None
        while not context.join(0.1):
            if output is None and not queue.empty():
                output = queue.get()
        if output is None and not queue.empty():
            output = queue.get()
        if output is None:
            raise FulmenError("The rank 0 worker ended without returning its results.")

        result, data = torch.load(io.BytesIO(output), weights_only=False)  # written by our own worker just now
        if handoff is not None:
            handoff.restore(data)
        return result


class _GlobalState:
    """What a spawned process would not inherit from the caller: the random generators' states (so a worker
    continues the caller's streams, as a forked one would) and torch's determinism and cuDNN flags (set by
    ``Trainer(deterministic=..., benchmark=...)`` in the caller)."""

    def __init__(self) -> None:
        from fulmen._utils import collect_rng_states

        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self.benchmark = torch.backends.cudnn.benchmark
        self.rng = collect_rng_states()

    def restore(self) -> None:
        from fulmen._utils import restore_rng_states

        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.warn_only)
        torch.backends.cudnn.benchmark = self.benchmark
        restore_rng_states(self.rng)


def _worker(local_rank: int, strategy: Any, function: Callable[..., Any], args: tuple, kwargs: dict,
            handoff: Handoff | None, queue: Any, state: _GlobalState) -> None:
    state.restore()
    os.environ["LOCAL_RANK"] = str(local_rank)  # read by the environment (and by user code, as under torchrun)
    strategy.set_world_ranks()
    if handoff is not None and strategy._start_method != "fork":
        # pickling for the workers put the weights in shared memory: each worker needs its own copy
        with torch.no_grad():
            for module in handoff.modules():
                for t in [*module.parameters(), *module.buffers()]:
                    t.data = t.data.clone()
    result = function(*args, **kwargs)
    _destroy_process_group()  # workers end without atexit handlers
    if strategy.global_rank != 0:
        return
    from fulmen._utils import apply_to_collection

    data = handoff.collect() if handoff is not None else None
    result = apply_to_collection(result, torch.Tensor, lambda t: t.detach().cpu())
    # as bytes: shared-memory tensors would need this worker alive until the parent reads them
    buffer = io.BytesIO()
    torch.save((result, data), buffer)
    queue.put(buffer.getvalue())


def _unpicklable_attribute(obj: Any, skip: Any) -> tuple[str, Any] | None:
    items = list(getattr(obj, "__dict__", {}).items())
    for name in ("_modules", "_parameters", "_buffers"):  # a module's children and tensors live in these dicts
        items += [(k, v) for k, v in getattr(obj, "__dict__", {}).get(name, {}).items()]
    for name, value in items:
        if value is skip or name in ("_modules", "_parameters", "_buffers"):
            continue
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - any failure names this attribute
            return name, value
    return None


def _check_picklable(handoff: Handoff | None, function: Callable, args: tuple) -> None:
    """Name the attribute that cannot be sent to spawned workers, instead of pickle's bare error."""
    try:
        pickle.dumps((handoff, function, args))
        return
    except Exception as exc:  # noqa: BLE001 - any pickling failure is reported below
        error = exc
    where = ""
    owner = getattr(function, "__self__", None)  # a bound method's object (the Trainer, Fabric) travels too
    for what, obj in (handoff.suspects() if handoff is not None else []):
        attr = _unpicklable_attribute(obj, owner) if obj is not None else None
        if attr is not None:
            where = f" {what} ({type(obj).__name__}) has the attribute `{attr[0]}` ({type(attr[1]).__name__}), which"
            break
    raise MisconfigurationException(
        f"A spawned strategy ('ddp_spawn') sends the function, model and data to new processes by pickling them, "
        f"and{where or ' something'} cannot be pickled ({type(error).__name__}: {error}). Use strategy='ddp' (which "
        "re-runs your script instead), or make that attribute picklable (e.g. create it in setup())."
    ) from error


def _destroy_process_group() -> None:
    """At exit: wait until every process is done with the group, then close it. A process that closes its
    connections while a peer still reads from them makes the peer's transport thread abort."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if FAILED:  # the peers may be waiting in a collective this process will never join
        dist.destroy_process_group()
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer is gone already: nothing to wait for
        pass
    dist.destroy_process_group()
