"""``Fabric``: devices, distribution, precision, checkpoints, loggers and launching for a loop you write.

It is a thin face over the Trainer's own strategies (``fulmen.strategies``): the same DDP, FSDP and
DeepSpeed objects set the module and optimizers up, run backward and the optimizer step, and save and
load. The flags are read by the Trainer's own function (``resolve_hardware``).
"""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen._utils import apply_to_collection, collect_rng_states, move_data_to_device, restore_rng_states
from fulmen._utils import seed_everything as _seed_everything
from fulmen.errors import CheckpointError, FulmenError, MisconfigurationException
from fulmen.fabric.wrappers import _Counter, _FabricDataLoader, _FabricModule, _FabricOptimizer
from fulmen.strategies.strategy import Strategy
from fulmen.trainer import data as _data
from fulmen.trainer.trainer import resolve_hardware

# what `fabric run` (and `fulmen run`) export for the processes they start: Fabric's defaults then
_CLI_FLAGS = {"accelerator": "LT_ACCELERATOR", "strategy": "LT_STRATEGY", "devices": "LT_DEVICES",
              "num_nodes": "LT_NUM_NODES", "precision": "LT_PRECISION"}
_DEFAULTS = {"accelerator": "auto", "strategy": "auto", "devices": "auto", "num_nodes": 1, "precision": None}
_RESUME_KEY = "fulmen_resume"  # each rank's random states and loader positions, in a checkpoint


def _using_cli() -> bool:
    return bool(int(os.environ.get("LT_CLI_USED", "0") or 0))


def _from_cli(name: str, given: Any) -> Any:
    value = os.environ.get(_CLI_FLAGS[name]) if _using_cli() else None
    if value is None:
        return given
    if given != _DEFAULTS[name] and str(given) != value:
        from fulmen._utils import rank_zero_warn

        rank_zero_warn(f"Fabric({name}={given!r}) differs from the command line's {_CLI_FLAGS[name]}={value!r}; "
                       "the command line's value is used.")
    return int(value) if name == "num_nodes" else value


class _LoaderOwner:
    """What ``trainer.data.distribute`` reads from its owner, for Fabric's loaders."""

    overfit_batches = 0

    def __init__(self, strategy: Strategy, use_distributed_sampler: bool) -> None:
        self.strategy, self.use_distributed_sampler = strategy, use_distributed_sampler
        self.world_size, self.global_rank = strategy.world_size, strategy.global_rank


class Fabric:
    """Accelerators, multi-process strategies, precision, checkpoints and loggers for a hand-written loop.

    Args:
        accelerator: "auto", "cpu", "cuda" (or "gpu"), "mps".
        strategy: "auto", "ddp", "ddp_spawn", "ddp_fork", "fsdp", "deepspeed", "deepspeed_stage_2", ... or a
            strategy object (``fulmen.fabric.strategies``).
        devices: how many devices (processes), a list of indices, or "auto".
        num_nodes: how many machines.
        precision: "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true" (or 32, 16, "bf16").
        plugins: a Precision object, a checkpoint IO or a cluster environment.
        callbacks: objects whose methods ``fabric.call(name, ...)`` calls.
        loggers: loggers (``fulmen.fabric.loggers``) that ``fabric.log`` writes to.

    Example::

        fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
        fabric.launch()
        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        loader = fabric.setup_dataloaders(loader)
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    """

    def __init__(self, *, accelerator: str | Any = "auto", strategy: str | Strategy = "auto",
                 devices: list[int] | str | int = "auto", num_nodes: int = 1, precision: Any = None,
                 plugins: Any = None, callbacks: Any = None, loggers: Any = None) -> None:
        given = {"accelerator": accelerator, "strategy": strategy, "devices": devices, "num_nodes": num_nodes,
                 "precision": precision}
        self._accelerator, self._device_ids, self._strategy = resolve_hardware(
            *(_from_cli(name, value) for name, value in given.items()), plugins)
        self._callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks] if callbacks else []
        self._loggers = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers] if loggers else []
        self._counter = _Counter()
        self._models: list[_FabricModule] = []
        self._launched = False
        if _using_cli():  # the command line started every process already: set them up now
            self._strategy.setup_environment()
            self._launched = True

    # -- properties -------------------------------------------------------------------------------
    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def accelerator(self) -> Any:
        """The accelerator object (``fulmen.accelerators``: ``CPUAccelerator``, ``CUDAAccelerator``, ...)."""
        return self._accelerator

    @property
    def device(self) -> torch.device:
        """This process's ``torch.device``."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @property
    def logger(self) -> Any:
        """The first logger (None without loggers)."""
        return self._loggers[0] if self._loggers else None

    # -- launching ----------------------------------------------------------------------------------
    def launch(self, function: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes of the strategy and set each up; with ``function``, run ``function(fabric, *args,
        **kwargs)`` in every process and return its result (rank 0's, for spawned strategies).

        ``strategy="ddp"`` re-runs your script once per extra process; under torchrun or SLURM the processes exist
        already and are only set up.

        Example::

            fabric = Fabric(devices=2, strategy="ddp")
            fabric.launch()            # the rest of the script runs in both processes

            def train(fabric, lr): ...
            fabric = Fabric(devices=2, strategy="ddp_spawn")
            result = fabric.launch(train, 0.1)   # rank 0's return value
        """
        if _using_cli():
            raise FulmenError(
                "This process was started by `fulmen run` (or `fabric run`), which created every process already, "
                "so Fabric.launch() has nothing to start. Remove the fabric.launch() call, or run the script with "
                "plain `python` to let launch() start the processes."
            )
        if self._launched:
            raise FulmenError(
                "Fabric.launch() was called in a process that is already launched. Call launch() once, at the start "
                "of the program (and not from inside the function it runs)."
            )
        if function is not None:
            import inspect

            if not callable(function):
                raise MisconfigurationException(
                    f"Fabric.launch({function!r}) needs a function, not its result: write fabric.launch(train), "
                    "not fabric.launch(train())."
                )
            try:
                params = inspect.signature(function).parameters
            except (TypeError, ValueError):
                params = {"fabric": None}
            if not params:
                raise MisconfigurationException(
                    f"Fabric.launch({getattr(function, '__name__', function)}) calls it with the Fabric object as first "
                    "argument; give it a parameter for it: def train(fabric): ..."
                )
        elif getattr(self._strategy, "_start_method", "popen") != "popen":
            raise MisconfigurationException(
                f"{type(self._strategy).__name__} with start_method={self._strategy._start_method!r} runs a function "
                "in new processes: pass it, fabric.launch(train), with `def train(fabric): ...` holding the program."
            )
        self._launched = True
        return self._strategy.launch(_run_launched, self, function, args, kwargs)

    def _check_launched(self) -> None:
        if not self._launched and self._strategy.world_size > 1:
            raise FulmenError(
                f"{type(self._strategy).__name__} runs {self._strategy.world_size} processes, which start in "
                "fabric.launch(). Call fabric.launch() right after creating Fabric (or fabric.launch(train) with "
                "your program in `def train(fabric)`), before setting anything up."
            )

    # -- set-up -------------------------------------------------------------------------------------
    def setup(self, module: nn.Module, *optimizers: Optimizer, move_to_device: bool = True,
              _reapply_compile: bool = True) -> Any:
        """Set the module and its optimizers up for the strategy (moved, wrapped in DDP/FSDP/the DeepSpeed
        engine, converted to the precision); returns them wrapped, in the order given.

        Example::

            model, optimizer = fabric.setup(model, optimizer)
            model = fabric.setup(model)   # no optimizer: evaluation only
        """
        self._check_launched()
        self._check_not_set_up(module, optimizers, "setup")
        strategy = self._strategy
        strategy.training = bool(optimizers) or not _is_deepspeed(strategy)
        names = {id(p): n for n, p in module.named_parameters()}
        forward_module = self._setup_module(module, move_to_device)
        if not optimizers:
            return self._wrap(forward_module, module)
        _follow_replaced_parameters(module, optimizers, names)
        setup = strategy.setup_optimizers(list(optimizers))
        forward_module = strategy.model if _is_deepspeed(strategy) else forward_module
        return (self._wrap(forward_module, module), *(_FabricOptimizer(o, strategy, self._callbacks) for o in setup))

    def setup_module(self, module: nn.Module, move_to_device: bool = True, _reapply_compile: bool = True) -> _FabricModule:
        """Set only the module up (create its optimizer afterwards from the set-up parameters, as FSDP needs,
        then ``setup_optimizers``).

        Example::

            model = fabric.setup_module(model)
            optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters()))
        """
        self._check_launched()
        self._check_not_set_up(module, (), "setup_module")
        self._strategy.training = True
        return self._wrap(self._setup_module(module, move_to_device), module)

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        """Set up optimizers made from an already set-up module's parameters; one, or a tuple of several.

        Example::

            optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
        """
        self._check_launched()
        if _is_deepspeed(self._strategy):
            raise MisconfigurationException(
                "DeepSpeed builds its engine from the module and the optimizer together: write "
                "model, optimizer = fabric.setup(model, optimizer) instead of setup_module + setup_optimizers."
            )
        if not optimizers:
            raise MisconfigurationException("setup_optimizers() needs at least one optimizer: setup_optimizers(optimizer).")
        self._check_not_set_up(None, optimizers, "setup_optimizers")
        setup = self._strategy.setup_optimizers(list(optimizers))
        wrapped = [_FabricOptimizer(o, self._strategy, self._callbacks) for o in setup]
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def setup_dataloaders(self, *dataloaders: Any, use_distributed_sampler: bool = True,
                          move_to_device: bool = True) -> Any:
        """Give each loader a distributed sampler (several processes; ``use_distributed_sampler=False`` keeps
        yours) and move its batches to the device (``move_to_device=False`` leaves them). One loader, or a list.

        Example::

            train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)
        """
        self._check_launched()
        if not dataloaders:
            raise MisconfigurationException("setup_dataloaders() needs at least one loader: setup_dataloaders(loader).")
        owner = _LoaderOwner(self._strategy, use_distributed_sampler)
        out = []
        for loader in dataloaders:
            if isinstance(loader, _FabricDataLoader):
                raise MisconfigurationException(
                    "This loader was set up already; pass the loader you created to setup_dataloaders() only once."
                )
            loader = _data.distribute(owner, loader, "train")
            _data.prepare_workers(loader, self.global_rank)
            # CPU batches are where they belong already: no walk through each batch on the hot path
            out.append(_FabricDataLoader(loader, device=self.device if move_to_device else None,
                                         move=self.device.type != "cpu"))
        return out[0] if len(out) == 1 else out

    def _check_not_set_up(self, module: Any, optimizers: Sequence[Any], method: str) -> None:
        if isinstance(module, _FabricModule):
            raise MisconfigurationException(
                f"{method}() was given a module that was set up already. Set each module up once, keep what setup "
                "returns (model = fabric.setup(model)) and use that from then on."
            )
        if any(isinstance(o, _FabricOptimizer) for o in optimizers):
            raise MisconfigurationException(
                f"{method}() was given an optimizer that was set up already. Set each optimizer up once, keep what "
                "setup returns (model, optimizer = fabric.setup(model, optimizer)) and use that from then on."
            )

    def _setup_module(self, module: nn.Module, move_to_device: bool) -> nn.Module:
        strategy = self._strategy
        if not move_to_device and strategy.world_size == 1:
            return strategy.precision.convert_module(module)
        return strategy.setup_module(module)

    def _wrap(self, forward_module: nn.Module, module: nn.Module) -> _FabricModule:
        wrapped = _FabricModule(forward_module, self._strategy, module, self._counter)
        self._models.append(wrapped)
        return wrapped

    # -- the step -----------------------------------------------------------------------------------
    def backward(self, tensor: Tensor, *args: Any, model: _FabricModule | None = None, **kwargs: Any) -> None:
        """``tensor.backward()`` through the strategy and precision (gradient scaling, DeepSpeed's engine).

        Example::

            loss = model(x).sum()
            fabric.backward(loss)
        """
        if not self._counter.forwarded:
            if not self._models:
                raise FulmenError(
                    "fabric.backward() was called before any module was set up, so gradients would not be synchronized "
                    "or scaled. Set the module up first: model, optimizer = fabric.setup(model, optimizer)."
                )
            raise FulmenError(
                "fabric.backward() got a loss that no set-up module computed: the module was called as it was before "
                "setup. Use what setup returns: model, optimizer = fabric.setup(model, optimizer); loss = model(x)."
            )
        strategy = self._strategy
        if model is not None:  # several engines (DeepSpeed): the one this loss belongs to
            with _bound(strategy, model._forward_module, model.module):
                strategy.backward(tensor, None, *args, module=_PLAIN, **kwargs)
            return
        strategy.backward(tensor, None, *args, module=_PLAIN, **kwargs)

    def clip_gradients(self, module: _FabricModule, optimizer: Optimizer, clip_val: float | None = None,
                       max_norm: float | None = None, norm_type: float = 2.0,
                       error_if_nonfinite: bool = True) -> Tensor | None:
        """Clip the gradients of ``module`` by value (``clip_val``) or by their total norm (``max_norm``); with
        ``max_norm`` returns the total norm before clipping (over every process's shard, under FSDP).

        Example::

            norm = fabric.clip_gradients(model, optimizer, max_norm=1.0)
        """
        if not isinstance(module, _FabricModule):
            raise MisconfigurationException(
                "clip_gradients() needs the module that setup returned: model, optimizer = fabric.setup(model, "
                "optimizer); fabric.clip_gradients(model, optimizer, max_norm=1.0)."
            )
        if (clip_val is None) == (max_norm is None):
            raise MisconfigurationException(
                "clip_gradients() needs exactly one of clip_val= (clip each value) or max_norm= (clip the total norm)."
            )
        opt = optimizer.optimizer if isinstance(optimizer, _FabricOptimizer) else optimizer
        strategy = self._strategy
        strategy.precision.unscale_gradients(opt)
        if _is_deepspeed(strategy):
            strategy.clip_gradients(opt, clip_val if clip_val is not None else max_norm,
                                    "value" if clip_val is not None else "norm")
            return None
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if clip_val is not None:
            torch.nn.utils.clip_grad_value_(params, clip_val)
            return None
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type,
                                              error_if_nonfinite=error_if_nonfinite)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def autocast(self) -> ContextManager:
        """The precision's autocast, for computations outside the set-up module's forward.

        Example::

            with fabric.autocast():
                loss = criterion(model(x), y)
        """
        return self._strategy.precision.forward_context()

    def no_backward_sync(self, module: _FabricModule, enabled: bool = True) -> ContextManager:
        """Skip the gradient synchronization of backward calls inside (accumulating gradients); the first
        backward outside synchronizes everything.

        Example::

            for i, (x, y) in enumerate(loader):
                boundary = (i + 1) % 4 == 0
                with fabric.no_backward_sync(model, enabled=not boundary):
                    fabric.backward(loss_fn(model(x), y))
                if boundary:
                    optimizer.step(); optimizer.zero_grad()
        """
        if not isinstance(module, _FabricModule):
            raise MisconfigurationException(
                "no_backward_sync() needs the module that setup returned: model = fabric.setup(model); "
                "with fabric.no_backward_sync(model): ..."
            )
        if not enabled:
            return nullcontext()
        wrapper = module._forward_module
        if hasattr(wrapper, "no_sync"):  # DDP
            return wrapper.no_sync()
        with _bound(self._strategy, wrapper, module.module):
            factory = self._strategy.no_backward_sync()
        return factory() if factory is not None else nullcontext()

    def init_tensor(self) -> ContextManager:
        """Tensors created inside land on the device, in the precision's dtype.

        Example::

            with fabric.init_tensor():
                mask = torch.ones(8, 8)
        """
        return self._strategy.tensor_init_context()

    def init_module(self, empty_init: bool | None = None) -> ContextManager:
        """Build the model inside: on the device in the precision's dtype; ``empty_init=True`` skips the weights'
        initialization (FSDP builds on the meta device, and each shard is made when the model is set up).

        Example::

            with fabric.init_module(empty_init=True):
                model = GPT(config)
            model = fabric.setup(model)
        """
        self._check_launched()
        return self._strategy.tensor_init_context(empty_init=empty_init)

    # -- data and collectives -----------------------------------------------------------------------
    def to_device(self, obj: Any) -> Any:
        """Move a tensor, a module or a collection of tensors to ``fabric.device``."""
        if isinstance(obj, nn.Module):
            return obj.to(self.device)
        return move_data_to_device(obj, self.device)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    def barrier(self, name: str | None = None) -> None:
        self._strategy.barrier(name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._strategy.broadcast(obj, src)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Each process's tensor (or collection of tensors), stacked on a new first dimension."""
        data = apply_to_collection(data, (int, float), lambda v: torch.tensor(v, device=self.device))
        return self._strategy.all_gather(data, group=group, sync_grads=sync_grads)

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        """Reduce a tensor (or collection) over every process: "mean" (default), "sum", "max", "min"."""
        data = apply_to_collection(data, (int, float), lambda v: torch.tensor(v, device=self.device))
        return apply_to_collection(data, Tensor, self._strategy.reduce, group=group, reduce_op=reduce_op)

    @contextmanager
    def rank_zero_first(self, local: bool = False) -> Iterator[None]:
        """Rank 0 (``local=True``: each node's local rank 0) runs the block first, the others after it, e.g.
        for a download.

        Example::

            with fabric.rank_zero_first():
                dataset = MNIST("data", download=True)
        """
        rank = self.local_rank if local else self.global_rank
        if rank > 0:
            self.barrier("rank_zero_first")
        yield
        if rank == 0:
            self.barrier("rank_zero_first")

    # -- callbacks and loggers ----------------------------------------------------------------------
    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook_name(*args, **kwargs)`` on every callback that has it.

        Example::

            fabric = Fabric(callbacks=[MyCallback()])
            fabric.call("on_train_epoch_end", results=results)
        """
        for cb in self._callbacks:
            method = getattr(cb, hook_name, None)
            if callable(method):
                method(*args, **kwargs)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Send one value to every logger."""
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Send a dict of values (tensors become numbers) to every logger.

        Example::

            fabric.log_dict({"loss": loss, "acc": acc}, step=i)
        """
        if not self._loggers:
            return
        metrics = apply_to_collection(dict(metrics), Tensor, lambda t: t.item() if t.numel() == 1 else t.tolist())
        for logger in self._loggers:
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool | None = None, verbose: bool = True) -> int:
        """Seed every random generator (and, with ``workers=True``, every loader worker); returns the seed."""
        return _seed_everything(seed, workers=bool(workers), verbose=verbose)

    # -- checkpoints --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, state: dict[str, Any], filter: dict[str, Callable] | None = None) -> None:
        """Save ``state``: set-up modules and optimizers as their state dicts (sharded strategies write a
        directory of shards), loaders as their positions, anything else as it is. With a loader in ``state``,
        every process's random states are saved too, so ``fabric.load`` resumes the loop exactly.

        ``filter`` maps a key of ``state`` to ``fn(name, value) -> bool`` choosing which entries of that object's
        state dict to keep.

        Example::

            state = {"model": model, "optimizer": optimizer, "loader": loader, "step": step}
            fabric.save("checkpoint.ckpt", state)
        """
        if filter is not None:
            unknown = [k for k in filter if k not in state]
            if unknown or not all(callable(f) for f in filter.values()):
                raise MisconfigurationException(
                    f"save(filter=...) maps keys of `state` to functions fn(name, value) -> bool; {unknown or filter} "
                    "does not fit that."
                )
        strategy = self._strategy
        checkpoint: dict[str, Any] = {}
        sharded_key = None
        loaders: dict[str, Any] = {}
        for key, value in state.items():
            if isinstance(value, _FabricModule):
                if _writes_shards(strategy):
                    if sharded_key is not None:
                        raise MisconfigurationException(
                            f"save(): the sharded checkpoint of {type(strategy).__name__} holds one model, and `state` "
                            f"has two ({sharded_key!r}, {key!r}). Save them in two calls, or use state_dict_type='full'."
                        )
                    sharded_key = key
                with _bound(strategy, value._forward_module, value.module):
                    sd = strategy.lightning_module_state_dict()
            elif isinstance(value, _FabricOptimizer):
                with _bound(strategy, *self._model_of(value)):
                    sd = strategy.optimizer_state(value.optimizer)
            elif isinstance(value, _FabricDataLoader):
                loaders[key] = value.state_dict()
                continue
            else:
                sd = _plain(key, value)
            if filter is not None and key in filter and isinstance(sd, dict):
                sd = {k: v for k, v in sd.items() if filter[key](k, v)}
            checkpoint[key] = sd
        if loaders:  # each rank's own: its random states and its loaders' positions
            mine = {"rng": collect_rng_states(), "loaders": loaders}
            checkpoint[_RESUME_KEY] = {"world_size": self.world_size,
                                       "ranks": strategy.all_gather_object(mine) if self.world_size > 1 else [mine]}
        if sharded_key is None:
            strategy.save_checkpoint(checkpoint, path)
        else:
            checkpoint = _to_trainer_layout(checkpoint, sharded_key, state)
            with _bound(strategy, state[sharded_key]._forward_module, state[sharded_key].module):
                strategy.save_checkpoint(checkpoint, path)
        strategy.barrier("fabric.save")

    def load(self, path: str | os.PathLike, state: dict[str, Any] | None = None, strict: bool = True,
             weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint written by ``save``: set-up modules, optimizers and loaders in ``state`` are restored
        in place, other keys of ``state`` are replaced by the saved values; returns what the checkpoint holds
        beyond ``state``. Without ``state``, returns the whole checkpoint. ``strict=False`` lets ``state`` ask for
        keys the checkpoint lacks and modules load partially matching weights.

        Example::

            state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
            remainder = fabric.load("checkpoint.ckpt", state)
            step = state["step"]
        """
        strategy = self._strategy
        modules = [v for v in (state or {}).values() if isinstance(v, _FabricModule)]
        sharded = modules[0] if modules and _writes_shards(strategy) else None  # the module the shards load into
        if sharded is not None:
            with _bound(strategy, sharded._forward_module, sharded.module):
                checkpoint = strategy.load_checkpoint(path, weights_only=weights_only)
            checkpoint = _from_trainer_layout(checkpoint)
        else:
            checkpoint = strategy.load_checkpoint(path, weights_only=weights_only)
        resume = checkpoint.pop(_RESUME_KEY, None)
        if state is None:
            return checkpoint
        missing = [k for k in state
                   if k not in checkpoint and not (resume and any(k in r["loaders"] for r in resume["ranks"]))]
        if missing and strict:
            raise CheckpointError(
                f"{os.fspath(path)!r} holds no {', '.join(map(repr, missing))} (it has {sorted(checkpoint)}). Load with "
                "strict=False to leave those as they are, or remove them from `state`."
            )
        for key, value in list(state.items()):
            if isinstance(value, _FabricDataLoader) or key not in checkpoint:
                continue
            saved = checkpoint.pop(key)
            if isinstance(value, _FabricModule):
                with _bound(strategy, value._forward_module, value.module):
                    strategy.load_model_state_dict(saved, strict=strict)
            elif isinstance(value, _FabricOptimizer):
                with _bound(strategy, *self._model_of(value)):
                    strategy.load_optimizer_state_dict(value.optimizer, saved)
            elif isinstance(value, nn.Module):
                value.load_state_dict(saved, strict=strict)
            elif isinstance(value, Optimizer) or (hasattr(value, "load_state_dict") and isinstance(saved, dict)
                                                  and not isinstance(value, dict)):
                value.load_state_dict(saved)
            else:
                state[key] = saved
        if resume is not None:
            self._resume(resume, state, strict)
        return checkpoint

    def load_raw(self, path: str | os.PathLike, obj: nn.Module | Optimizer, strict: bool = True) -> None:
        """Load a plain state dict file (``torch.save(model.state_dict(), path)``, not a ``fabric.save`` checkpoint)
        into a module or optimizer, set up or not.

        Example::

            fabric.load_raw("pretrained.pt", model)
        """
        raw = self._strategy.checkpoint_io.load_checkpoint(path, map_location="cpu")
        if isinstance(obj, _FabricModule):
            with _bound(self._strategy, obj._forward_module, obj.module):
                self._strategy.load_model_state_dict(raw, strict=strict)
        elif isinstance(obj, _FabricOptimizer):
            self._strategy.load_optimizer_state_dict(obj.optimizer, raw)
        elif isinstance(obj, nn.Module):
            obj.load_state_dict(raw, strict=strict)
        elif isinstance(obj, Optimizer):
            obj.load_state_dict(raw)
        else:
            raise MisconfigurationException(
                f"load_raw() fills a module or an optimizer, not a {type(obj).__name__}; use fabric.load(path) for "
                "other objects."
            )

    def _resume(self, resume: dict[str, Any], state: dict[str, Any], strict: bool) -> None:
        if resume["world_size"] != self.world_size:
            raise CheckpointError(
                f"The checkpoint's loader positions were saved by {resume['world_size']} processes and this run has "
                f"{self.world_size}; each process resumes its own share of the data. Resume with "
                f"devices={resume['world_size']}, or leave the loader out of `state` to start its epoch anew."
            )
        mine = resume["ranks"][self.global_rank]
        for key, value in state.items():
            if isinstance(value, _FabricDataLoader) and key in mine["loaders"]:
                value.load_state_dict(mine["loaders"][key])
        restore_rng_states(mine["rng"])

    def _model_of(self, optimizer: _FabricOptimizer) -> tuple[nn.Module, nn.Module]:
        """The set-up module whose parameters ``optimizer`` updates (sharded optimizer states are keyed by it), as
        the wrapper and the module; the strategy's current ones when no set-up module has them."""
        params = {id(p) for g in optimizer.optimizer.param_groups for p in g["params"]}
        for m in self._models:
            if any(id(p) in params for p in m.module.parameters()):
                return m._forward_module, m.module
        return self._strategy.model, self._strategy.lightning_module


_PLAIN = object()  # "no module": backward is plain loss.backward(), not a LightningModule's own override


def _run_launched(fabric: Fabric, function: Callable[..., Any] | None, args: tuple, kwargs: dict) -> Any:
    """In each process: set it up (process group, device, the seed), then run the user's function."""
    fabric._strategy.setup_environment()
    return function(fabric, *args, **kwargs) if function is not None else None


def _is_deepspeed(strategy: Strategy) -> bool:
    return any(c.__name__ == "DeepSpeedStrategy" for c in type(strategy).__mro__)


def _writes_shards(strategy: Strategy) -> bool:
    """Whether this strategy writes a module as a directory of shards rather than one file."""
    return _is_deepspeed(strategy) or getattr(strategy, "state_dict_type", "full") == "sharded"


@contextmanager
def _bound(strategy: Strategy, model: Any, module: Any) -> Iterator[None]:
    """The strategy's methods act on its current module: point them at ``module`` (a Fabric program may set up
    several) for the duration."""
    before = strategy.model, strategy.lightning_module
    strategy.model, strategy.lightning_module = model, module
    try:
        yield
    finally:
        strategy.model, strategy.lightning_module = before


def _follow_replaced_parameters(module: nn.Module, optimizers: Sequence[Optimizer], names: dict[int, str]) -> None:
    """Sharding replaces a module's parameters (FSDP's DTensors): an optimizer made before ``setup`` is pointed at
    the new ones, by name, while it holds no state yet."""
    now = dict(module.named_parameters())
    for opt in optimizers:
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                name = names.get(id(p))
                if name is not None and name in now and now[name] is not p:
                    if opt.state.get(p):
                        raise MisconfigurationException(
                            "The optimizer has state for parameters that setup() replaced with sharded ones. Create the "
                            "optimizer after model = fabric.setup_module(model), then fabric.setup_optimizers(optimizer)."
                        )
                    group["params"][i] = now[name]


def _plain(key: str, value: Any) -> Any:
    """A non-set-up value of ``state`` as it is saved: state dicts for modules, optimizers and objects with
    ``state_dict()``; anything else must pickle, or it could not be restored."""
    from torch.utils.data import DataLoader

    if isinstance(value, DataLoader):
        raise MisconfigurationException(
            f"save(): state[{key!r}] is a DataLoader that was not set up, whose position cannot be saved. Save the "
            f"loader setup_dataloaders returned (loader = fabric.setup_dataloaders(loader)), or leave it out of `state`."
        )
    if isinstance(value, (nn.Module, Optimizer)) or (callable(getattr(value, "state_dict", None))
                                                     and callable(getattr(value, "load_state_dict", None))):
        return value.state_dict()
    if isinstance(value, (Tensor, int, float, str, bool, type(None))):
        return value
    try:
        pickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - whatever stops pickling stops restoring
        raise MisconfigurationException(
            f"save(): state[{key!r}] ({type(value).__name__}) cannot be saved, so it could not be restored "
            f"({type(exc).__name__}: {exc}). Save what it is made from (numbers, tensors, state dicts), or an object "
            "with state_dict()/load_state_dict()."
        ) from exc
    return value


def _to_trainer_layout(checkpoint: dict[str, Any], model_key: str, state: dict[str, Any]) -> dict[str, Any]:
    """The layout sharded strategies write (``state_dict``, ``optimizer_states``): the model's and its optimizers'
    shards go there, the other keys ride along as they are."""
    optimizer_keys = [k for k, v in state.items() if isinstance(v, _FabricOptimizer) and k in checkpoint]
    return {"state_dict": checkpoint.pop(model_key), "optimizer_states": [checkpoint.pop(k) for k in optimizer_keys],
            "fulmen_fabric": {"model": model_key, "optimizers": optimizer_keys}, **checkpoint}


def _from_trainer_layout(checkpoint: dict[str, Any]) -> dict[str, Any]:
    keys = checkpoint.pop("fulmen_fabric", None)
    if keys is None:
        return checkpoint
    out = {keys["model"]: checkpoint.pop("state_dict", {})}
    out.update(zip(keys["optimizers"], checkpoint.pop("optimizer_states", None) or []))
    out.update(checkpoint)
    return out


def seed_everything(seed: int | None = None, workers: bool | None = None, verbose: bool = True) -> int:
    """Seed Python's, NumPy's and torch's random generators (``Fabric.seed_everything``); returns the seed.

    Example::

        from fulmen.fabric import seed_everything
        seed_everything(42)
    """
    return _seed_everything(seed, workers=bool(workers), verbose=verbose)
