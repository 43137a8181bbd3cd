"""Type aliases for annotating steps, loaders and ``configure_optimizers``, under Lightning's names.

Example::

    from fulmen.utilities.types import OptimizerLRScheduler, STEP_OUTPUT

    class Model(fulmen.LightningModule):
        def training_step(self, batch, batch_idx) -> STEP_OUTPUT:
            ...
        def configure_optimizers(self) -> OptimizerLRScheduler:
            ...
"""

from fulmen.trainer.types import (EVAL_DATALOADERS, STEP_OUTPUT, TRAIN_DATALOADERS, DistributedDataParallel,
                                 LRSchedulerConfig, LRSchedulerConfigType, LRSchedulerPLType, LRSchedulerType,
                                 LRSchedulerTypeTuple, LRSchedulerTypeUnion, OptimizerConfig, OptimizerLRScheduler,
                                 OptimizerLRSchedulerConfig)

__all__ = [
    "EVAL_DATALOADERS", "LRSchedulerConfig", "LRSchedulerConfigType", "LRSchedulerPLType", "LRSchedulerType",
    "LRSchedulerTypeTuple", "LRSchedulerTypeUnion", "OptimizerConfig", "OptimizerLRScheduler",
    "OptimizerLRSchedulerConfig", "STEP_OUTPUT", "TRAIN_DATALOADERS", "DistributedDataParallel",
]
