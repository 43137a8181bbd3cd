"""What ``Fabric.setup*`` hands back: the module, optimizer and loader, wrapped so that a hand-written loop
goes through the strategy without knowing it. Lightning's names (``_FabricModule``, ``_FabricOptimizer``,
``_FabricDataLoader``), so code that checks types against them keeps working.

The wrappers are on the hot path: each call does what its strategy needs and nothing else (choices are
made once, when the wrapper is made).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.optim import Optimizer

from fulmen._utils import collect_rng_states, move_data_to_device, restore_rng_states
from fulmen.precision import Precision
from fulmen.strategies._forward import call_as_forward
from fulmen.trainer import data as _data

#: a LightningModule's step methods run through the strategy's wrapper (DDP, FSDP) like forward does
_STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


class _Counter:
    """Shared between a Fabric and its modules: whether any set-up module has run forward yet."""

    __slots__ = ("forwarded",)

    def __init__(self) -> None:
        self.forwarded = False


class _FabricModule(nn.Module):
    """A module set up by ``Fabric.setup``: its calls go through the strategy's wrapper (DDP, FSDP, the
    DeepSpeed engine) under the precision's autocast; attributes and ``state_dict`` are the original's.
    ``Fabric.setup``/``setup_module`` make it; you do not create one yourself.

    Args:
        forward_module: What a call runs: the strategy's wrapper of the module (DDP, the DeepSpeed engine) or
            the module itself.
        strategy: The strategy that set the module up; its precision converts the inputs and gives the
            autocast context.
        original_module: Your module, returned by ``.module``. None: ``forward_module`` is it.
        counter: Shared with the ``Fabric`` that made the wrapper, which reads from it whether any set-up
            module has run forward yet. None: a counter of its own.

    Example::

        model = fabric.setup(MyModel())
        out = model(x)           # DDP's forward, autocast
        model.module             # MyModel, unwrapped
        model.mark_forward_method("generate")  # model.generate(...) goes through the wrapper too
    """

    def __init__(self, forward_module: nn.Module, strategy: Any, original_module: nn.Module | None = None,
                 counter: _Counter | None = None) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original_module if original_module is not None else forward_module
        precision = strategy.precision
        overrides = lambda name: getattr(type(precision), name) is not getattr(Precision, name)  # noqa: E731
        # plain attributes, not nn.Module's: no nn.Module.__getattr__ per step. Decided once: a plain float32 run
        # calls the module directly, with no context manager per call
        self.__dict__.update(
            _strategy=strategy, _call=forward_module, _counter=counter or _Counter(), _forward_methods=set(),
            _convert=precision.convert_input if overrides("convert_input") else None,
            _restore=precision.convert_output if overrides("convert_output") else None,
            _autocast=(precision.forward_context if overrides("forward_context") or precision.autocast is not None
                       else None))
        from fulmen.module import LightningModule

        if isinstance(self._original_module, LightningModule) and (
                forward_module is not self._original_module or strategy.world_size > 1):
            self._forward_methods.update(_STEP_METHODS)

    @property
    def module(self) -> nn.Module:
        """The original module, as it was given to ``setup``."""
        return self._original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._counter.forwarded = True
        if self._convert is not None:
            args, kwargs = self._convert((args, kwargs))
        if self._autocast is None:
            output = self._call(*args, **kwargs)
        else:
            with self._autocast():
                output = self._call(*args, **kwargs)
        return output if self._restore is None else self._restore(output)

    def mark_forward_method(self, method: str | Callable) -> None:
        """Make calls to ``method`` of the original module go through the strategy's wrapper, as ``forward``
        does (e.g. ``generate`` under FSDP, which must gather the parameters first).

        Example::

            model.mark_forward_method("generate")
        """
        name = method if isinstance(method, str) else getattr(method, "__name__", "")
        if not callable(getattr(self._original_module, name, None)):
            from fulmen.errors import MisconfigurationException

            raise MisconfigurationException(
                f"mark_forward_method({method!r}): {type(self._original_module).__name__} has no method {name!r}. "
                "Pass the name of one of its methods, e.g. model.mark_forward_method('generate')."
            )
        self._forward_methods.add(name)

    def _through_wrapper(self, name: str) -> Callable[..., Any]:
        """``name`` of the original module, run by ``forward`` (precision, wrapper) in place of its forward."""
        method = getattr(self._original_module, name)
        return lambda *args, **kwargs: call_as_forward(self.forward, self._original_module, method, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("_forward_module", "_original_module"):
            return super().__getattr__(name)
        if name in self.__dict__.get("_forward_methods", ()):
            return self._through_wrapper(name)
        return getattr(self._original_module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        original = self.__dict__.get("_modules", {}).get("_original_module")
        if original is not None and not name.startswith("_") and hasattr(original, name) and name != "training":
            setattr(original, name, value)
        else:
            super().__setattr__(name, value)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)


class _FabricOptimizer:
    """An optimizer set up by ``Fabric.setup``: ``step()`` goes through the strategy (gradient scaling,
    DeepSpeed's engine) and the callbacks' ``on_before_optimizer_step``/``on_after_optimizer_step``. It is
    still an instance of the original optimizer's class. ``Fabric.setup``/``setup_optimizers`` make it.

    Args:
        optimizer: The torch optimizer to wrap; its ``param_groups`` and ``state`` are shared, not copied.
        strategy: The strategy whose ``optimizer_step`` runs ``step()``.
        callbacks: The ``Fabric(callbacks=...)`` objects; those with ``on_before_optimizer_step`` or
            ``on_after_optimizer_step`` are called around each step.

    Example::

        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        optimizer.step()
        optimizer.optimizer   # the torch optimizer itself
    """

    def __init__(self, optimizer: Optimizer, strategy: Any, callbacks: list[Any] | None = None) -> None:
        # the wrapper shares the optimizer's attributes (param_groups, state, defaults) and passes isinstance
        self.__dict__ = {k: v for k, v in optimizer.__dict__.items() if k not in ("state_dict", "step", "zero_grad")}
        self.__class__ = type("Fabric" + type(optimizer).__name__, (_FabricOptimizer, type(optimizer)), {})
        self._optimizer = optimizer
        self._strategy = strategy
        self._before = [cb for cb in callbacks or [] if callable(getattr(cb, "on_before_optimizer_step", None))]
        self._after = [cb for cb in callbacks or [] if callable(getattr(cb, "on_after_optimizer_step", None))]

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        for cb in self._before:
            cb.on_before_optimizer_step(self._optimizer)
        out = self._strategy.optimizer_step(self._optimizer, closure, self._strategy.model, **kwargs)
        for cb in self._after:
            cb.on_after_optimizer_step(self._strategy, self._optimizer)
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.optimizer_state(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__


class _FabricDataLoader:
    """A loader set up by ``Fabric.setup_dataloaders``: batches come on the device, the sampler learns the epoch
    (each ``iter()`` is one), and its position is part of ``fabric.save`` so ``fabric.load`` resumes mid-epoch
    without loading the batches already consumed, with the workers' random streams continued.
    ``Fabric.setup_dataloaders`` makes it.

    Args:
        dataloader: The ``DataLoader`` to wrap (its sampler already replaced for several processes).
        device: The device batches are moved to. None: they are handed on as the loader makes them.
        move: False hands batches on as they come although ``device`` is given (Fabric passes False on CPU,
            where batches already are); ``device`` is still reported as the loader's device.

    Example::

        loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2))
        for epoch in range(3):
            for x, y in loader:  # on fabric.device; epoch 0, 1, 2 for a DistributedSampler
                ...
    """

    def __init__(self, dataloader: Any, device: torch.device | None = None, move: bool = True) -> None:
        self._dataloader = dataloader
        self._target = device
        self._device = device if move else None  # None: batches are handed on as they come
        self._num_iter_calls = 0
        self._consumed = 0  # batches handed out by the current iterator
        self._in_epoch = False
        self._epoch_start_rng: dict[str, Any] | None = None
        self._epoch_start_generators: list[Any] | None = None
        self._streams = _data._WorkerStreams()
        self._pending: dict[str, Any] | None = None  # from fabric.load, used by the next iter()
        self._iterated_here = False

    @property
    def device(self) -> torch.device | None:
        return self._target

    def __len__(self) -> int:
        return len(self._dataloader)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_dataloader":
            raise AttributeError(name)
        return getattr(self._dataloader, name)

    def __iter__(self) -> Iterator[Any]:
        loader = self._dataloader
        pending, self._pending = self._pending or {}, None  # {}: no state loaded
        first_here, self._iterated_here = not self._iterated_here, True
        saved = pending.get("worker_streams")
        if pending.get("in_epoch") and pending["consumed"]:
            # mid-epoch: draw the epoch's order as the interrupted run did, then skip what it consumed
            skip = pending["consumed"]
            resume_rng = collect_rng_states()
            restore_rng_states(pending["epoch_start_rng"])
            _data.set_generator_states(loader, pending["epoch_start_generators"])
            self._epoch_start_rng, self._epoch_start_generators = pending["epoch_start_rng"], pending["epoch_start_generators"]
            _data.set_epoch(loader, self._num_iter_calls - 1, pending.get("sampler_seed"))
            iterator = _data.resume_iter(loader, skip, pending.get("loader_state"), streams=self._streams, saved=saved)
            restore_rng_states(resume_rng)
        else:
            _data.set_generator_states(loader, pending.get("generators"))
            self._epoch_start_rng = collect_rng_states()
            self._epoch_start_generators = _data.generator_states(loader)
            _data.set_epoch(loader, self._num_iter_calls, pending.get("sampler_seed"))
            self._num_iter_calls += 1
            skip = 0
            # a persistent-workers loader in a later epoch: the uninterrupted run reused its iterator
            reused = (bool(pending) and first_here and self._num_iter_calls > 1
                      and getattr(loader, "persistent_workers", False))
            iterator = (_data.resume_iter(loader, 0, None, reused_before=True, streams=self._streams, saved=saved)
                        if reused else _data._worker_iter(loader, self._streams, saved))
        self._consumed = skip
        self._in_epoch = True
        return self._batches(iterator)

    def _batches(self, iterator: Iterator[Any]) -> Iterator[Any]:
        device = self._device
        if device is None:
            for batch in iterator:
                self._consumed += 1
                yield batch
        else:
            for batch in iterator:
                self._consumed += 1
                yield move_data_to_device(batch, device)
        self._in_epoch = False

    # -- exact resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: epochs begun, batches consumed in the current one, the random states its
        order was drawn from, and its workers' random streams (``fabric.save`` stores it)."""
        mid = self._in_epoch and self._consumed > 0
        return {"num_iter_calls": self._num_iter_calls, "in_epoch": mid, "consumed": self._consumed if mid else 0,
                "epoch_start_rng": self._epoch_start_rng if mid else None,
                "epoch_start_generators": self._epoch_start_generators if mid else None,
                "generators": _data.generator_states(self._dataloader),
                "loader_state": _data.loader_state(self._dataloader) if mid else None,
                "worker_streams": self._streams.saved(), "sampler_seed": _sampler_seed(self._dataloader)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (see ``state_dict``) at the next ``iter()``."""
        self._num_iter_calls = int(state["num_iter_calls"])
        self._pending = state


def _sampler_seed(loader: Any) -> int | None:
    """The seed a DistributedSampler shuffles with (``seed_everything``'s when the loader was set up)."""
    for holder in (loader, getattr(loader, "batch_sampler", None)):
        seed = getattr(getattr(holder, "sampler", None), "seed", None)
        if isinstance(seed, int):
            return seed
    return None


def is_wrapped(obj: object) -> bool:
    """Whether ``obj`` is a module, optimizer or loader that ``Fabric.setup*`` returned.

    Example::

        model = fabric.setup(model)
        assert is_wrapped(model) and not is_wrapped(model.module)
    """
    return isinstance(obj, (_FabricModule, _FabricOptimizer, _FabricDataLoader))
