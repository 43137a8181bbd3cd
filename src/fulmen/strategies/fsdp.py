"""Fully sharded data parallelism on PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each process keeps only its shard of every parameter, gradient and optimizer state; a sharded
submodule's full parameters are gathered just before its forward (and backward) and freed after. The
arguments are Lightning's ``FSDPStrategy``'s, mapped onto FSDP2's concepts: ``auto_wrap_policy``
picks the submodules sharded on their own (the root always is), ``sharding_strategy`` becomes the
device mesh and ``reshard_after_forward``, ``mixed_precision``/``cpu_offload`` become FSDP2's
policies. Build large models in ``configure_model``: there they are created on the meta device and
materialized shard by shard, never whole in one process.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.errors import MisconfigurationException
from fulmen.strategies import sharded_checkpoint
from fulmen.strategies._forward import call_as_forward, releasing_after_eval
from fulmen.strategies.ddp import ParallelStrategy
from fulmen._utils import rank_zero_warn

_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
# FSDP1 options with no FSDP2 counterpart, accepted so Lightning code runs: FSDP2 always behaves as asked here
_FSDP1_ONLY = {"limit_all_gathers": True, "use_orig_params": True, "forward_prefetch": None, "backward_prefetch": None,
               "sync_module_states": None}
_STEPS = ("training_step", "validation_step", "test_step", "predict_step")


class FSDPStrategy(ParallelStrategy):
    """Shard parameters, gradients and optimizer states across processes with FSDP2.

    Args:
        auto_wrap_policy: which submodules become their own FSDP unit (gathered and freed on their own):
            a set of module classes, a callable ``policy(module) -> bool``, or an FSDP1 policy
            (``ModuleWrapPolicy``, ``functools.partial(size_based_auto_wrap_policy, ...)``). None: the blocks
            of the model's outermost ``nn.ModuleList``/``nn.Sequential`` that holds two or more of them (a
            transformer's layers, an MLP's linears) are each a unit, so a step holds one block's full parameters
            and gradients at a time instead of the whole model's. ``set()``: the root only (the whole model is
            gathered for every step, as Lightning's FSDPStrategy does without a policy); use it when a step
            reads a block's parameters directly rather than by calling the block.
        activation_checkpointing_policy: the submodules whose activations are recomputed in backward instead
            of kept (same forms as ``auto_wrap_policy``). ``activation_checkpointing`` (classes) is the older name.
        cpu_offload: keep the shards (and the optimizer step) in CPU memory; True or a ``CPUOffloadPolicy``.
        mixed_precision: an FSDP2 ``MixedPrecisionPolicy`` (or FSDP1 ``MixedPrecision``); by default the
            Trainer's ``precision`` decides ("bf16-mixed": bfloat16 compute and all-gathers, float32 shards
            and gradient reduction).
        sharding_strategy: "FULL_SHARD" (free parameters after forward), "SHARD_GRAD_OP" (keep them until
            backward), "NO_SHARD" (replicate, like DDP), "HYBRID_SHARD" (shard within a node, replicate
            across nodes) or "_HYBRID_SHARD_ZERO2".
        state_dict_type: "full" (checkpoints are one file gathered on rank zero, like a single-device run's)
            or "sharded" (a directory, each process writing its shard; loads on any number of processes).
        device_mesh: a ``DeviceMesh``, or a shape ``(replicas, shard_size)`` for hybrid sharding.
        reshard_after_forward: FSDP2's own switch (overrides what ``sharding_strategy`` implies).
        kwargs: further ``fully_shard`` arguments (``shard_placement_fn``, ``ignored_params``). FSDP1's
            ``limit_all_gathers``, ``use_orig_params``, ``forward_prefetch``, ``backward_prefetch`` and
            ``sync_module_states`` are accepted and need nothing: FSDP2 does that by design.
        accelerator: Accepted for Lightning compatibility; the Trainer's ``accelerator`` decides.
        parallel_devices: One device per local process. None: from the Trainer's ``devices``.
        cluster_environment: Where ranks, world size and the main address come from. None: detected.
        checkpoint_io: How checkpoints are written and read.
        precision_plugin: Lightning's older name for ``precision``.
        process_group_backend: "nccl", "gloo"... None: NCCL on CUDA, Gloo otherwise.
        timeout: How long collectives wait for the other processes before failing.
        activation_checkpointing: Older name of ``activation_checkpointing_policy``: module classes to checkpoint.
        start_method: "popen" (the script again per process), "spawn", "fork" or "forkserver".
        precision: A ``Precision`` instance. None: chosen by the Trainer's ``precision``.

    Example::

        trainer = fulmen.Trainer(accelerator="gpu", devices=4, strategy="fsdp", precision="bf16-mixed")
        trainer = fulmen.Trainer(devices=8, strategy=FSDPStrategy(auto_wrap_policy={Block},
                                                                  state_dict_type="sharded"))
    """

    @property
    def supports_inference_mode(self) -> bool:
        # the parameters gathered for an evaluation forward would be inference tensors inside FSDP's flat storage
        return False

    def __init__(self, accelerator: Any = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: Any = None, checkpoint_io: Any = None, precision_plugin: Any = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = timedelta(minutes=30),
                 cpu_offload: Any = None, mixed_precision: Any = None, auto_wrap_policy: Any = None,
                 activation_checkpointing: Any = None, activation_checkpointing_policy: Any = None,
                 sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full", device_mesh: Any = None,
                 reshard_after_forward: bool | int | None = None, start_method: str = "popen", precision: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin,
                         process_group_backend, timeout, start_method, precision)
        name = getattr(sharding_strategy, "name", sharding_strategy)  # FSDP1's ShardingStrategy enum works too
        if not isinstance(name, str) or name.upper() not in _SHARDING:
            raise MisconfigurationException(
                f"FSDPStrategy(sharding_strategy={sharding_strategy!r}) is not known; use one of {', '.join(_SHARDING)}."
            )
        if state_dict_type not in ("full", "sharded"):
            raise MisconfigurationException(
                f"FSDPStrategy(state_dict_type={state_dict_type!r}) is not known; use 'full' (one file) or 'sharded' "
                "(a directory of shards)."
            )
        if activation_checkpointing is not None and activation_checkpointing_policy is not None:
            raise MisconfigurationException(
                "Pass either activation_checkpointing (module classes) or activation_checkpointing_policy, not both."
            )
        for key, needed in _FSDP1_ONLY.items():
            value = kwargs.pop(key, needed)
            if needed is not None and value != needed:
                raise MisconfigurationException(
                    f"FSDPStrategy({key}={value!r}): FSDP2 (fully_shard) always behaves as {key}={needed}; remove it."
                )
        from torch.distributed.fsdp import fully_shard

        accepted = set(inspect.signature(fully_shard).parameters) - {"module", "mesh", "reshard_after_forward",
                                                                      "mp_policy", "offload_policy"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise MisconfigurationException(
                f"FSDPStrategy got {', '.join(map(repr, unknown))}, which FSDP2's fully_shard does not take. It takes "
                f"{', '.join(sorted(accepted))} besides the strategy's own arguments."
            )
        self.sharding_strategy = name.upper()
        self.state_dict_type = state_dict_type
        self.cpu_offload = cpu_offload
        self.mixed_precision = mixed_precision
        self.auto_wrap_policy = auto_wrap_policy
        self.activation_checkpointing_policy = (
            activation_checkpointing_policy if activation_checkpointing is None else activation_checkpointing)
        self._device_mesh_arg = device_mesh
        self._reshard_after_forward = reshard_after_forward
        self._fully_shard_kwargs = kwargs
        self.device_mesh: Any = None

    def __repr__(self) -> str:
        return (f"FSDPStrategy(sharding_strategy={self.sharding_strategy!r}, state_dict_type={self.state_dict_type!r}, "
                f"world_size={self.world_size})")

    # -- set-up ---------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        super().setup_environment()
        if self.device_mesh is None:
            self.device_mesh = self._make_mesh()
        module = self.lightning_module
        if module is not None:
            module._device_mesh = self.device_mesh  # LightningModule.device_mesh, for configure_model

    def _make_mesh(self) -> Any:
        from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

        given = self._device_mesh_arg
        if isinstance(given, DeviceMesh):
            return given
        device_type = self.root_device.type
        if given is not None:
            shape = tuple(given)
        elif self.sharding_strategy in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
            shape = (self.num_nodes, self.world_size // self.num_nodes)
        elif self.sharding_strategy == "NO_SHARD":
            shape = (self.world_size, 1)
        else:
            return init_device_mesh(device_type, (self.world_size,))
        if len(shape) != 2 or shape[0] * shape[1] != self.world_size:
            raise MisconfigurationException(
                f"FSDPStrategy(device_mesh={given!r}) needs a shape (replicas, shard_size) whose product is the "
                f"number of processes, {self.world_size}."
            )
        return init_device_mesh(device_type, shape, mesh_dim_names=("replicate", "shard"))

    @contextmanager
    def tensor_init_context(self, empty_init: bool | None = None) -> Iterator[None]:
        """``Trainer.init_module(empty_init=True)`` builds on the meta device: each shard is made (and
        initialized) when the module is sharded, and a checkpoint fills in the values."""
        if not empty_init:
            with super().tensor_init_context(empty_init):
                yield
            return
        with torch.device("meta"), self.precision.tensor_init_context():
            yield

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        """Layers built in ``configure_model`` go on the meta device: no memory until each shard is made."""
        with torch.device("meta"):
            yield

    def setup_module(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        self.lightning_module = module
        if not isinstance(module, FSDPModule):  # a second run (e.g. test after fit) keeps the sharded module
            module = self.precision.convert_module(module)
            checkpointed = _select(module, self.activation_checkpointing_policy, include_root=False)
            if checkpointed:
                from torch.distributed._composable import checkpoint

                for sub in checkpointed:
                    checkpoint(sub)
            options = self._shard_options()
            policy = self.auto_wrap_policy
            units = _repeated_blocks(module) if policy is None else _select(module, policy, include_root=False)
            for sub in units:
                fully_shard(sub, **options)
            # the root stays gathered through a whole step: the step is its "forward", and a nested self(x)
            # must not free the parameters the rest of the step still uses
            fully_shard(module, **dict(options, reshard_after_forward=False))
            self._materialize(module)
        self.model = module
        return module

    def _shard_options(self) -> dict[str, Any]:
        reshard = self._reshard_after_forward
        if reshard is None:
            reshard = self.sharding_strategy in ("FULL_SHARD", "HYBRID_SHARD", "NO_SHARD")
        options = dict(mesh=self.device_mesh, reshard_after_forward=reshard, **self._fully_shard_kwargs)
        policy = self._mixed_precision_policy()
        if policy is not None:
            options["mp_policy"] = policy
        offload = self.cpu_offload
        if offload:
            from torch.distributed.fsdp import CPUOffloadPolicy

            # pinned memory needs a GPU to pin for; on a CPU-only machine the shards simply stay where they are
            options["offload_policy"] = offload if isinstance(offload, CPUOffloadPolicy) else CPUOffloadPolicy(
                pin_memory=torch.cuda.is_available())
        return options

    def _mixed_precision_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        given = self.mixed_precision
        if isinstance(given, MixedPrecisionPolicy):
            return given
        if given is not None:  # FSDP1's MixedPrecision: the same dtypes (FSDP2 keeps buffers as they are)
            return MixedPrecisionPolicy(param_dtype=getattr(given, "param_dtype", None),
                                        reduce_dtype=getattr(given, "reduce_dtype", None))
        name = getattr(self.precision, "name", "32-true")
        if name == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if name == "16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
        return None  # "*-true": the module itself was converted before sharding

    def _materialize(self, module: nn.Module) -> None:
        """Give storage to what ``configure_model`` built on the meta device, and initialize it shard by shard."""
        meta_owners = [m for m in module.modules()
                       if any(t.is_meta for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))]
        if not meta_owners:
            return
        # to_empty must run on the root (FSDP re-points its shards there); keep the tensors that were real
        keep = {name: t.detach().clone() for name, t in (*module.named_parameters(), *module.named_buffers())
                if not t.is_meta}
        module.to_empty(device=self.root_device)
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        with torch.no_grad():
            for name, value in keep.items():
                tensors[name].copy_(value)
        missing = sorted({type(m).__name__ for m in meta_owners if not callable(getattr(m, "reset_parameters", None))})
        if missing:
            rank_zero_warn(
                f"configure_model built {', '.join(missing)} on the meta device, but they have no reset_parameters() "
                "to initialize their shards, so their values are undefined. Give them reset_parameters(), or load "
                "weights into them (e.g. trainer.fit(..., ckpt_path=...))."
            )
        # every process holds a different shard: draw them from different streams, or the shards repeat
        # (CUDA meshes have DTensor's own offset tracking; the caller's RNG state is left as it was)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            if self.root_device.type == "cpu":
                torch.manual_seed(torch.initial_seed() + self.global_rank)
                warnings.filterwarnings("ignore", message="DTensor random operators may not have complete support")
            for m in meta_owners:
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()

    def setup_optimizers(self, optimizers: list[Optimizer]) -> list[Optimizer]:
        from torch.distributed.tensor import DTensor

        for opt in optimizers:
            for group in opt.param_groups:
                if any(not isinstance(p, DTensor) for p in group["params"] if p.requires_grad):
                    raise MisconfigurationException(
                        "configure_optimizers handed the optimizer parameters that are not the sharded ones. Create "
                        "the optimizer from self.parameters() inside configure_optimizers (it runs after sharding), "
                        "not from tensors kept earlier."
                    )
        self._optimizers = list(optimizers)  # a sharded checkpoint is read straight into their states
        return optimizers

    # -- what the loops call --------------------------------------------------------------------
    def step_function(self, name: str) -> Callable[..., Any]:
        """Every step runs as the root module's forward, so FSDP gathers the root's own parameters for it
        (a step may use them directly, not only through ``self(x)``)."""
        module = self.lightning_module
        step = getattr(module, name)
        if self.model is not module:
            return step
        run = functools.partial(call_as_forward, module, module, step)
        if name == "training_step":
            return run
        # the root (and every unit under SHARD_GRAD_OP) keeps its parameters gathered after its forward
        return releasing_after_eval(run, functools.partial(_reshard, _units(module)))

    def no_backward_sync(self) -> Callable[[], ContextManager] | None:
        return _no_gradient_sync(self.model)

    # clip_gradients: torch.nn.utils.clip_grad_norm_ over the sharded (DTensor) gradients computes the
    # norm of the whole model across processes, so the base implementation is already right.

    # -- checkpoints ----------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Full weights on rank zero (empty elsewhere), or each process's shards for "sharded" checkpoints.
        Every process must call it: gathering is collective."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        if not _is_sharded(self.model):
            return self.lightning_module.state_dict()
        return get_model_state_dict(self.model, options=_options(self.state_dict_type == "full"))

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if not _is_sharded(self.model):
            return optimizer.state_dict()
        if self.state_dict_type == "sharded":
            return get_optimizer_state_dict(self.model, optimizer)
        state = get_optimizer_state_dict(self.model, optimizer, options=_options(True))
        # one file like a single-device run's: parameters by position, as torch.optim keys them
        return sharded_checkpoint.optimizer_state_by_position(state) if self.is_global_zero else {}

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self.state_dict_type == "full" or not _is_sharded(self.model):
            if self.is_global_zero and sharded_checkpoint.kind(filepath) is not None:
                from fulmen.checkpoint import remove

                remove(filepath)  # a sharded directory of the same name from an earlier run
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        if storage_options is not None:
            raise MisconfigurationException(
                "storage_options do not apply to sharded FSDP checkpoints: torch.distributed.checkpoint writes them."
            )
        sharded_checkpoint.save_distributed(checkpoint, filepath, self)

    def load_checkpoint(self, filepath: Any, weights_only: bool | None = True) -> dict[str, Any]:
        """A sharded directory is read straight into this run's shards (any number of processes may have
        written it); a single file is read whole and scattered by ``load_model_state_dict``."""
        if sharded_checkpoint.kind(filepath) != "fsdp" or not _is_sharded(self.model):
            return super().load_checkpoint(filepath, weights_only)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        _reshard(_units(self.model))
        optimizers = self._optimizers if self.training else []
        # this run's own (sharded) state dicts say which slice of each tensor to read
        return sharded_checkpoint.load_distributed(
            filepath, get_model_state_dict(self.model),
            [get_optimizer_state_dict(self.model, opt) for opt in optimizers], weights_only)

    def load_model_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        if not _is_sharded(self.model):
            return super().load_model_state_dict(state_dict, strict)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = not _holds_dtensors(state_dict)
        _reshard(_units(self.model))
        set_model_state_dict(self.model, state_dict, options=StateDictOptions(full_state_dict=full, strict=strict))

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        if not _is_sharded(self.model):
            return super().load_optimizer_state_dict(optimizer, state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        full = not _holds_dtensors(state)
        if full and not state.get("state"):
            # a stateless optimizer (plain SGD): only the hyperparameters to restore, and torch's loader cannot
            # place an empty state on a device
            for group, saved in zip(optimizer.param_groups, state.get("param_groups", [])):
                group.update({k: v for k, v in saved.items() if k != "params"})
            return
        if full:
            names = {id(p): n for n, p in self.model.named_parameters()}
            state = sharded_checkpoint.optimizer_state_by_name(
                state, [names[id(p)] for group in optimizer.param_groups for p in group["params"]])
        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=full))


def _units(module: nn.Module) -> list[Any]:
    """The FSDP units inside ``module`` (the root included when it is one)."""
    from torch.distributed.fsdp import FSDPModule

    return [sub for sub in module.modules() if isinstance(sub, FSDPModule)]


def _reshard(units: list[Any]) -> None:
    """Free the gathered parameters that a forward without backward left behind (evaluation, with
    reshard_after_forward=False as under SHARD_GRAD_OP and for the root): they would stay whole until the next
    training step, and loading writes into the shards while the next forward would reuse the stale copies."""
    for unit in units:
        unit.reshard()


def _is_sharded(module: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _options(full: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _no_gradient_sync(module: Any) -> Callable[[], ContextManager] | None:
    """A context in which backward skips the gradient reduce-scatter of a fully_shard root (FSDP2): full gradients
    accumulate locally and the window's last backward reduces them all at once. None without fully_shard at the root."""
    if not hasattr(module, "set_requires_gradient_sync"):
        return None

    @contextmanager
    def no_sync() -> Iterator[None]:
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    return no_sync


def _holds_dtensors(state: Any) -> bool:
    from torch.distributed.tensor import DTensor

    if isinstance(state, DTensor):
        return True
    if isinstance(state, dict):
        return any(_holds_dtensors(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_holds_dtensors(v) for v in state)
    return False


def _repeated_blocks(root: nn.Module) -> list[nn.Module]:
    """The default units: the elements of the outermost ``nn.ModuleList``/``nn.Sequential`` holding two or more
    blocks with parameters. Elements holding under 1% of the container's parameters (a norm between linears)
    stay in the unit above them, and so does a block sharing a parameter with anything outside it (tied
    weights must live in one unit)."""
    registrations: dict[int, int] = {}
    for _, p in root.named_parameters(remove_duplicate=False):
        registrations[id(p)] = registrations.get(id(p), 0) + 1

    def own(block: nn.Module) -> bool:
        inside: dict[int, int] = {}
        for _, p in block.named_parameters(remove_duplicate=False):
            inside[id(p)] = inside.get(id(p), 0) + 1
        return all(registrations[i] == n for i, n in inside.items())

    chosen: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if module is not root and isinstance(module, (nn.ModuleList, nn.Sequential)):
            total = sum(p.numel() for p in module.parameters())
            blocks = [c for c in module.children()
                      if total and 100 * sum(p.numel() for p in c.parameters()) >= total and own(c)]
            if len(blocks) >= 2:
                chosen.extend(blocks)
                return
        for child in module.children():
            visit(child)

    visit(root)
    return chosen


def _select(root: nn.Module, policy: Any, include_root: bool) -> list[nn.Module]:
    """The submodules ``policy`` picks, children before their parents (the order fully_shard needs)."""
    if policy is None:
        return []
    decide = _policy_function(policy)
    chosen: list[nn.Module] = []
    covered: set[int] = set()  # parameters inside an already chosen descendant (for size-based policies)
    for module in reversed(list(root.modules())):
        if module is root and not include_root:
            continue
        own = [p for p in module.parameters() if id(p) not in covered]
        if decide(module, sum(p.numel() for p in own)):
            chosen.append(module)
            covered.update(id(p) for p in own)
    return chosen


def _policy_function(policy: Any) -> Callable[[nn.Module, int], bool]:
    if isinstance(policy, type) and issubclass(policy, nn.Module):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
            raise MisconfigurationException(
                f"A wrap or checkpointing policy given as a collection must hold nn.Module classes; got {policy!r}."
            )
        return lambda module, numel: isinstance(module, classes)
    classes = getattr(policy, "_module_classes", None)  # FSDP1's ModuleWrapPolicy
    if classes is not None:
        return lambda module, numel: isinstance(module, tuple(classes))
    if not callable(policy):
        raise MisconfigurationException(
            f"Policy {policy!r} is neither a set of module classes nor a callable deciding per module."
        )
    try:
        params = inspect.signature(policy).parameters
    except (TypeError, ValueError):
        params = {}
    if "nonwrapped_numel" in params:  # FSDP1's signature, e.g. partial(size_based_auto_wrap_policy, ...)
        return lambda module, numel: bool(policy(module=module, recurse=False, nonwrapped_numel=numel))
    return lambda module, numel: bool(policy(module))
