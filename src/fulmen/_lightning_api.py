"""Lightning 2.x's public API, and where fulmen stands on each module path and name.

This is the data behind the documentation's "Coming from Lightning" page and behind
``tests/test_lightning_api.py``, which checks every entry against fulmen itself: a name listed as
supported must import from the same path under ``fulmen``, and a name left out must really be absent
(so when it arrives, the test says to move it out of :data:`OMITTED`).

Paths are relative to Lightning's package: ``"callbacks.progress"`` is ``lightning.pytorch.callbacks.progress``
(or ``pytorch_lightning.callbacks.progress``) and ``fulmen.callbacks.progress``; ``""`` is the package itself.

Example (what the docs page does)::

    from fulmen._lightning_api import rows

    for row in rows():
        print(row["lightning"], "->", row["fulmen"] or "not in fulmen: " + row["note"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["FABRIC_API", "FABRIC_OMITTED", "LIGHTNING_API", "LIGHTNING_VERSION", "OMITTED", "fabric_rows", "fulmen_path",
           "omission", "rows"]

#: the Lightning release the table was taken from
LIGHTNING_VERSION = "2.6.6"

#: Every public module of Lightning (walked from the installed package: ``__all__`` where a module has
#: one, else what it defines or re-exports on purpose) and its public names; plus the few names published
#: code imports although they are underscored (``utilities.imports._TORCHVISION_AVAILABLE`` ...).
LIGHTNING_API: dict[str, tuple[str, ...]] = {
    "": ("Callback", "LightningDataModule", "LightningModule", "Trainer", "cli_lightning_logo", "seed_everything",),
    "accelerators": (
        "Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "XLAAccelerator",
        "find_usable_cuda_devices",
    ),
    "accelerators.accelerator": ("Accelerator",),
    "accelerators.cpu": ("CPUAccelerator", "get_cpu_stats",),
    "accelerators.cuda": ("CUDAAccelerator", "get_nvidia_gpu_stats",),
    "accelerators.mps": ("MPSAccelerator", "get_device_stats",),
    "accelerators.xla": ("XLAAccelerator",),
    "callbacks": (
        "BackboneFinetuning", "BaseFinetuning", "BasePredictionWriter", "BatchSizeFinder", "Callback", "Checkpoint",
        "DeviceStatsMonitor", "EMAWeightAveraging", "EarlyStopping", "GradientAccumulationScheduler",
        "LambdaCallback", "LearningRateFinder", "LearningRateMonitor", "ModelCheckpoint", "ModelPruning",
        "ModelSummary", "OnExceptionCheckpoint", "ProgressBar", "RichModelSummary", "RichProgressBar",
        "SpikeDetection", "StochasticWeightAveraging", "TQDMProgressBar", "ThroughputMonitor", "Timer",
        "WeightAveraging",
    ),
    "callbacks.batch_size_finder": ("BatchSizeFinder",),
    "callbacks.callback": ("Callback",),
    "callbacks.checkpoint": ("Checkpoint",),
    "callbacks.device_stats_monitor": ("DeviceStatsMonitor",),
    "callbacks.early_stopping": ("EarlyStopping", "EarlyStoppingReason",),
    "callbacks.finetuning": ("BackboneFinetuning", "BaseFinetuning", "multiplicative",),
    "callbacks.gradient_accumulation_scheduler": ("GradientAccumulationScheduler",),
    "callbacks.lambda_function": ("LambdaCallback",),
    "callbacks.lr_finder": ("LearningRateFinder",),
    "callbacks.lr_monitor": ("LearningRateMonitor",),
    "callbacks.model_checkpoint": ("ModelCheckpoint",),
    "callbacks.model_summary": ("ModelSummary",),
    "callbacks.on_exception_checkpoint": ("OnExceptionCheckpoint",),
    "callbacks.prediction_writer": ("BasePredictionWriter", "WriteInterval",),
    "callbacks.progress": ("ProgressBar", "RichProgressBar", "TQDMProgressBar",),
    "callbacks.progress.progress_bar": ("ProgressBar", "get_standard_metrics",),
    "callbacks.progress.rich_progress": ("RichProgressBar", "RichProgressBarTheme",),
    "callbacks.progress.tqdm_progress": ("TQDMProgressBar", "Tqdm", "convert_inf",),
    "callbacks.pruning": ("ModelPruning",),
    "callbacks.rich_model_summary": ("RichModelSummary",),
    "callbacks.spike": ("SpikeDetection",),
    "callbacks.stochastic_weight_avg": ("StochasticWeightAveraging",),
    "callbacks.throughput_monitor": ("ThroughputMonitor",),
    "callbacks.timer": ("Interval", "Timer",),
    "callbacks.weight_averaging": ("EMAWeightAveraging", "WeightAveraging",),
    "cli": (
        "ArgsType", "LRSchedulerCallable", "LRSchedulerType", "LRSchedulerTypeTuple", "LRSchedulerTypeUnion",
        "LightningArgumentParser", "LightningCLI", "ModuleType", "OptimizerCallable", "ReduceLROnPlateau",
        "SaveConfigCallback", "instantiate_class", "instantiate_module",
    ),
    "core": ("LightningDataModule", "LightningModule",),
    "core.datamodule": ("LightningDataModule",),
    "core.hooks": ("CheckpointHooks", "DataHooks", "ModelHooks",),
    "core.mixins": ("HyperparametersMixin",),
    "core.mixins.hparams_mixin": ("HyperparametersMixin",),
    "core.module": ("LightningModule", "MODULE_OPTIMIZERS",),
    "core.optimizer": ("LightningOptimizer", "do_nothing_closure",),
    "core.saving": (
        "CHECKPOINT_PAST_HPARAMS_KEYS", "convert", "load_hparams_from_tags_csv", "load_hparams_from_yaml",
        "save_hparams_to_tags_csv", "save_hparams_to_yaml", "update_hparams",
    ),
    "demos": (
        "BoringDataModule", "BoringModel", "DemoModel", "LightningLSTM", "LightningTransformer", "SequenceSampler",
        "SimpleLSTM", "Transformer", "WikiText2",
    ),
    "demos.boring_classes": (
        "BoringDataModule", "BoringDataModuleNoLen", "BoringModel", "DemoModel", "IterableBoringDataModule",
        "ManualOptimBoringModel", "Net", "RandomDataset", "RandomDictDataset", "RandomIterableDataset",
        "RandomIterableDatasetWithLen",
    ),
    "demos.lstm": ("LightningLSTM", "SequenceSampler", "SimpleLSTM",),
    "demos.mnist_datamodule": ("MNIST", "MNISTDataModule",),
    "demos.transformer": (
        "Dictionary", "LightningTransformer", "PositionalEncoding", "Transformer", "WikiText2", "tokenize",
    ),
    "loggers": ("CSVLogger", "CometLogger", "LitLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger",),
    "loggers.comet": ("CometLogger", "FRAMEWORK_NAME", "comet_experiment",),
    "loggers.csv_logs": ("CSVLogger", "ExperimentWriter",),
    "loggers.litlogger": ("LitLogger",),
    "loggers.logger": ("DummyExperiment", "DummyLogger", "Logger", "merge_dicts", "rank_zero_experiment",),
    "loggers.mlflow": ("LOCAL_FILE_URI_PREFIX", "MLFlowLogger",),
    "loggers.neptune": ("NeptuneLogger",),
    "loggers.tensorboard": ("TensorBoardLogger",),
    "loggers.utilities": ("_scan_checkpoints",),
    "loggers.wandb": ("WandbLogger",),
    "loops.evaluation_loop": ("RestartStage",),
    "loops.fit_loop": ("RestartStage",),
    "loops.optimization.automatic": ("Closure", "ClosureResult",),
    "loops.optimization.closure": ("AbstractClosure", "OutputResult",),
    "loops.optimization.manual": ("ManualResult",),
    "loops.training_epoch_loop": ("RestartStage",),
    "loops.utilities": ("check_finite_loss",),
    "overrides.distributed": (
        "UnrepeatedDistributedSampler", "UnrepeatedDistributedSamplerWrapper", "prepare_for_backward",
    ),
    "plugins": (
        "AsyncCheckpointIO", "BitsandbytesPrecision", "CheckpointIO", "DeepSpeedPrecision", "DoublePrecision",
        "FSDPPrecision", "HalfPrecision", "LayerSync", "MixedPrecision", "Precision", "TorchCheckpointIO",
        "TorchSyncBatchNorm", "TransformerEnginePrecision", "XLACheckpointIO", "XLAPrecision",
    ),
    "plugins.environments": (
        "ClusterEnvironment", "KubeflowEnvironment", "LSFEnvironment", "LightningEnvironment", "MPIEnvironment",
        "SLURMEnvironment", "TorchElasticEnvironment", "XLAEnvironment",
    ),
    "plugins.io": ("AsyncCheckpointIO", "CheckpointIO", "TorchCheckpointIO", "XLACheckpointIO",),
    "plugins.io.async_plugin": ("AsyncCheckpointIO",),
    "plugins.io.checkpoint_plugin": ("CheckpointIO",),
    "plugins.io.torch_plugin": ("TorchCheckpointIO",),
    "plugins.io.xla_plugin": ("XLACheckpointIO",),
    "plugins.layer_sync": ("LayerSync", "TorchSyncBatchNorm",),
    "plugins.precision": (
        "BitsandbytesPrecision", "DeepSpeedPrecision", "DoublePrecision", "FSDPPrecision", "HalfPrecision",
        "MixedPrecision", "Precision", "TransformerEnginePrecision", "XLAPrecision",
    ),
    "plugins.precision.amp": ("MixedPrecision",),
    "plugins.precision.bitsandbytes": ("BitsandbytesPrecision",),
    "plugins.precision.deepspeed": ("DeepSpeedPrecision",),
    "plugins.precision.double": ("DoublePrecision", "LightningDoublePrecisionModule",),
    "plugins.precision.fsdp": ("FSDPPrecision",),
    "plugins.precision.half": ("HalfPrecision",),
    "plugins.precision.precision": ("Precision",),
    "plugins.precision.transformer_engine": ("TransformerEnginePrecision",),
    "plugins.precision.xla": ("XLAPrecision",),
    "profilers": (
        "AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler", "XLAProfiler",
    ),
    "profilers.advanced": ("AdvancedProfiler",),
    "profilers.base": ("PassThroughProfiler",),
    "profilers.profiler": ("Profiler",),
    "profilers.pytorch": ("PyTorchProfiler", "RegisterRecordFunction", "ScheduleWrapper",),
    "profilers.simple": ("SimpleProfiler",),
    "profilers.xla": ("XLAProfiler",),
    "strategies": (
        "DDPStrategy", "DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "ParallelStrategy",
        "SingleDeviceStrategy", "Strategy",
    ),
    "strategies.ddp": ("DDPStrategy",),
    "strategies.deepspeed": ("DeepSpeedStrategy", "remove_module_hooks",),
    "strategies.fsdp": ("FSDPStrategy",),
    "strategies.launchers": ("_MultiProcessingLauncher", "_SubprocessScriptLauncher", "_XLALauncher",),
    "strategies.launchers.multiprocessing": ("_MultiProcessingLauncher",),
    "strategies.launchers.subprocess_script": ("_SubprocessScriptLauncher",),
    "strategies.model_parallel": ("ModelParallelStrategy",),
    "strategies.parallel": ("ParallelStrategy",),
    "strategies.single_device": ("SingleDeviceStrategy",),
    "strategies.single_xla": ("SingleDeviceXLAStrategy",),
    "strategies.strategy": ("Strategy",),
    "strategies.xla": ("XLAStrategy",),
    "trainer": ("Trainer", "seed_everything",),
    "trainer.configuration_validator": ("_verify_loop_configurations",),
    "trainer.states": ("RunningStage", "TrainerFn", "TrainerState", "TrainerStatus",),
    "trainer.trainer": ("Trainer",),
    "tuner": ("Tuner",),
    "tuner.lr_finder": ("_LRCallback", "_LRFinder",),
    "tuner.tuning": ("Tuner",),
    "utilities": (
        "AttributeDict", "CombinedLoader", "GradClipAlgorithmType", "LightningEnum", "disable_possible_user_warnings",
        "find_shared_parameters", "grad_norm", "is_picklable", "is_shared_filesystem", "measure_flops",
        "move_data_to_device", "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn",
        "set_shared_parameters", "suggested_max_num_workers",
    ),
    "utilities.combined_loader": ("CombinedLoader",),
    "utilities.compile": ("from_compiled", "to_uncompiled",),
    "utilities.data": ("extract_batch_size", "has_len_all_ranks",),
    "utilities.deepspeed": ("convert_zero_checkpoint_to_fp32_state_dict", "ds_checkpoint_dir",),
    "utilities.enums": ("GradClipAlgorithmType",),
    "utilities.exceptions": ("MisconfigurationException", "SIGTERMException",),
    "utilities.grads": ("grad_norm",),
    "utilities.imports": ("_OMEGACONF_AVAILABLE", "_RICH_AVAILABLE", "_TORCHVISION_AVAILABLE",),
    "utilities.memory": (
        "garbage_collection_cuda", "is_cuda_out_of_memory", "is_cudnn_snafu", "is_oom_error", "is_out_of_cpu_memory",
        "recursive_detach",
    ),
    "utilities.migration": ("migrate_checkpoint", "pl_legacy_patch",),
    "utilities.migration.utils": ("migrate_checkpoint", "pl_legacy_patch",),
    "utilities.model_helpers": ("get_torchvision_model", "is_overridden",),
    "utilities.model_registry": ("download_model_from_registry", "find_model_local_ckpt_path",),
    "utilities.model_summary": (
        "DeepSpeedSummary", "LayerSummary", "ModelSummary", "get_formatted_model_size", "get_human_readable_count",
        "parse_batch_shape", "summarize",
    ),
    "utilities.model_summary.model_summary": (
        "LEFTOVER_PARAMS_NAME", "LayerSummary", "ModelSummary", "NOT_APPLICABLE", "PARAMETER_NUM_UNITS",
        "UNKNOWN_SIZE", "get_formatted_model_size", "get_human_readable_count", "parse_batch_shape", "summarize",
    ),
    "utilities.model_summary.model_summary_deepspeed": (
        "DeepSpeedLayerSummary", "DeepSpeedSummary", "deepspeed_param_size",
    ),
    "utilities.parameter_tying": ("find_shared_parameters", "set_shared_parameters",),
    "utilities.parsing": (
        "AttributeDict", "clean_namespace", "collect_init_args", "get_init_args", "is_picklable", "lightning_getattr",
        "lightning_hasattr", "lightning_setattr", "parse_class_init_keys", "save_hyperparameters",
    ),
    "utilities.rank_zero": (
        "LightningDeprecationWarning", "WarningCache", "rank_prefixed_message", "rank_zero_debug",
        "rank_zero_deprecation", "rank_zero_info", "rank_zero_module", "rank_zero_only", "rank_zero_warn",
    ),
    "utilities.seed": ("isolate_rng",),
    "utilities.signature_utils": ("is_param_in_hook_signature",),
    "utilities.types": (
        "DistributedDataParallel", "EVAL_DATALOADERS", "LRSchedulerConfig", "LRSchedulerConfigType",
        "LRSchedulerPLType", "LRSchedulerType", "LRSchedulerTypeTuple", "LRSchedulerTypeUnion", "OptimizerConfig",
        "OptimizerLRScheduler", "OptimizerLRSchedulerConfig", "STEP_OUTPUT", "TRAIN_DATALOADERS",
    ),
    "utilities.upgrade_checkpoint": ("main",),
    "utilities.warnings": ("PossibleUserWarning",),
}

_XLA = "TPUs (XLA) are not supported by fulmen; run on CPU, CUDA or MPS."
_SHARDED = ("fulmen's FSDPStrategy and DeepSpeedStrategy take the Trainer's `precision=` (e.g. 'bf16-mixed') and "
            "turn it into FSDP's mixed-precision policy or DeepSpeed's config; there is no separate plugin.")
_DS_SUMMARY = ("Not ported: under DeepSpeed ZeRO-3 the model summary counts the parameters this process holds; "
               "count `p.ds_numel` for the full sizes.")
_LAYER_SYNC = "Pass `Trainer(sync_batchnorm=True)`; fulmen has no layer-sync plugin objects."
_LOGGER = ("Not shipped with fulmen: subclass `fulmen.loggers.Logger` (`log_metrics`, `log_hyperparams`) around "
           "that service's client, or use CSVLogger, TensorBoardLogger, MLFlowLogger or WandbLogger.")
_INTERNAL = "An internal helper of Lightning, not needed with fulmen."
_BITSANDBYTES = "Not ported: quantize the model with bitsandbytes yourself before fit."
_TRANSFORMER_ENGINE = "Not ported (FP8 training with NVIDIA Transformer Engine)."
#: the precision plugins left out, by name: Lightning exports each from `plugins` and `plugins.precision`
_PRECISION_OMITTED = {"BitsandbytesPrecision": _BITSANDBYTES, "DeepSpeedPrecision": _SHARDED, "FSDPPrecision": _SHARDED,
                      "TransformerEnginePrecision": _TRANSFORMER_ENGINE, "XLAPrecision": _XLA}

#: What fulmen leaves out on purpose, and what to write instead. Keys are a module path (the module and
#: everything under it) or ``"module:Name"`` for one name.
OMITTED: dict[str, str] = {
    # whole modules
    "accelerators.xla": _XLA,
    "loops": ("Lightning exports only private loop classes here (these names are their internals); fulmen's loops "
              "are plain functions in `fulmen.trainer.loops`, not classes to subclass: change what a run does with "
              "hooks and callbacks."),
    "trainer.configuration_validator": ("Lightning's module holds only a private function; fulmen checks the module "
                                        "when fit/validate/test/predict starts and names the missing hook, so there "
                                        "is no validator to call."),
    "loggers.comet": _LOGGER,
    "loggers.litlogger": _LOGGER,
    "loggers.neptune": _LOGGER,
    "plugins.layer_sync": _LAYER_SYNC,
    "plugins.io.xla_plugin": _XLA,
    "plugins.precision.bitsandbytes": _BITSANDBYTES,
    "plugins.precision.deepspeed": _SHARDED,
    "plugins.precision.fsdp": _SHARDED,
    "plugins.precision.transformer_engine": _TRANSFORMER_ENGINE,
    "plugins.precision.xla": _XLA,
    "profilers.xla": _XLA,
    "strategies.single_xla": _XLA,
    "strategies.xla": _XLA,
    "utilities.compile": ("The Trainer unwraps a `torch.compile`d module itself; `module._orig_mod` is the "
                          "uncompiled one."),
    "utilities.migration": ("fulmen reads Lightning 2.x checkpoints as they are; upgrade 1.x checkpoints with "
                            "Lightning's `python -m lightning.pytorch.utilities.upgrade_checkpoint` first."),
    "utilities.upgrade_checkpoint": ("Upgrade 1.x checkpoints with Lightning's "
                                     "`python -m lightning.pytorch.utilities.upgrade_checkpoint`."),
    "utilities.model_registry": ("Lightning's hosted model registry is not supported; pass a local, fsspec or "
                                 "http(s) path as `ckpt_path`."),
    "utilities.model_summary.model_summary_deepspeed": _DS_SUMMARY,
    # single names
    "accelerators:XLAAccelerator": _XLA,
    "cli:ModuleType": _INTERNAL,
    "core.hooks:CheckpointHooks": ("fulmen's LightningModule and LightningDataModule define these hooks "
                                   "themselves; subclass them (or `Callback`)."),
    "core.hooks:ModelHooks": ("fulmen's LightningModule defines its hooks itself; subclass it (or `Callback`)."),
    "core.module:MODULE_OPTIMIZERS": _INTERNAL,
    "core.optimizer:do_nothing_closure": _INTERNAL,
    "core.saving:CHECKPOINT_PAST_HPARAMS_KEYS": _INTERNAL,
    "core.saving:convert": _INTERNAL,
    "core.saving:update_hparams": _INTERNAL,
    "core.saving:save_hparams_to_tags_csv": "tags.csv is a pre-1.0 format; use `save_hparams_to_yaml`.",
    "loggers:CometLogger": _LOGGER,
    "loggers:LitLogger": _LOGGER,
    "loggers.logger:merge_dicts": _INTERNAL,
    **{f"{path}:{name}": why for path in ("plugins", "plugins.precision") for name, why in _PRECISION_OMITTED.items()},
    "plugins:LayerSync": _LAYER_SYNC,
    "plugins:TorchSyncBatchNorm": _LAYER_SYNC,
    "plugins:XLACheckpointIO": _XLA,
    "plugins.io:XLACheckpointIO": _XLA,
    "plugins.environments:XLAEnvironment": _XLA,
    "plugins.precision.double:LightningDoublePrecisionModule": _INTERNAL,
    "profilers:XLAProfiler": _XLA,
    "profilers.pytorch:RegisterRecordFunction": ("Internal to Lightning's PyTorchProfiler; "
                                                 "`PyTorchProfiler(record_module_names=True)` does it."),
    "profilers.pytorch:ScheduleWrapper": ("Internal to Lightning's PyTorchProfiler; pass "
                                          "`schedule=torch.profiler.schedule(...)`."),
    "utilities:is_shared_filesystem": _INTERNAL,
    "utilities.model_summary:DeepSpeedSummary": _DS_SUMMARY,
    "strategies.deepspeed:remove_module_hooks": _INTERNAL,
    "strategies.launchers:_XLALauncher": _XLA,
    "overrides.distributed:UnrepeatedDistributedSamplerWrapper": (
        "fulmen shards a custom sampler across processes itself (`use_distributed_sampler=True`); pass the sampler "
        "to the DataLoader as it is."),
    "overrides.distributed:prepare_for_backward": _INTERNAL,
    "tuner.lr_finder:_LRCallback": ("The sweep's callback is internal to `Tuner.lr_find`; use the "
                                    "`LearningRateFinder` callback to run the sweep from a callback."),
    "utilities.model_summary.model_summary:LEFTOVER_PARAMS_NAME": _INTERNAL,
    "utilities.model_summary.model_summary:PARAMETER_NUM_UNITS": _INTERNAL,
    "utilities.parsing:clean_namespace": _INTERNAL,
    "utilities.parsing:collect_init_args": "Internal to `save_hyperparameters()`; call that instead.",
    "utilities.parsing:get_init_args": "Internal to `save_hyperparameters()`; call that instead.",
    "utilities.parsing:parse_class_init_keys": _INTERNAL,
    "utilities.parsing:save_hyperparameters": "Call `self.save_hyperparameters()` on the module or data module.",
    "utilities.parsing:lightning_getattr": "Internal to the Tuner; use `getattr(model, name)`.",
    "utilities.parsing:lightning_hasattr": "Internal to the Tuner; use `hasattr(model, name)`.",
    "utilities.parsing:lightning_setattr": "Internal to the Tuner; use `setattr(model, name, value)`.",
    "utilities.rank_zero:rank_zero_module": ("fulmen's messages go through `logging.getLogger('fulmen')`; "
                                             "configure that logger instead."),
}


#: Lightning Fabric's public paths (relative to ``lightning.fabric``, at ``fulmen.fabric``) and names.
FABRIC_API: dict[str, tuple[str, ...]] = {
    "": ("Fabric", "is_wrapped", "seed_everything"),
    "accelerators": ("Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "find_usable_cuda_devices"),
    "plugins.collectives": ("Collective", "SingleDeviceCollective", "TorchCollective"),
    "wrappers": ("_FabricDataLoader", "_FabricModule", "_FabricOptimizer", "is_wrapped"),
    "strategies": ("DDPStrategy", "DataParallelStrategy", "DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy",
                   "ParallelStrategy", "STRATEGY_REGISTRY", "SingleDeviceStrategy", "SingleDeviceXLAStrategy",
                   "Strategy", "XLAFSDPStrategy", "XLAStrategy"),
    "plugins": ("BitsandbytesPrecision", "CheckpointIO", "ClusterEnvironment", "DeepSpeedPrecision", "DoublePrecision",
                "FSDPPrecision", "HalfPrecision", "MixedPrecision", "Precision", "TorchCheckpointIO",
                "TransformerEnginePrecision", "XLACheckpointIO", "XLAPrecision"),
    "plugins.environments": ("ClusterEnvironment", "KubeflowEnvironment", "LSFEnvironment", "LightningEnvironment",
                             "MPIEnvironment", "SLURMEnvironment", "TorchElasticEnvironment", "XLAEnvironment"),
    "loggers": ("CSVLogger", "Logger", "TensorBoardLogger"),
    "utilities": ("AttributeDict", "LightningEnum", "Throughput", "ThroughputMonitor", "disable_possible_user_warnings",
                  "is_shared_filesystem", "measure_flops", "move_data_to_device", "rank_zero_deprecation",
                  "rank_zero_info", "rank_zero_only", "rank_zero_warn", "suggested_max_num_workers"),
    "utilities.spike": ("SpikeDetection", "TrainingSpikeException"),
    "utilities.throughput": ("Throughput", "ThroughputMonitor", "get_available_flops", "measure_flops"),
}

_FABRIC_PRECISION = "Pass `Fabric(precision=...)` ('bf16-mixed', '16-true', ...): the strategy applies it itself."
#: Fabric names fulmen leaves out, ``"module:name"`` keys as in :data:`OMITTED`.
FABRIC_OMITTED: dict[str, str] = {
    "strategies:DataParallelStrategy": "torch's DataParallel is not supported; use strategy='ddp'.",
    "strategies:STRATEGY_REGISTRY": "Strategy names are listed in `fulmen.strategies.STRATEGY_NAMES`.",
    **{f"strategies:{n}": _XLA for n in ("SingleDeviceXLAStrategy", "XLAFSDPStrategy", "XLAStrategy")},
    **{f"plugins:{n}": _FABRIC_PRECISION for n in ("DeepSpeedPrecision", "FSDPPrecision")},
    "plugins:BitsandbytesPrecision": "Not ported: quantize the model with bitsandbytes yourself before setting it up.",
    "plugins:TransformerEnginePrecision": _TRANSFORMER_ENGINE,
    "plugins:XLACheckpointIO": _XLA, "plugins:XLAPrecision": _XLA, "plugins.environments:XLAEnvironment": _XLA,
    **{f"utilities:{n}": "Not in fulmen.fabric.utilities yet." for n in (
        "LightningEnum", "disable_possible_user_warnings", "is_shared_filesystem", "rank_zero_deprecation",
        "suggested_max_num_workers")},
    "utilities.throughput:get_available_flops": (
        "No table of devices' peak FLOPs in fulmen: pass ThroughputMonitor(fabric, available_flops=...) for device/mfu."),
}


def fulmen_path(module: str) -> str:
    """fulmen's module for Lightning's relative module path: ``"callbacks.progress" -> "fulmen.callbacks.progress"``."""
    return f"fulmen.{module}" if module else "fulmen"


def omission(module: str, name: str | None = None) -> str | None:
    """Why fulmen leaves out ``module`` (or ``name`` in it), or None when fulmen supports it."""
    parts = module.split(".")
    keys = [".".join(parts[:end]) for end in range(len(parts), 0, -1)]  # the module, then each package above it
    if name is not None:
        keys.insert(0, f"{module}:{name}")
    return next((OMITTED[key] for key in keys if key in OMITTED), None)


def rows() -> Iterator[dict[str, str | None]]:
    """One row per Lightning name: ``{"lightning": path, "fulmen": path or None, "note": why it is left out}``."""
    return _rows("lightning.pytorch", "", LIGHTNING_API, omission)


def fabric_rows() -> Iterator[dict[str, str | None]]:
    """:func:`rows` for Lightning Fabric: ``lightning.fabric.X.Y`` is ``fulmen.fabric.X.Y`` or explained."""
    return _rows("lightning.fabric", "fabric", FABRIC_API, lambda m, n: FABRIC_OMITTED.get(f"{m}:{n}"))


def _rows(package: str, fulmen_package: str, api: dict[str, tuple[str, ...]],
          omitted: Callable[[str, str], str | None]) -> Iterator[dict[str, str | None]]:
    for module, names in api.items():
        path = ".".join(p for p in (fulmen_package, module) if p)
        for name in names:
            reason = omitted(module, name)
            yield {"lightning": ".".join(p for p in (package, module, name) if p),
                   "fulmen": None if reason is not None else f"{fulmen_path(path)}.{name}", "note": reason or ""}
