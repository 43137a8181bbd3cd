"""Type aliases for annotating steps, loaders and ``configure_optimizers``, under Lightning's names (Lightning's
path for them is :mod:`fulmen.utilities.types`). Not loaded by ``import fulmen``.

Example::

    from fulmen.utilities.types import OptimizerLRScheduler, STEP_OUTPUT

    class Model(fulmen.LightningModule):
        def training_step(self, batch, batch_idx) -> STEP_OUTPUT:
            ...
        def configure_optimizers(self) -> OptimizerLRScheduler:
            ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol, TypedDict, Union

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from fulmen.trainer.optimizers import LRSchedulerConfig

#: what a training/validation/test step returns: a loss tensor, a dict with "loss", or None
STEP_OUTPUT = Optional[Union[Tensor, Mapping[str, Any]]]
#: any iterable of batches, or a list/dict of them
TRAIN_DATALOADERS = Any
EVAL_DATALOADERS = Any

LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerType = Union[type[LRScheduler], type[ReduceLROnPlateau]]
LRSchedulerPLType = Union[LRScheduler, ReduceLROnPlateau]


class LRSchedulerConfigType(TypedDict, total=False):
    """The ``"lr_scheduler"`` dict ``configure_optimizers`` may return."""

    scheduler: Any
    name: Optional[str]
    interval: str
    frequency: int
    reduce_on_plateau: bool
    monitor: Optional[str]
    strict: bool


class OptimizerConfig(TypedDict):
    """``{"optimizer": opt}``."""

    optimizer: Optimizer


class OptimizerLRSchedulerConfig(TypedDict, total=False):
    """``{"optimizer": opt, "lr_scheduler": sched_or_config, "monitor": name}``."""

    optimizer: Optimizer
    lr_scheduler: Union[LRSchedulerTypeUnion, LRSchedulerConfigType]
    monitor: str


#: every form ``configure_optimizers`` may return
OptimizerLRScheduler = Optional[
    Union[
        Optimizer,
        Sequence[Optimizer],
        tuple[Sequence[Optimizer], Sequence[Union[LRSchedulerTypeUnion, LRSchedulerConfig]]],
        OptimizerConfig,
        OptimizerLRSchedulerConfig,
        Sequence[OptimizerConfig],
        Sequence[OptimizerLRSchedulerConfig],
    ]
]


class DistributedDataParallel(Protocol):
    """What fulmen needs of a data-parallel wrapper: the wrapped ``module`` and a ``forward``."""

    module: Any

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...
