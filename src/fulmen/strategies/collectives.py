"""Collectives as an object: ``TorchCollective`` runs ``torch.distributed``'s operations on one process group.

The strategies keep their own collectives (``strategy.reduce``, ``all_gather``, ``broadcast``) for the loop;
this object is for programs that want groups of their own, e.g. a reinforcement-learning player and trainers
exchanging tensors over a subgroup. Lightning Fabric publishes it as
``lightning.fabric.plugins.collectives``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from fulmen.errors import FulmenError


class _GroupMisuse(FulmenError, RuntimeError):
    """A group created twice, or torn down without one (a RuntimeError, as Lightning raises)."""


class Collective(ABC):
    """One process group and the collective operations on it; ``create_group`` or ``setup`` gives it a group.

    Example::

        collective = TorchCollective().setup(backend="gloo")   # joins (or starts) the default group
        total = collective.all_reduce(torch.tensor(1.0))      # the world size
    """

    def __init__(self) -> None:
        self._group: Any = None

    @property
    def group(self) -> Any:
        """The process group every operation of this object runs on."""
        if self._group is None:
            raise _GroupMisuse(f"{type(self).__name__} has no group yet: call .create_group(...) (or .setup(...)) first.")
        return self._group

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's rank within the group."""

    @property
    @abstractmethod
    def world_size(self) -> int:
        """How many processes the group holds."""

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this backend can run here."""

    @classmethod
    @abstractmethod
    def is_initialized(cls) -> bool:
        """Whether the default group exists already."""

    @classmethod
    @abstractmethod
    def init_group(cls, **kwargs: Any) -> None:
        """Start the default group."""

    @classmethod
    @abstractmethod
    def new_group(cls, **kwargs: Any) -> Any:
        """Make a new group out of the default one."""

    @classmethod
    @abstractmethod
    def destroy_group(cls, group: Any) -> None:
        """End ``group``."""

    def setup(self, **kwargs: Any) -> "Collective":
        """Start the default group unless it exists (``kwargs`` go to ``init_group``); returns ``self``."""
        if not self.is_initialized():
            self.init_group(**kwargs)
        return self

    def create_group(self, **kwargs: Any) -> "Collective":
        """Give this object a group of its own (``kwargs`` go to ``new_group``, e.g. ``ranks=[0, 1]``)."""
        if self._group is not None:
            raise _GroupMisuse(f"{type(self).__name__} already has a group; make another {type(self).__name__}() "
                               "for a second one.")
        self._group = self.new_group(**kwargs)
        return self

    def teardown(self) -> "Collective":
        """End this object's group."""
        if self._group is None:
            raise _GroupMisuse(f"{type(self).__name__} has no group to tear down; call .create_group(...) first.")
        self.destroy_group(self._group)
        self._group = None
        return self


def _dist() -> Any:
    import torch.distributed as dist

    return dist


class TorchCollective(Collective):
    """``torch.distributed``'s collectives on one group. Each operation works in place where torch's does and
    returns its result; ``op`` is a name ("sum", "max", "min", "product", ...) or a ``ReduceOp``.

    Example::

        collective = TorchCollective()
        collective.setup(backend="gloo", main_address="127.0.0.1", main_port=29500, rank=rank, world_size=2)
        collective.create_group(ranks=[0, 1])
        gathered = collective.all_gather([torch.zeros(1), torch.zeros(1)], torch.tensor([float(rank)]))
        collective.teardown()
    """

    #: whether some TorchCollective started the default group (and so ends it when its last group goes)
    manages_default_group = False
    addr_key = "MASTER_ADDR"
    port_key = "MASTER_PORT"

    def __init__(self) -> None:
        if not _dist().is_available():
            raise FulmenError("This torch build has no torch.distributed; install a build with it to use TorchCollective.")
        super().__init__()

    @property
    def group(self) -> Any:
        if self._group is None:  # with no group of its own it works on the default group, as torch does
            self._group = _dist().GroupMember.WORLD
        return super().group

    @property
    def rank(self) -> int:
        return _dist().get_rank(self.group)

    @property
    def world_size(self) -> int:
        return _dist().get_world_size(self.group)

    @classmethod
    def is_available(cls) -> bool:
        return _dist().is_available()

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.is_available() and _dist().is_initialized()

    @classmethod
    def init_group(cls, **kwargs: Any) -> None:
        _dist().init_process_group(**kwargs)

    @classmethod
    def new_group(cls, **kwargs: Any) -> Any:
        return _dist().new_group(**kwargs)

    @classmethod
    def destroy_group(cls, group: Any) -> None:
        # a process outside the group holds a placeholder, not a group: nothing to end there
        if group in _dist().distributed_c10d._pg_map:
            _dist().destroy_process_group(group)

    @staticmethod
    def _op(op: Any) -> Any:
        if not isinstance(op, str):
            return op
        value = getattr(_dist().ReduceOp, op.upper(), None)
        if value is None:
            raise ValueError(f"op={op!r} is not a reduction torch knows; use 'sum', 'product', 'min', 'max', 'band', "
                             "'bor', 'bxor', 'avg' (NCCL only) or a torch.distributed.ReduceOp.")
        return value

    def setup(self, main_address: str | None = None, main_port: str | int | None = None,
              **kwargs: Any) -> "TorchCollective":
        """Start the default group (``init_process_group(**kwargs)``) unless it exists. ``main_address`` and
        ``main_port`` fill ``MASTER_ADDR``/``MASTER_PORT`` for the start only, where the environment lacks them."""
        if self.is_initialized():
            return self
        added = {key: str(value) for key, value in ((self.addr_key, main_address), (self.port_key, main_port))
                 if value is not None and key not in os.environ}
        os.environ.update(added)
        try:
            super().setup(**kwargs)
        finally:
            for key in added:
                os.environ.pop(key, None)
        TorchCollective.manages_default_group = True
        return self

    def teardown(self) -> "TorchCollective":
        """End this object's group; when a TorchCollective started the default group and no other group is
        left, end that too."""
        dist = _dist()
        member = self.group != dist.GroupMember.NON_GROUP_MEMBER
        super().teardown()
        world = dist.GroupMember.WORLD
        if TorchCollective.manages_default_group and world is None:
            TorchCollective.manages_default_group = False
        elif member and TorchCollective.manages_default_group and len(dist.distributed_c10d._pg_map) == 1:
            self.destroy_group(world)
            TorchCollective.manages_default_group = False
        return self

    # -- operations: each is torch.distributed's, on this object's group --------------------------
    def broadcast(self, tensor: Tensor, src: int) -> Tensor:
        _dist().broadcast(tensor, src, group=self.group)
        return tensor

    def all_reduce(self, tensor: Tensor, op: Any = "sum") -> Tensor:
        _dist().all_reduce(tensor, op=self._op(op), group=self.group)
        return tensor

    def reduce(self, tensor: Tensor, dst: int, op: Any = "sum") -> Tensor:
        _dist().reduce(tensor, dst, op=self._op(op), group=self.group)
        return tensor

    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]:
        _dist().all_gather(tensor_list, tensor, group=self.group)
        return tensor_list

    def gather(self, tensor: Tensor, gather_list: list[Tensor], dst: int = 0) -> list[Tensor]:
        _dist().gather(tensor, gather_list, dst, group=self.group)
        return gather_list

    def scatter(self, tensor: Tensor, scatter_list: list[Tensor], src: int = 0) -> Tensor:
        _dist().scatter(tensor, scatter_list, src, group=self.group)
        return tensor

    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: Any = "sum") -> Tensor:
        _dist().reduce_scatter(output, input_list, op=self._op(op), group=self.group)
        return output

    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]:
        _dist().all_to_all(output_tensor_list, input_tensor_list, group=self.group)
        return output_tensor_list

    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None:
        _dist().send(tensor, dst, tag=tag, group=self.group)

    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor:
        _dist().recv(tensor, src, tag=tag, group=self.group)
        return tensor

    def all_gather_object(self, object_list: list[Any], obj: Any) -> list[Any]:
        _dist().all_gather_object(object_list, obj, group=self.group)
        return object_list

    def broadcast_object_list(self, object_list: list[Any], src: int,
                              device: torch.device | None = None) -> list[Any]:
        _dist().broadcast_object_list(object_list, src, group=self.group, device=device)
        return object_list

    def gather_object(self, obj: Any, object_gather_list: list[Any], dst: int = 0) -> list[Any]:
        _dist().gather_object(obj, object_gather_list, dst, group=self.group)
        return object_gather_list

    def scatter_object_list(self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any],
                            src: int = 0) -> list[Any]:
        _dist().scatter_object_list(scatter_object_output_list, scatter_object_input_list, src, group=self.group)
        return scatter_object_output_list

    def barrier(self, device_ids: list[int] | None = None) -> None:
        if self.group == _dist().GroupMember.NON_GROUP_MEMBER:  # not in the group: nobody to wait for
            return
        _dist().barrier(group=self.group, device_ids=device_ids)

    def monitored_barrier(self, timeout: timedelta | None = None, wait_all_ranks: bool = False) -> None:
        _dist().monitored_barrier(group=self.group, timeout=timeout, wait_all_ranks=wait_all_ranks)


class SingleDeviceCollective(Collective):
    """The collectives of one process: every operation returns its input (a stand-in for ``TorchCollective``
    when a program runs alone).

    Example::

        collective = SingleDeviceCollective().create_group()
        collective.all_reduce(torch.tensor(3.0))  # tensor(3.)
    """

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def is_initialized(cls) -> bool:
        return True

    @classmethod
    def init_group(cls, **kwargs: Any) -> None:
        pass

    @classmethod
    def new_group(cls, **kwargs: Any) -> Any:
        return object()  # a token: there is nobody to group with

    @classmethod
    def destroy_group(cls, group: Any) -> None:
        pass

    def _unchanged(self, tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    # alone, these hand back the tensor they were given
    broadcast = all_reduce = reduce = recv = _unchanged

    def all_gather(self, tensor_list: list[Any], tensor: Any, **kwargs: Any) -> list[Any]:
        return [tensor]

    def gather(self, tensor: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [tensor]

    def scatter(self, tensor: Any, scatter_list: list[Any], *args: Any, **kwargs: Any) -> Any:
        return scatter_list[0]

    def reduce_scatter(self, output: Any, input_list: list[Any], *args: Any, **kwargs: Any) -> Any:
        return input_list[0]

    def all_to_all(self, output_tensor_list: list[Any], input_tensor_list: list[Any], *args: Any,
                   **kwargs: Any) -> list[Any]:
        return input_tensor_list

    def send(self, *args: Any, **kwargs: Any) -> None:
        pass

    def all_gather_object(self, object_list: list[Any], obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object_list(self, object_list: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return object_list

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        pass


__all__ = ["Collective", "SingleDeviceCollective", "TorchCollective"]
