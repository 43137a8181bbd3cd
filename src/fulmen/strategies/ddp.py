"""Data-parallel training on ``torch.distributed``: one process per device, gradients all-reduced by
``DistributedDataParallel``.

``ParallelStrategy`` holds what every multi-process strategy shares (topology from a cluster
environment, the process group, the collectives, rank-zero checkpoint writes); ``DDPStrategy`` adds
the DDP wrapper. Sharded strategies (FSDP, DeepSpeed) subclass ``ParallelStrategy`` the same way.
"""

from __future__ import annotations

import atexit
import functools
import os
from datetime import timedelta
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.errors import MisconfigurationException
from fulmen.strategies._forward import call_as_forward
from fulmen.strategies.environments import ClusterEnvironment
from fulmen.strategies.strategy import Strategy
from fulmen._utils import apply_to_collection, reset_seed, set_global_rank

_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM", "avg": "SUM", "product": "PRODUCT"}


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _from_environment(name: str, alone: int) -> property:
    """A topology property the cluster environment answers; ``alone`` until there is one."""
    return property(lambda self: getattr(self.cluster_environment, name)() if self.cluster_environment else alone)


class ParallelStrategy(Strategy):
    """Several processes, one device each: topology, process group and collectives.

    Subclasses decide how the module is wrapped (``setup_module``) and how the steps reach it.

    Args:
        accelerator: Accepted for Lightning compatibility; the Trainer's ``accelerator`` decides.
        parallel_devices: One device per local process. None: from the Trainer's ``devices``.
        cluster_environment: Where ranks, world size and the main address come from. None: detected (torchrun,
            SLURM, or local).
        checkpoint_io: How checkpoints are written and read.
        precision_plugin: Lightning's older name for ``precision``.
        process_group_backend: "nccl", "gloo"... None: NCCL on CUDA, Gloo otherwise.
        timeout: How long collectives wait for the other processes before failing.
        start_method: How the processes start: "popen" (the script again per process), "spawn", "fork" or
            "forkserver".
        precision: A ``Precision`` instance. None: chosen by the Trainer's ``precision``.

    Example::

        class MyStrategy(ParallelStrategy):
            def setup_module(self, module): ...
    """

    def __init__(self, accelerator: Any = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, checkpoint_io: Any = None,
                 precision_plugin: Any = None, process_group_backend: str | None = None,
                 timeout: timedelta | None = None, start_method: str = "popen", precision: Any = None) -> None:
        super().__init__(None, precision_plugin or precision, checkpoint_io)
        self.accelerator = accelerator
        self.parallel_devices = parallel_devices
        self.cluster_environment = cluster_environment
        self._process_group_backend = process_group_backend
        self._timeout = timeout if timeout is not None else timedelta(minutes=30)
        self._start_method = start_method
        self.num_nodes = 1
        self.sync_batchnorm = False
        self._launcher: Any = None

    # -- topology -------------------------------------------------------------------------------
    @property
    def num_processes(self) -> int:
        return len(self.parallel_devices) if self.parallel_devices else 1

    world_size = _from_environment("world_size", 1)
    global_rank = _from_environment("global_rank", 0)
    local_rank = _from_environment("local_rank", 0)
    node_rank = _from_environment("node_rank", 0)

    @property
    def root_device(self) -> torch.device:
        if not self.parallel_devices:
            return torch.device("cpu")
        device = self.parallel_devices[self.local_rank % len(self.parallel_devices)]
        return torch.device(device)

    @property
    def process_group_backend(self) -> str:
        if self._process_group_backend:
            return self._process_group_backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    @property
    def launcher(self) -> Any:
        if self._launcher is None:
            from fulmen.strategies.launcher import ScriptLauncher, SpawnLauncher

            self._launcher = (ScriptLauncher if self._start_method == "popen" else SpawnLauncher)(self)
        return self._launcher

    def configure(self, accelerator: str, devices: list[torch.device], num_nodes: int,
                  environment: ClusterEnvironment) -> None:
        """Called by the Trainer: fill in what was not given, fix this process's ranks, check the cluster agrees."""
        self.accelerator = self.accelerator or accelerator
        if self.parallel_devices is None:
            self.parallel_devices = devices
        self.num_nodes = num_nodes
        if self.cluster_environment is None:
            self.cluster_environment = environment
        self.cluster_environment.validate_settings(self.num_processes, num_nodes)
        self.set_world_ranks()

    def set_world_ranks(self) -> None:
        env = self.cluster_environment
        env.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
        env.set_world_size(self.num_nodes * self.num_processes)
        set_global_rank(self.global_rank)

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.launcher.launch(function, *args, **kwargs)

    # -- set-up ---------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        super().setup_environment()
        # every stage of a seeded run starts from the seed on every rank, whatever the process drew before
        # (building the model, launching): the numbers Lightning gives, the same in each process
        reset_seed()
        dist = _dist()
        if dist.is_initialized():
            return
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        try:
            dist.init_process_group(self.process_group_backend, rank=self.global_rank, world_size=self.world_size,
                                    timeout=self._timeout)
        except (RuntimeError, ValueError) as exc:
            text = str(exc).lower()
            if "address already in use" in text or "eaddrinuse" in text:
                raise MisconfigurationException(
                    f"MASTER_PORT={os.environ['MASTER_PORT']} is already in use on {os.environ['MASTER_ADDR']}, so the "
                    "processes cannot meet there. Pick another port (MASTER_PORT=<free port>), or leave MASTER_PORT "
                    "unset and fulmen chooses a free one."
                ) from exc
            raise
        from fulmen.strategies.launcher import _destroy_process_group

        atexit.register(_destroy_process_group)  # else gloo's threads are killed mid-flight at exit

    def teardown(self) -> None:
        self.model = self.lightning_module

    @property
    def supports_inference_mode(self) -> bool:
        # gloo keeps inference tensors made during evaluation in its buffers, and a later backward touches them
        return self.process_group_backend != "gloo"

    # -- collectives ----------------------------------------------------------------------------
    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        """Reduce ``tensor`` over every process: ``"mean"`` (default), ``"sum"``, ``"max"``, ``"min"``.

        Example::

            mean_loss = trainer.strategy.reduce(loss, reduce_op="mean")
        """
        if not isinstance(tensor, Tensor):
            return tensor
        dist = _dist()
        op, mean = reduce_op if reduce_op is not None else dist.ReduceOp.SUM, False
        if isinstance(reduce_op, str):
            key = reduce_op.lower()
            if key not in _REDUCE_OPS:
                raise MisconfigurationException(f"reduce_op={reduce_op!r} is not known; use 'mean', 'sum', 'max' or 'min'.")
            op, mean = getattr(dist.ReduceOp, _REDUCE_OPS[key]), key in ("mean", "avg")
        out = tensor.detach().clone()
        low = out.dtype in (torch.float16, torch.bfloat16) and self.process_group_backend == "gloo"
        if low or not out.is_floating_point() and mean:
            out = out.to(torch.float32 if low else torch.get_default_dtype())
        dist.all_reduce(out, op=op, group=group)
        if mean:
            out = out / dist.get_world_size(group)
        return out.to(tensor.dtype) if low else out

    def all_gather(self, tensor: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Every process's tensor (or each tensor of a collection), stacked on a new first dimension.

        Example::

            everyone = self.all_gather(preds)  # shape (world_size, *preds.shape)
        """
        dist = _dist()

        def gather(t: Tensor) -> Tensor:
            t = t.contiguous()
            if sync_grads:
                from torch.distributed import nn as dist_nn

                return torch.stack(dist_nn.functional.all_gather(t, group))
            parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
            with torch.no_grad():
                dist.all_gather(parts, t, group=group)
            return torch.stack(parts)

        return apply_to_collection(tensor, Tensor, gather)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        _dist().all_gather_object(out, obj)
        return out

    def barrier(self, name: str | None = None) -> None:
        dist = _dist()
        if not dist.is_initialized():
            return
        dist.barrier(device_ids=[self.root_device.index or 0] if dist.get_backend() == "nccl" else None)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        dist = _dist()
        if not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        dist = _dist()
        if not dist.is_initialized():
            return decision
        votes = torch.tensor(int(bool(decision)), device=self.root_device)
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        return bool(votes == self.world_size) if all else bool(votes > 0)

    def start_boolean_decision(self, decision: bool, all: bool = True) -> Callable[[], bool]:
        """``reduce_boolean_decision`` without waiting for the other processes (nor, on a GPU, for the device):
        the vote travels while training goes on, and the returned function reads it, waiting only if it has
        not arrived. Every process must start the same decisions in the same order.

        Example::

            agreed = trainer.strategy.start_boolean_decision(stop_requested, all=False)
            ...  # the next training step
            if agreed():
                ...
        """
        dist = _dist()
        if not dist.is_initialized():
            return lambda: decision
        world = self.world_size
        # filled on the device (torch.tensor(x, device=...) would copy from the host and wait for the stream)
        votes = torch.full((), int(bool(decision)), dtype=torch.int64, device=self.root_device)
        work = dist.all_reduce(votes, op=dist.ReduceOp.SUM, async_op=True)
        event = None
        if votes.is_cuda:  # the stream waits for the vote, then copies it to pinned host memory; the host goes on
            work.wait()
            votes = votes.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()

        def agreed() -> bool:
            if event is not None:
                event.synchronize()  # recorded a step ago: long done, unlike a sync of the whole stream
            else:
                work.wait()
            count = int(votes)
            return count == world if all else count > 0

        return agreed


class DDPStrategy(ParallelStrategy):
    """``torch.nn.parallel.DistributedDataParallel``: one process per device; Lightning's arguments.

    Extra keyword arguments (``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``,
    ``broadcast_buffers``, ...) go to ``DistributedDataParallel``. ``start_method`` is ``"popen"``
    (re-run the script once per process, like torchrun), ``"spawn"``, ``"fork"`` or ``"forkserver"``.

    Args:
        accelerator: Accepted for Lightning compatibility; the Trainer's ``accelerator`` decides.
        parallel_devices: One device per local process. None: from the Trainer's ``devices``.
        cluster_environment: Where ranks, world size and the main address come from. None: detected (torchrun,
            SLURM, or local).
        checkpoint_io: How checkpoints are written and read.
        precision_plugin: Lightning's older name for ``precision``.
        ddp_comm_state: State passed to ``ddp_comm_hook`` (e.g. a ``PostLocalSGDState``).
        ddp_comm_hook: A DDP communication hook that replaces the gradient all-reduce (e.g. fp16 compression).
        ddp_comm_wrapper: Wraps ``ddp_comm_hook`` before it is registered.
        model_averaging_period: With post-local SGD: average the models every this many steps.
        process_group_backend: "nccl", "gloo"... None: NCCL on CUDA, Gloo otherwise.
        timeout: How long collectives wait for the other processes before failing.
        start_method: "popen" (the script again per process, like torchrun), "spawn", "fork" or "forkserver".
        precision: A ``Precision`` instance. None: chosen by the Trainer's ``precision``.

    Example::

        trainer = fulmen.Trainer(accelerator="gpu", devices=4, strategy=DDPStrategy(static_graph=True))
        trainer = fulmen.Trainer(accelerator="cpu", devices=2, strategy="ddp")
    """

    def __init__(self, accelerator: Any = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, checkpoint_io: Any = None,
                 precision_plugin: Any = None, ddp_comm_state: object | None = None,
                 ddp_comm_hook: Callable | None = None, ddp_comm_wrapper: Callable | None = None,
                 model_averaging_period: int | None = None, process_group_backend: str | None = None,
                 timeout: timedelta | None = timedelta(minutes=30), start_method: str = "popen",
                 precision: Any = None, **kwargs: Any) -> None:
        if start_method not in ("popen", "spawn", "fork", "forkserver"):
            raise MisconfigurationException(
                f"DDPStrategy(start_method={start_method!r}) is not known; use 'popen', 'spawn', 'fork' or 'forkserver'."
            )
        super().__init__(accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin,
                         process_group_backend, timeout, start_method, precision)
        self._ddp_comm_state = ddp_comm_state
        self._ddp_comm_hook = ddp_comm_hook
        self._ddp_comm_wrapper = ddp_comm_wrapper
        self._model_averaging_period = model_averaging_period
        self._ddp_kwargs = kwargs

    def __repr__(self) -> str:
        return f"DDPStrategy(start_method={self._start_method!r}, world_size={self.world_size})"

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = super().setup_module(module)
        if self.sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place for a LightningModule's children
        self.lightning_module = module
        self.model = module
        if self.training and any(p.requires_grad for p in module.parameters()):
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.root_device.index or 0] if self.root_device.type == "cuda" else None
            self.model = DistributedDataParallel(module, device_ids=device_ids, **self._ddp_kwargs)
            hook, wrap = self._ddp_comm_hook, self._ddp_comm_wrapper
            if hook is not None:
                self.model.register_comm_hook(state=self._ddp_comm_state, hook=wrap(hook) if wrap else hook)
        return self.model

    def setup_optimizers(self, optimizers: list[Optimizer]) -> list[Optimizer]:
        if not self._model_averaging_period:
            return optimizers
        from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
        from torch.distributed.optim import PostLocalSGDOptimizer

        state = self._ddp_comm_state
        if not isinstance(state, post_localSGD_hook.PostLocalSGDState):
            raise MisconfigurationException(
                "DDPStrategy(model_averaging_period=...) needs ddp_comm_state=PostLocalSGDState(...) and "
                "ddp_comm_hook=post_localSGD_hook, which decide when local SGD starts."
            )
        averager = PeriodicModelAverager(period=self._model_averaging_period, warmup_steps=state.start_localSGD_iter)
        return [PostLocalSGDOptimizer(optim=o, averager=averager) for o in optimizers]

    # -- what the loops call ----------------------------------------------------------------------
    def step_function(self, name: str) -> Callable[..., Any]:
        """Training (and in-fit validation) steps go through DDP's forward, so it prepares the gradient
        all-reduce and keeps buffers in step; the others call the module directly, as in Lightning."""
        module = self.lightning_module
        wrapper = self.model
        step = getattr(module, name)
        if wrapper is module or name not in ("training_step", "validation_step"):
            return step
        manual = name == "training_step" and not module.automatic_optimization
        return functools.partial(_manual_step if manual else call_as_forward, wrapper, module, step)

    def no_backward_sync(self) -> Callable[[], ContextManager] | None:
        model = self.model
        return model.no_sync if model is not self.lightning_module and hasattr(model, "no_sync") else None

    def backward(self, loss: Tensor, optimizer: Optimizer | None, *args: Any, module: Any = None, **kwargs: Any) -> None:
        model = self.model
        lm = self.lightning_module
        if model is not lm and not getattr(lm, "automatic_optimization", True) and torch.is_grad_enabled() and model.require_backward_grad_sync:
            from torch.nn.parallel.distributed import _find_tensors

            model.require_forward_param_sync = True
            unused = model.find_unused_parameters and not getattr(model, "static_graph", False)
            model.reducer._rebuild_buckets()
            model.reducer.prepare_for_backward(list(_find_tensors(loss)) if unused else [])
        super().backward(loss, optimizer, *args, module=module, **kwargs)


def _manual_step(wrapper: Any, module: Any, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A manual-optimization step as DDP's forward, which must not prepare the gradient all-reduce when it ends:
    ``manual_backward`` does that for each of the step's backwards."""

    def step_then_skip_preparation(*a: Any, **k: Any) -> Any:
        out = step(*a, **k)
        wrapper.require_backward_grad_sync = False  # read by DDP's forward right after the step returns
        return out

    try:
        return call_as_forward(wrapper, module, step_then_skip_preparation, *args, **kwargs)
    finally:
        wrapper.require_backward_grad_sync = True
