"""The helpers Lightning publishes under ``lightning.pytorch.utilities`` that fulmen's own code does not
call: string enums, FLOPs and gradient norms, optional-package flags, out-of-memory checks, tied parameters,
rank-zero extras, ``isolate_rng``, loader lengths. Their public paths are the re-exports in
:mod:`fulmen.utilities`; ``import fulmen`` does not load this module.

Example::

    from fulmen.utilities.grads import grad_norm  # defined here, imported from Lightning's path

    def on_before_optimizer_step(self, optimizer):
        self.log_dict(grad_norm(self.layer, norm_type=2))
"""

from __future__ import annotations

import gc
import inspect
import os
import pickle
import warnings as _warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any, Callable

import torch
from torch import nn

from fulmen._utils import (_log, apply_to_collection, collect_rng_states, package_available, rank_zero_info,
                           rank_zero_only, rank_zero_warn, restore_rng_states)


class LightningEnum(str, Enum):
    """A ``str`` enum whose members equal their value, ignoring case."""

    @classmethod
    def from_str(cls, value: str, source: str = "key") -> LightningEnum:
        """The member named ``value`` (``source="key"``), whose value is ``value`` (``"value"``), or either (``"any"``)."""
        for member in cls:
            if (source in ("key", "any") and member.name.lower() == value.lower()) or (
                source in ("value", "any") and member.value.lower() == value.lower()
            ):
                return member
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(f"{value!r} is not one of {[m.value for m in cls]}.")

    def __eq__(self, other: Any) -> bool:
        other = other.value if isinstance(other, Enum) else str(other)
        return self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())


class GradClipAlgorithmType(LightningEnum):
    """How ``gradient_clip_val`` clips: by the gradients' total norm or by each value."""

    VALUE = "value"
    NORM = "norm"


def measure_flops(model: nn.Module, forward_fn: Callable[[], Any], loss_fn: Callable[[Any], Any] | None = None) -> int:
    """FLOPs of ``forward_fn()`` (and of the backward pass of ``loss_fn(output)`` when given), counted by
    ``torch.utils.flop_counter``. On the ``meta`` device nothing is computed, only counted.

    Example::

        measure_flops(nn.Linear(4, 3), lambda: layer(torch.randn(2, 4)))  # 48
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return counter.get_total_flops()


def grad_norm(module: nn.Module, norm_type: float | int | str, group_separator: str = "/") -> dict[str, torch.Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, and of all of them as one vector.

    Keys are Lightning's: ``grad_{p}_norm{sep}{param name}`` and ``grad_{p}_norm_total``, with ``p`` the
    norm as a float (``2.0``, ``inf``). Parameters without a gradient are left out; no gradients give ``{}``.

    Example::

        grad_norm(model, 2)  # {'grad_2.0_norm/layer.weight': tensor(..), ..., 'grad_2.0_norm_total': tensor(..)}
    """
    norm_type = float(norm_type)
    if norm_type <= 0:
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(
            f"grad_norm(norm_type={norm_type}) needs a positive number or 'inf' (the max norm)."
        )
    norms = {
        f"grad_{norm_type}_norm{group_separator}{name}": p.grad.detach().norm(norm_type)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
    if norms:
        norms[f"grad_{norm_type}_norm_total"] = torch.stack(list(norms.values())).norm(norm_type)
    return norms


_TORCHVISION_AVAILABLE = package_available("torchvision")
_RICH_AVAILABLE = package_available("rich")
_OMEGACONF_AVAILABLE = package_available("omegaconf")
_TENSORBOARD_AVAILABLE = package_available("tensorboard")
_TENSORBOARDX_AVAILABLE = package_available("tensorboardX")
_JSONARGPARSE_AVAILABLE = package_available("jsonargparse")
_ONNX_AVAILABLE = package_available("onnx")


def recursive_detach(in_dict: Any, to_cpu: bool = False) -> Any:
    """Every tensor in a nested collection detached from the graph (and moved to the CPU with ``to_cpu``)."""
    def detach(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.cpu() if to_cpu else t

    return apply_to_collection(in_dict, torch.Tensor, detach)


def is_cuda_out_of_memory(exception: BaseException) -> bool:
    """A CUDA allocation failed."""
    message = str(exception.args[0]) if isinstance(exception, RuntimeError) and len(exception.args) == 1 else ""
    return isinstance(exception, torch.cuda.OutOfMemoryError) or "CUDA" in message and "out of memory" in message


def is_cudnn_snafu(exception: BaseException) -> bool:
    """cuDNN's way of reporting that it ran out of memory."""
    return isinstance(exception, RuntimeError) and len(exception.args) == 1 and (
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED." in str(exception.args[0]))


def is_out_of_cpu_memory(exception: BaseException) -> bool:
    """The CPU allocator failed."""
    return isinstance(exception, RuntimeError) and len(exception.args) == 1 and (
        "DefaultCPUAllocator: can't allocate memory" in str(exception.args[0]))


def is_oom_error(exception: BaseException) -> bool:
    """Any of the out-of-memory errors above."""
    return is_cuda_out_of_memory(exception) or is_cudnn_snafu(exception) or is_out_of_cpu_memory(exception)


def garbage_collection_cuda() -> None:
    """Collect Python garbage and release the CUDA cache, so that a retry starts with free memory."""
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as err:  # empty_cache itself can run out of memory
            if not is_oom_error(err):
                raise


def find_shared_parameters(module: nn.Module) -> list[list[str]]:
    """The names of each parameter reachable under more than one name, grouped per parameter.

    Example::

        model.head.weight = model.embed.weight
        find_shared_parameters(model)  # [['embed.weight', 'head.weight']]
    """
    names: dict[nn.Parameter, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(param, []).append(name)
    return [group for group in names.values() if len(group) > 1]


def set_shared_parameters(module: nn.Module, shared_params: list[list[str]]) -> nn.Module:
    """Tie again each group of names from :func:`find_shared_parameters` to the first one's parameter."""
    for group in shared_params:
        owner, _, attr = group[0].rpartition(".")
        param = getattr(module.get_submodule(owner) if owner else module, attr)
        for path in group[1:]:
            owner, _, attr = path.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, attr, param)
    return module


def is_picklable(obj: Any) -> bool:
    """Whether ``pickle.dumps(obj)`` succeeds (what a checkpoint's hyperparameters need).

    Example::

        is_picklable({"lr": 0.1}), is_picklable(open(__file__))  # (True, False)
    """
    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True


class LightningDeprecationWarning(DeprecationWarning):
    """The category of fulmen's deprecation warnings (Lightning's name, so filters written for it work)."""


@rank_zero_only
def rank_zero_debug(message: str, *args: Any, **kwargs: Any) -> None:
    """Log ``message`` at DEBUG level to the ``fulmen`` logger, on rank zero only."""
    _log.debug(message, *args, **kwargs)


@rank_zero_only
def rank_zero_deprecation(message: str, stacklevel: int = 4, **kwargs: Any) -> None:
    """Warn with a :class:`LightningDeprecationWarning`, on rank zero only."""
    _warnings.warn(message, kwargs.get("category", LightningDeprecationWarning), stacklevel=stacklevel)


def rank_prefixed_message(message: str, rank: int | None) -> str:
    """``"[rank: 1] message"``; the message unchanged when ``rank`` is None."""
    return message if rank is None else f"[rank: {rank}] {message}"


class WarningCache(set):
    """Warn or print each distinct message once per process, on rank zero.

    Example::

        cache = WarningCache()
        for _ in range(3):
            cache.warn("shown once")
    """

    def warn(self, message: str, stacklevel: int = 5, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_warn(message, stacklevel=stacklevel, **kwargs)

    def deprecation(self, message: str, stacklevel: int = 6, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_deprecation(message, stacklevel=stacklevel, **kwargs)

    def info(self, message: str, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_info(message)


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's random states on leaving the block.

    ``include_cuda=False`` leaves the CUDA generators alone (e.g. in a forked process that must not
    initialise CUDA).

    Example::

        torch.manual_seed(1)
        with isolate_rng():
            a = torch.rand(1)
        b = torch.rand(1)   # equal to a: the block did not advance the generator
    """
    states = collect_rng_states()
    if not include_cuda:
        states.pop("torch.cuda", None)
    try:
        yield
    finally:
        restore_rng_states(states)


def is_param_in_hook_signature(hook_fx: Callable, param: str, explicit: bool = False, min_args: int | None = None) -> bool:
    """Whether ``hook_fx`` accepts ``param`` by name, through ``*args`` (unless ``explicit``), or has at
    least ``min_args`` positional parameters.

    Example::

        def step(self, batch): ...
        is_param_in_hook_signature(step, "batch_idx")  # False
    """
    parameters = inspect.getfullargspec(hook_fx)
    args = parameters.args[1:] if inspect.ismethod(hook_fx) else parameters.args
    return (
        param in args
        or (not explicit and parameters.varargs is not None)
        or (isinstance(min_args, int) and len(args) >= min_args)
    )


class PossibleUserWarning(UserWarning):
    """A warning about something that is often a mistake but may be what you want (e.g. few workers)."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Silence every :class:`PossibleUserWarning` (from ``module`` only, when given)."""
    _warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


def sized_len(dataloader: Any) -> int | None:
    """``len(dataloader)``, or None when it has no length (an iterable dataset, a generator)."""
    try:
        return len(dataloader)
    except (TypeError, NotImplementedError):
        return None


def has_len(dataloader: Any) -> bool:
    """Whether ``dataloader`` has a length (a zero length counts, and warns as in Lightning)."""
    n = sized_len(dataloader)
    if n == 0:
        rank_zero_warn(f"This `{type(dataloader).__name__}` has no batches (its length is 0); a stage that reads it "
                       "runs nothing.")
    return n is not None


def has_len_all_ranks(dataloader: Any, strategy: Any,
                      allow_zero_length_dataloader_with_multiple_devices: bool = False) -> bool:
    """Whether ``dataloader`` has a length on every process (False when it has none here, e.g. an iterable).

    The lengths are summed over the processes through ``strategy.reduce`` (one collective: call it at set-up,
    not per batch). A total of zero warns; an empty loader on this process while others have batches raises
    :class:`~fulmen.errors.EmptyLoaderError`, unless ``allow_zero_length_dataloader_with_multiple_devices``,
    which warns instead. A length on an ``IterableDataset``'s loader warns: with several workers it is only
    right when each worker yields its own share.

    Example::

        from fulmen.utilities.data import has_len_all_ranks

        if has_len_all_ranks(trainer.train_dataloader, trainer.strategy):
            steps = len(trainer.train_dataloader)
    """
    local = sized_len(dataloader)
    if local is None:
        return False
    name = type(dataloader).__name__
    total = int(strategy.reduce(torch.tensor(local, device=strategy.root_device), reduce_op="sum"))
    if total == 0:
        rank_zero_warn(f"`{name}` has no batches on any process; check its dataset and `batch_size`/`drop_last` "
                       "if you meant to run on it.")
    elif local == 0:
        if not allow_zero_length_dataloader_with_multiple_devices:
            from fulmen.errors import EmptyLoaderError

            raise EmptyLoaderError(
                f"`{name}` has no batches on this process while the other processes' loaders have some, so the "
                "processes would wait on each other: give the dataset at least one batch per process (a smaller "
                "`batch_size`, `drop_last=False`), or pass `allow_zero_length_dataloader_with_multiple_devices=True`."
            )
        rank_zero_warn(f"`{name}` has no batches on this process but has some on others; "
                       "the processes run unequal numbers of batches.")
    dataset = getattr(dataloader, "dataset", None)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        rank_zero_warn(f"`{name}` reads an IterableDataset that defines `__len__`: with `num_workers > 1` that "
                       "length is only right when each worker yields its own share of the data.")
    return True


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for ``DataLoader(num_workers=...)``: the CPUs this process may use, shared among the
    ``local_world_size`` processes of this machine, minus one for each main process (at least 1).

    Example::

        DataLoader(data, num_workers=suggested_max_num_workers(local_world_size=trainer.num_devices))
    """
    if local_world_size < 1:
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(f"`local_world_size` should be >= 1, got {local_world_size}.")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)


def get_torchvision_model(model_name: str, **kwargs: Any) -> Any:
    """``torchvision.models.get_model(model_name, **kwargs)``; torchvision is imported only here.

    Example::

        backbone = get_torchvision_model("resnet18", weights=None)
    """
    try:
        from torchvision.models import get_model
    except ImportError:
        from fulmen.errors import missing_extra

        raise missing_extra("torchvision", "vision", f"get_torchvision_model({model_name!r})") from None
    return get_model(model_name, **kwargs)
