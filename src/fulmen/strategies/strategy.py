"""The one seam for hardware: a strategy owns the device(s), distribution and precision.

The loop asks a strategy to set up the module and optimizers, move batches, run backward and the
optimizer step, reduce/gather/broadcast across processes, and save or load checkpoints. It never
asks which strategy it has: single device, DDP, FSDP and DeepSpeed each live in a file behind this.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode

from fulmen._utils import move_data_to_device
from fulmen.precision import Precision


class Strategy:
    """Base strategy: everything a single process needs; distributed strategies override the collectives.

    Args:
        device: The device to run on. None: chosen by the Trainer's ``accelerator``.
        precision: A ``Precision`` instance. None: chosen by the Trainer's ``precision``.
        checkpoint_io: How checkpoints are written and read. None: plain ``torch.save``/``torch.load``.

    Example::

        trainer = fulmen.Trainer(strategy=fulmen.strategies.SingleDeviceStrategy("cpu"))
    """

    def __init__(self, device: torch.device | str | None = None, precision: Precision | None = None,
                 checkpoint_io: Any = None) -> None:
        self._root_device = torch.device(device) if device is not None else torch.device("cpu")
        self.precision = precision or Precision()
        self._checkpoint_io = checkpoint_io
        self.model: nn.Module | None = None  # what the loop calls (possibly wrapped, e.g. DDP)
        self.lightning_module: Any = None
        #: whether the caller trains (wrap for gradients, build optimizer engines) or only evaluates; set by the
        #: caller (the Trainer per stage, Fabric once), never read from it
        self.training = True
        self._optimizers: list[Optimizer] = []  # what setup_optimizers returned, for strategies that restore into them

    # -- topology -------------------------------------------------------------------------------
    @property
    def root_device(self) -> torch.device:
        return self._root_device

    # one process: rank zero of a world of one
    world_size = property(lambda self: 1)
    global_rank = local_rank = node_rank = property(lambda self: 0)

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def checkpoint_io(self) -> Any:
        if self._checkpoint_io is None:
            from fulmen.checkpoint import TorchCheckpointIO

            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: Any) -> None:
        self._checkpoint_io = io

    # -- set-up ---------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        """Start processes, pick the CUDA device: whatever must happen before the model exists."""
        if self.root_device.type == "cuda":
            torch.cuda.set_device(self.root_device)

    def connect(self, module: Any) -> None:
        self.lightning_module = module
        self.model = module

    def model_sharded_context(self) -> ContextManager:
        """Where ``configure_model`` runs: sharded strategies create the layers there already sharded
        (or on the meta device) instead of whole in every process."""
        return nullcontext()

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move (and for distributed strategies, wrap) the module; returns what the loop should call."""
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.model = module
        return module

    def setup_optimizers(self, optimizers: list[Optimizer]) -> list[Optimizer]:
        self._optimizers = list(optimizers)  # sharded strategies restore checkpoints straight into them
        return optimizers

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_data_to_device(batch, device or self.root_device)

    def connect_training_settings(self, *, accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                                  gradient_clip_algorithm: str | None = None, precision_given: bool = False,
                                  batch_size: int | None = None) -> None:
        """The caller's training settings, for strategies that build them into their own engine (DeepSpeed's
        config); the others do accumulation and clipping where the caller asks for them, and ignore this.

        Example::

            strategy.connect_training_settings(accumulate_grad_batches=4, gradient_clip_val=1.0, batch_size=32)
        """

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` (a whole fit/validate/test/predict, or a Fabric program) in every process of this
        strategy; here, just this one. ``handoff=`` (see ``launcher.Handoff``) matters to spawned workers only."""
        kwargs.pop("handoff", None)
        return function(*args, **kwargs)

    def step_function(self, name: str) -> Callable[..., Any]:
        """What the loops call for ``name`` ("training_step", "validation_step", ...): the module's own method.
        Distributed strategies route the training step through their wrapper instead."""
        return getattr(self.lightning_module, name)

    def no_backward_sync(self) -> Callable[[], Any] | None:
        """A context factory that skips the gradient sync of a backward (accumulating batches), or None."""
        return None

    def evaluation_context(self, inference_mode: bool) -> ContextManager:
        """The grad mode an evaluation or prediction pass runs under: ``torch.inference_mode`` when asked
        for and safe with this strategy, else ``torch.no_grad``. Either restores the mode it found.

        Example::

            with strategy.evaluation_context(inference_mode=True):
                preds = model(x)
        """
        return torch.inference_mode() if inference_mode and self.supports_inference_mode else torch.no_grad()

    @property
    def supports_inference_mode(self) -> bool:
        """Whether evaluation may run under ``torch.inference_mode``: not where a strategy keeps tensors made
        during evaluation (gathered parameter shards, gloo's communication buffers) and training touches them later."""
        return True

    # -- optimization ---------------------------------------------------------------------------
    def backward(self, loss: Tensor, optimizer: Optimizer | None, *args: Any, module: Any = None, **kwargs: Any) -> None:
        self.precision.backward(loss, module if module is not None else self.lightning_module, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None, model: Any,
                       after_closure: Callable[[], None] | None = None, **kwargs: Any) -> Any:
        return self.precision.optimizer_step(optimizer, closure, after_closure, **kwargs)

    def clip_gradients(self, optimizer: Optimizer, clip_val: float, algorithm: str) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, clip_val)

    # -- collectives (identity in one process) -------------------------------------------------
    def reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        return tensor

    def all_gather(self, tensor: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self, name: str | None = None) -> None:
        pass

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def start_boolean_decision(self, decision: bool, all: bool = True) -> Callable[[], bool]:
        """``reduce_boolean_decision`` without waiting: starts the agreement and returns a function that
        gives it. Every process must start the same decisions in the same order.

        Example::

            agreed = trainer.strategy.start_boolean_decision(stop_requested, all=False)
            ...  # more work; the processes need not meet here
            if agreed():
                ...
        """
        return lambda: decision

    # -- checkpoints ----------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        return self.lightning_module.state_dict()

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, filepath: Any, weights_only: bool | None = None) -> dict[str, Any]:
        from fulmen.strategies import sharded_checkpoint

        if sharded_checkpoint.kind(filepath) is not None:  # saved by FSDP or DeepSpeed: read it whole, here
            return sharded_checkpoint.load_consolidated(filepath, weights_only=weights_only)
        return self.checkpoint_io.load_checkpoint(filepath, map_location="cpu", weights_only=weights_only)

    def load_model_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Put a checkpoint's ``state_dict`` into the module (sharded strategies scatter it to the shards)."""
        self.lightning_module.load_state_dict(state_dict, strict=strict)

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        """Put one of a checkpoint's ``optimizer_states`` into ``optimizer``."""
        optimizer.load_state_dict(state)

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            self.checkpoint_io.remove_checkpoint(filepath)

    def on_exception(self, exception: BaseException) -> None:
        """Called when a run fails, after the callbacks' and the data module's ``on_exception`` and before the
        loggers are finalized and the strategy torn down; override it to release what the strategy holds.

        Example::

            class Careful(SingleDeviceStrategy):
                def on_exception(self, exception):
                    print("run failed on", self.root_device, "with", type(exception).__name__)
        """

    def teardown(self) -> None:
        """Release devices and processes after a run."""

    @contextmanager
    def tensor_init_context(self, empty_init: bool | None = None) -> Iterator[None]:
        """Tensors created inside land on this strategy's device in the precision's dtype; with
        ``empty_init=True`` ``torch.nn.init`` is skipped (for weights a checkpoint overwrites anyway).

        Example::

            with trainer.strategy.tensor_init_context(empty_init=True):
                model = BigModel()
        """
        with _SkipInit(enabled=bool(empty_init)), self.root_device, self.precision.tensor_init_context():
            yield


class _SkipInit(TorchFunctionMode):
    """Turns every ``torch.nn.init`` function into a no-op: parameters keep uninitialised memory."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.enabled and getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


class SingleDeviceStrategy(Strategy):
    """Everything on one device: CPU, one GPU or Apple's MPS.

    Args:
        device: The device to run on, e.g. ``"cpu"`` or ``"cuda:1"``.
        precision: A ``Precision`` instance. None: chosen by the Trainer's ``precision``.
        checkpoint_io: How checkpoints are written and read. None: plain ``torch.save``/``torch.load``.

    Example::

        fulmen.Trainer(strategy=SingleDeviceStrategy(device="cuda:1"))
    """
