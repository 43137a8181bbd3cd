"""Callbacks that ship with fulmen; ``fulmen.Callback`` is the base class for your own.

Each is imported on first use, so ``import fulmen`` stays fast.

Example::

    from fulmen.callbacks import EarlyStopping, ModelCheckpoint

    trainer = fulmen.Trainer(callbacks=[EarlyStopping(monitor="val_loss"), ModelCheckpoint(monitor="val_loss")])
"""

import importlib

from fulmen.callbacks.callback import Callback

_WHERE = {
    "Checkpoint": "model_checkpoint",
    "ModelCheckpoint": "model_checkpoint",
    "OnExceptionCheckpoint": "on_exception_checkpoint",
    "EarlyStopping": "early_stopping",
    "EarlyStoppingReason": "early_stopping",
    "LearningRateMonitor": "lr_monitor",
    "Timer": "timer",
    "LambdaCallback": "lambda_function",
    "GradientAccumulationScheduler": "gradient_accumulation_scheduler",
    "ElasticResume": "elastic_resume",
    "BaseFinetuning": "finetuning",
    "BackboneFinetuning": "finetuning",
    "StochasticWeightAveraging": "stochastic_weight_avg",
    "WeightAveraging": "weight_averaging",
    "EMAWeightAveraging": "weight_averaging",
    "ThroughputMonitor": "throughput_monitor",
    "DeviceStatsMonitor": "device_stats_monitor",
    "BasePredictionWriter": "prediction_writer",
    "ModelPruning": "pruning",
    "ProgressBar": "progress.progress_bar",
    "TQDMProgressBar": "progress.tqdm_progress",
    "RichProgressBar": "progress.rich_progress",
    "ModelSummary": "model_summary",
    "LearningRateFinder": "lr_finder",
    "BatchSizeFinder": "batch_size_finder",
    "RichModelSummary": "model_summary",
    "SpikeDetection": "spike_detection",
}

__all__ = ["Callback", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fulmen.callbacks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fulmen.callbacks' has no attribute {name!r}")
