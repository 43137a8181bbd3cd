"""Lightning's ``lightning.fabric.strategies`` path: the Trainer's strategies, the same objects."""

from fulmen.strategies import STRATEGY_NAMES
from fulmen.strategies.ddp import DDPStrategy, ParallelStrategy
from fulmen.strategies.deepspeed import DeepSpeedStrategy
from fulmen.strategies.fsdp import FSDPStrategy
from fulmen.strategies.model_parallel import ModelParallelStrategy
from fulmen.strategies.strategy import SingleDeviceStrategy, Strategy

__all__ = ["DDPStrategy", "DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "ParallelStrategy", "STRATEGY_NAMES",
           "SingleDeviceStrategy", "Strategy"]
