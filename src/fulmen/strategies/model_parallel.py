"""Tensor parallelism (and 2-D parallelism) that the user applies: ``ModelParallelStrategy``.

The strategy starts the processes and builds a 2-D ``DeviceMesh`` named ("data_parallel", "tensor_parallel");
the user's code parallelizes the layers itself over it: in the Trainer ``configure_model`` reads it as
``self.device_mesh``, in a Fabric program ``parallelize_fn(module, mesh)`` gets it from ``setup``; both with torch's
``parallelize_module`` (``ColwiseParallel``/``RowwiseParallel``: parameters become DTensors, each process
holding a slice) and, across the data-parallel dimension, ``fully_shard``. Nothing is wrapped by the strategy:
the step runs the module as the user built it. Checkpoints are directories written with
torch.distributed.checkpoint, each process its slices (or one file gathered on rank zero).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn
from torch.optim import Optimizer

from fulmen._utils import is_overridden
from fulmen.errors import MisconfigurationException
from fulmen.strategies import sharded_checkpoint
from fulmen.strategies.ddp import ParallelStrategy
from fulmen.strategies.fsdp import _holds_dtensors, _no_gradient_sync, _options

MESH_DIMS = ("data_parallel", "tensor_parallel")


class ModelParallelStrategy(ParallelStrategy):
    """Run a model that ``configure_model`` parallelizes over ``self.device_mesh`` (tensor parallelism with
    DTensor, optionally FSDP2 across the data-parallel dimension). Works on GPUs (NCCL) and on CPUs (gloo).

    Args:
        data_parallel_size: processes that see different data; "auto" is the number of nodes.
        tensor_parallel_size: processes that split each layer; "auto" is the number of devices per node.
            Their product must be the number of processes.
        save_distributed_checkpoint: True writes a checkpoint as a directory, each process its own slices
            (loadable by any number of processes); False gathers everything into one file on rank zero.
        process_group_backend: "gloo" or "nccl"; by default the device decides.
        timeout: how long a collective may wait.
        parallelize_fn: ``fn(module, device_mesh) -> module``, which ``setup_module`` applies first: how a Fabric
            program parallelizes its model (Lightning Fabric's form; it may also be passed first, as the only
            positional argument). Without it, the module's ``configure_model`` does that work.
        accelerator: Accepted for Lightning compatibility; the Trainer's (or Fabric's) ``accelerator`` decides.
        parallel_devices: One device per local process. None: from ``devices``.
        cluster_environment: Where ranks, world size and the main address come from. None: detected.
        checkpoint_io: How single-file checkpoints are written and read.
        precision_plugin: Lightning's older name for ``precision``.
        start_method: How the processes start: "popen" (the script again per process), "spawn", "fork" or
            "forkserver".
        precision: A ``Precision`` instance. None: chosen by ``precision=...`` of the Trainer or Fabric.

    Example::

        class Model(fulmen.LightningModule):
            def configure_model(self):
                tp = self.device_mesh["tensor_parallel"]
                parallelize_module(self.mlp, tp, {"up": ColwiseParallel(), "down": RowwiseParallel()})

        trainer = fulmen.Trainer(devices=2, strategy=ModelParallelStrategy())

    In a Fabric program the same work is a function of the module and the mesh, which ``fabric.setup`` calls
    (``fabric.strategy.device_mesh`` is there too once ``fabric.launch()`` has run)::

        def parallelize(model, mesh):
            parallelize_module(model.mlp, mesh["tensor_parallel"], {"up": ColwiseParallel(), "down": RowwiseParallel()})
            return model

        fabric = fulmen.fabric.Fabric(devices=2, strategy=ModelParallelStrategy(parallelize_fn=parallelize))
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int | str = "auto",
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout: timedelta | None = timedelta(minutes=30), *, accelerator: Any = None,
                 parallel_devices: list[torch.device] | None = None, cluster_environment: Any = None,
                 checkpoint_io: Any = None, precision_plugin: Any = None, start_method: str = "popen",
                 precision: Any = None, parallelize_fn: Callable[[nn.Module, Any], nn.Module] | None = None) -> None:
        if callable(data_parallel_size):  # Lightning Fabric's order: ModelParallelStrategy(parallelize_fn, ...)
            if parallelize_fn is not None or tensor_parallel_size != "auto" or save_distributed_checkpoint is not True:
                raise MisconfigurationException(
                    "ModelParallelStrategy was given a function first and more positional arguments (or parallelize_fn "
                    "twice). Pass the sizes by name: ModelParallelStrategy(parallelize_fn=fn, data_parallel_size=..., "
                    "tensor_parallel_size=...).")
            parallelize_fn, data_parallel_size = data_parallel_size, "auto"
        if parallelize_fn is not None and not callable(parallelize_fn):
            raise MisconfigurationException(
                f"ModelParallelStrategy(parallelize_fn={parallelize_fn!r}) is not callable; pass a function "
                "fn(module, device_mesh) that parallelizes the module and returns it.")
        super().__init__(accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin,
                         process_group_backend, timeout, start_method, precision)
        self._parallelize_fn = parallelize_fn
        for name, size in (("data_parallel_size", data_parallel_size), ("tensor_parallel_size", tensor_parallel_size)):
            if size != "auto" and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
                raise MisconfigurationException(
                    f"ModelParallelStrategy({name}={size!r}): pass a number of processes >= 1, or 'auto'.")
        self._data_parallel_size = data_parallel_size
        self._tensor_parallel_size = tensor_parallel_size
        self._save_distributed_checkpoint = save_distributed_checkpoint
        self._device_mesh: Any = None

    def __repr__(self) -> str:
        return (f"ModelParallelStrategy(data_parallel_size={self._data_parallel_size!r}, "
                f"tensor_parallel_size={self._tensor_parallel_size!r}, world_size={self.world_size})")

    @property
    def device_mesh(self) -> Any:
        """The 2-D ``DeviceMesh`` ("data_parallel", "tensor_parallel"); it exists once the processes have met."""
        if self._device_mesh is None:
            raise MisconfigurationException(
                "The device mesh exists once the processes have started: read it in configure_model "
                "(self.device_mesh) or later, not before fit/validate/test/predict.")
        return self._device_mesh

    @property
    def state_dict_type(self) -> str:
        """"sharded" (a directory, each process its slices) or "full" (one file), as ``FSDPStrategy`` names it."""
        return "sharded" if self._save_distributed_checkpoint else "full"

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        """Processes of one tensor-parallel group read the same batches: the data is split over the
        data-parallel dimension only."""
        mesh = self.device_mesh["data_parallel"]
        return {"num_replicas": mesh.size(), "rank": mesh.get_local_rank()}

    @property
    def supports_inference_mode(self) -> bool:
        # DTensor's redistributions keep buffers from an evaluation forward that a later backward would touch
        return False

    # -- set-up ---------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        super().setup_environment()
        if self._device_mesh is None:
            self._device_mesh = self._make_mesh()
        if self.lightning_module is not None:
            self.lightning_module._device_mesh = self._device_mesh  # LightningModule.device_mesh

    def _make_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        dp = self.num_nodes if self._data_parallel_size == "auto" else self._data_parallel_size
        tp = self.num_processes if self._tensor_parallel_size == "auto" else self._tensor_parallel_size
        if dp * tp != self.world_size:
            raise MisconfigurationException(
                f"ModelParallelStrategy(data_parallel_size={self._data_parallel_size!r}, tensor_parallel_size="
                f"{self._tensor_parallel_size!r}) gives a {dp} x {tp} mesh, but the run has {self.world_size} "
                f"processes. Choose sizes whose product is {self.world_size}, or leave them 'auto'.")
        return init_device_mesh(self.root_device.type, (dp, tp), mesh_dim_names=MESH_DIMS)

    @contextmanager
    def tensor_init_context(self, empty_init: bool | None = None) -> Iterator[None]:
        """With ``empty_init=True`` the layers are made on the meta device; ``setup_module`` gives them storage
        (and initial values through ``reset_parameters``) after ``configure_model`` has parallelized them."""
        with torch.device("meta") if empty_init else nullcontext(), self.precision.tensor_init_context():
            yield

    def setup_module(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._parallelize_fn is not None:
            parallelized = self._parallelize_fn(module, self.device_mesh)
            if not isinstance(parallelized, nn.Module):
                raise MisconfigurationException(
                    f"ModelParallelStrategy's parallelize_fn returned a {type(parallelized).__name__}; it must return "
                    "the module it parallelized (end it with `return model`).")
            module = parallelized
        elif not is_overridden("configure_model", module):
            raise MisconfigurationException(
                f"ModelParallelStrategy parallelizes nothing itself, and {type(module).__name__} has no "
                "configure_model. Override configure_model and apply parallelize_module(...) (and fully_shard) there "
                "with self.device_mesh (in a Fabric program: pass ModelParallelStrategy(parallelize_fn=fn) with "
                "fn(module, device_mesh) doing that), or use strategy='ddp' or 'fsdp'.")
        self.lightning_module = module
        if any(isinstance(m, FullyShardedDataParallel) for m in module.modules()):
            raise MisconfigurationException(
                "configure_model wrapped modules in FullyShardedDataParallel (FSDP1); ModelParallelStrategy works with "
                "FSDP2: call torch.distributed.fsdp.fully_shard(module, mesh=self.device_mesh['data_parallel']).")
        _materialize(module, self.root_device)
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.model = module
        return module

    def no_backward_sync(self) -> Callable[[], ContextManager] | None:
        return _no_gradient_sync(self.model)

    # -- checkpoints ----------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Each process's slices, or with ``save_distributed_checkpoint=False`` the full weights on rank zero
        (empty elsewhere). Every process must call it: gathering is collective."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_options(not self._save_distributed_checkpoint))

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if self._save_distributed_checkpoint:
            return get_optimizer_state_dict(self.model, optimizer)
        state = get_optimizer_state_dict(self.model, optimizer, options=_options(True))
        # one file like a single-device run's: parameters by position, as torch.optim keys them
        return sharded_checkpoint.optimizer_state_by_position(state) if self.is_global_zero else {}

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if not self._save_distributed_checkpoint:
            if self.is_global_zero and sharded_checkpoint.kind(filepath) is not None:
                from fulmen.checkpoint import remove

                remove(filepath)  # a directory of the same name from an earlier run
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        if storage_options is not None:
            raise MisconfigurationException(
                "storage_options do not apply to distributed checkpoints: torch.distributed.checkpoint writes them. "
                "Drop storage_options, or pass ModelParallelStrategy(save_distributed_checkpoint=False).")
        # Lightning's layout for this strategy: the weights under "state_dict", so either reads the other's
        sharded_checkpoint.save_distributed(checkpoint, filepath, self, model_key="state_dict")

    def load_checkpoint(self, filepath: Any, weights_only: bool | None = True) -> dict[str, Any]:
        """A directory is read straight into this run's slices; a single file is read whole and scattered by
        ``load_model_state_dict``."""
        if sharded_checkpoint.kind(filepath) != "fsdp":
            return super().load_checkpoint(filepath, weights_only)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        optimizers = self._optimizers if self.training else []
        return sharded_checkpoint.load_distributed(
            filepath, get_model_state_dict(self.model),
            [get_optimizer_state_dict(self.model, opt) for opt in optimizers], weights_only)

    def load_model_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = not _holds_dtensors(state_dict)
        set_model_state_dict(self.model, state_dict, options=StateDictOptions(full_state_dict=full, strict=strict))

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        full = not _holds_dtensors(state)
        if full:
            names = {id(p): n for n, p in self.model.named_parameters()}
            state = sharded_checkpoint.optimizer_state_by_name(
                state, [names[id(p)] for group in optimizer.param_groups for p in group["params"]])
        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=full))


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Give storage to layers made on the meta device (``init_module(empty_init=True)``) and initialize them
    with their ``reset_parameters``; DTensor parameters get their local slice."""
    owners = [m for m in module.modules()
              if any(t.is_meta for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))]
    if not owners:
        return
    module.to_empty(device=device)
    with torch.no_grad():
        for m in owners:
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
