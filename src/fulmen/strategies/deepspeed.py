"""DeepSpeed ZeRO: optimizer states (stage 1), gradients (2) and parameters (3) partitioned across
processes, optionally offloaded to CPU memory, by DeepSpeed's engine.

The arguments are Lightning's ``DeepSpeedStrategy``'s; they build DeepSpeed's config unless ``config``
(a dict or a JSON file) is given. The Trainer's ``accumulate_grad_batches``, ``gradient_clip_val`` and
``precision`` are written into that config; a config saying otherwise is an error naming both. The
engine is built with ``deepspeed.initialize`` from the module and the optimizer ``configure_optimizers``
returns (or the config's own); fulmen's loop keeps deciding when an accumulation window ends and tells
the engine. DeepSpeed runs on CPU too (gloo), which is how the tests run it. Needs ``fulmen[deepspeed]``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.errors import CheckpointError, MisconfigurationException, missing_extra
from fulmen.precision import Precision
from fulmen.strategies import sharded_checkpoint
from fulmen.strategies._forward import call_as_forward, releasing_after_eval
from fulmen.strategies.ddp import ParallelStrategy
from fulmen.strategies.sharded_checkpoint import deepspeed_available, import_deepspeed
from fulmen._utils import apply_to_collection, rank_zero_warn

_TAG = "checkpoint"  # the tag folder inside a checkpoint directory (Lightning's name, so its tools read ours)
_DTYPE_KEYS = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "16-true": "fp16"}


def _skip_shm_comm_build(deepspeed: Any) -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its ``deepspeed_shm_comm`` op at start (slow, needs a C++
    compiler): only ``inference_all_reduce`` uses it, and that falls back to torch.distributed. DeepSpeed (0.19) has
    no setting for it; ``build_shm_op`` reads only ``deepspeed.ops.__compatible_ops__``, so that entry is marked
    incompatible, unless the op was pre-built at install time (``DS_BUILD_SHM_COMM=1``) and costs nothing.
    """
    from deepspeed.git_version_info import installed_ops

    if not installed_ops.get("deepspeed_shm_comm", False):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class _DeepSpeedPrecision(Precision):
    """The engine owns the dtypes: it converts the module (fp16/bf16 in the config) and keeps float32
    master weights; here inputs are cast to match, and backward goes through the engine."""

    def __init__(self, name: str) -> None:
        self.name = name
        key = _DTYPE_KEYS.get(name)
        self.dtype = torch.bfloat16 if key == "bf16" else torch.float16 if key == "fp16" else None
        self.engine: Any = None

    def convert_input(self, data: Any) -> Any:
        if self.dtype is None:
            return data
        return apply_to_collection(data, Tensor, lambda t: t.to(self.dtype) if t.is_floating_point() else t)

    def backward(self, loss: Tensor, module: Any, *args: Any, **kwargs: Any) -> None:
        # the loop already divided the loss by accumulate_grad_batches: the engine must not divide again
        self.engine.backward(loss, scale_wrt_gas=False, **kwargs)


def check_same_world_size(path: Any, world_size: int, config: dict[str, Any]) -> None:
    """Resuming a DeepSpeed fit needs the number of processes that wrote the checkpoint: each holds one ZeRO
    partition of the optimizer (and, at stage 3, of the weights), and DeepSpeed's loader reads them by rank, so
    on another number it would load a part of them and go on. This fails first, saying what can be done
    (a universal checkpoint, ``config["checkpoint"]["load_universal"]``, is DeepSpeed's own and passes).

    Example::

        check_same_world_size("checkpoints/last.ckpt", world_size=4, config={})  # raises if 8 wrote it
    """
    if (config.get("checkpoint") or {}).get("load_universal"):
        return
    saved = sharded_checkpoint.deepspeed_world_size(path)
    if saved is None or saved == world_size:
        return
    raise CheckpointError(
        f"{os.fspath(path)!r} was written by {saved} DeepSpeed processes and this run has {world_size}: ZeRO's "
        f"optimizer partitions resume only on the number of processes that wrote them. Resume on {saved} processes, "
        f"or start a new fit from its weights: `fulmen consolidate {os.fspath(path)}` writes them as one file for "
        "Model.load_from_checkpoint (the optimizer, schedulers and loop position then start afresh)."
    )


class DeepSpeedStrategy(ParallelStrategy):
    """Train with DeepSpeed's ZeRO: partitioned optimizer states, gradients and parameters, optional offload.

    Args:
        zero_optimization: use ZeRO (with ``stage``); False: plain data parallelism through the engine.
        stage: 1 partitions optimizer states, 2 also gradients, 3 also parameters (then build large models in
            ``configure_model``: they are created partitioned).
        offload_optimizer: keep the optimizer states in CPU (or NVMe) memory.
        offload_parameters: keep the parameters in CPU (or NVMe) memory (stage 3).
        config: a DeepSpeed config dict or the path of a JSON file; it replaces the config the other
            arguments would build. The Trainer's accumulation, clipping and precision flags are merged in.
        logging_batch_size_per_gpu: the micro-batch size DeepSpeed reports with ("auto": the training
            loader's batch size when it can be read, else 1).
        logging_level: the level of DeepSpeed's own logger (default: warnings only).
        load_full_weights: ``ckpt_path`` is a single file of full weights rather than a DeepSpeed directory.
        exclude_frozen_parameters: leave parameters that do not train out of checkpoints.
        accelerator: Accepted for Lightning compatibility; the Trainer's ``accelerator`` decides.
        remote_device: Where ZeRO-3 creates the parameters ("cpu", "nvme"). None: on the device.
        offload_params_device: "cpu" or "nvme" for offloaded parameters.
        nvme_path: Folder for NVMe offload.
        params_buffer_count: Buffers for offloaded parameters.
        params_buffer_size: Size of each of those buffers, in elements.
        max_in_cpu: With NVMe offload: most parameter elements kept in CPU memory.
        offload_optimizer_device: "cpu" or "nvme" for offloaded optimizer states.
        optimizer_buffer_count: Buffers for offloaded optimizer states.
        block_size: Asynchronous I/O block size, in bytes.
        queue_depth: Asynchronous I/O queue depth.
        single_submit: Submit I/O requests one at a time.
        overlap_events: Overlap I/O submission and completion.
        thread_count: Threads for asynchronous I/O.
        pin_memory: Pin the CPU memory of offloaded states (faster transfers, more host memory).
        sub_group_size: ZeRO-3: elements per optimizer step group. None: sized to the model.
        contiguous_gradients: Copy gradients into one contiguous buffer as they are produced.
        overlap_comm: Overlap gradient reduction with the backward pass.
        allgather_partitions: Gather updated parameters with one all-gather rather than broadcasts.
        reduce_scatter: Reduce gradients with reduce-scatter rather than all-reduce.
        allgather_bucket_size: Elements per all-gather. None: sized to the model.
        reduce_bucket_size: Elements per gradient reduction. None: sized to the model.
        zero_allow_untested_optimizer: Allow optimizers DeepSpeed has not tested with ZeRO.
        parallel_devices: One device per local process. None: from the Trainer's ``devices``.
        cluster_environment: Where ranks, world size and the main address come from. None: detected.
        loss_scale: fp16: a fixed loss scale; 0 scales dynamically.
        initial_scale_power: fp16: the first dynamic scale is 2 to this power.
        loss_scale_window: fp16: steps without overflow before the scale grows.
        hysteresis: fp16: overflows tolerated before the scale shrinks.
        min_loss_scale: fp16: smallest dynamic scale.
        partition_activations: Partition checkpointed activations across processes.
        cpu_checkpointing: Keep checkpointed activations in CPU memory.
        contiguous_memory_optimization: Copy checkpointed activations into one contiguous buffer.
        synchronize_checkpoint_boundary: Synchronise at each activation checkpoint boundary.
        precision_plugin: Lightning's older name for ``precision``.
        process_group_backend: "nccl", "gloo"... None: NCCL on CUDA, Gloo otherwise.
        timeout: How long collectives wait for the other processes before failing.
        start_method: "popen" (the script again per process), "spawn", "fork" or "forkserver".
        precision: A ``Precision`` instance. None: chosen by the Trainer's ``precision``.

    The remaining arguments are DeepSpeed's config entries under Lightning's names (``offload_*_device``,
    ``nvme_path``, bucket sizes, fp16 loss scaling, activation checkpointing, async I/O).

    Bucket sizes and ZeRO-3's ``sub_group_size`` left at None are sized to the model when the engine is built:
    a sixteenth of its trainable parameters (at least 100k elements), at most Lightning's values (2e8; 1e12). The
    same bound goes to ZeRO-3's prefetch, reuse distance and live parameters (at most DeepSpeed's defaults).
    With fixed sizes, a model below them has all its gradients in one bucket, ZeRO-3 keeps every parameter it
    will use again gathered, and the optimizer steps the whole partition as one tensor (Adam's temporaries
    the partition's size): each process then holds the whole model's gradients and parameters at once, and
    sharding saves little at the peak. A ``config`` is used as given.

    Example::

        trainer = fulmen.Trainer(accelerator="gpu", devices=8, strategy="deepspeed_stage_3", precision="bf16-mixed")
        trainer = fulmen.Trainer(devices=2, strategy=DeepSpeedStrategy(stage=2, offload_optimizer=True))
        trainer = fulmen.Trainer(devices=2, strategy=DeepSpeedStrategy(config="ds_config.json"))
    """

    def __init__(self, accelerator: Any = None, zero_optimization: bool = True, stage: int = 2,
                 remote_device: str | None = None, offload_optimizer: bool = False, offload_parameters: bool = False,
                 offload_params_device: str = "cpu", nvme_path: str = "/local_nvme", params_buffer_count: int = 5,
                 params_buffer_size: int = 100_000_000, max_in_cpu: int = 1_000_000_000,
                 offload_optimizer_device: str = "cpu", optimizer_buffer_count: int = 4, block_size: int = 1048576,
                 queue_depth: int = 8, single_submit: bool = False, overlap_events: bool = True, thread_count: int = 1,
                 pin_memory: bool = False, sub_group_size: int | None = None, contiguous_gradients: bool = True,
                 overlap_comm: bool = True, allgather_partitions: bool = True, reduce_scatter: bool = True,
                 allgather_bucket_size: int | None = None, reduce_bucket_size: int | None = None,
                 zero_allow_untested_optimizer: bool = True, logging_batch_size_per_gpu: str | int = "auto",
                 config: str | os.PathLike | dict[str, Any] | None = None, logging_level: int = logging.WARN,
                 parallel_devices: list[torch.device] | None = None, cluster_environment: Any = None,
                 loss_scale: float = 0, initial_scale_power: int = 16, loss_scale_window: int = 1000,
                 hysteresis: int = 2, min_loss_scale: int = 1, partition_activations: bool = False,
                 cpu_checkpointing: bool = False, contiguous_memory_optimization: bool = False,
                 synchronize_checkpoint_boundary: bool = False, load_full_weights: bool = False,
                 precision_plugin: Any = None, process_group_backend: str | None = None,
                 timeout: timedelta | None = timedelta(minutes=30), exclude_frozen_parameters: bool = False,
                 start_method: str = "popen", precision: Any = None) -> None:
        if not deepspeed_available():
            raise missing_extra("deepspeed", "deepspeed", "strategy='deepspeed' (DeepSpeedStrategy)")
        super().__init__(accelerator, parallel_devices, cluster_environment, None, precision_plugin,
                         process_group_backend, timeout, start_method, precision)
        if stage not in (0, 1, 2, 3):
            raise MisconfigurationException(f"DeepSpeedStrategy(stage={stage!r}): ZeRO has stages 0, 1, 2 and 3.")
        self._config_given = config is not None
        # sized to the model in _initialize; None keeps the config's (or DeepSpeed's) values
        self._sized_buckets = config is None and zero_optimization and stage > 0
        if config is not None:
            self.config = _read_config(config)
        else:  # the config that Lightning's argument names describe
            self.config = {
                "activation_checkpointing": {
                    "partition_activations": partition_activations,
                    "cpu_checkpointing": cpu_checkpointing,
                    "contiguous_memory_optimization": contiguous_memory_optimization,
                    "synchronize_checkpoint_boundary": synchronize_checkpoint_boundary,
                },
                "aio": {"block_size": block_size, "queue_depth": queue_depth, "single_submit": single_submit,
                        "overlap_events": overlap_events, "thread_count": thread_count},
            }
        if config is None and zero_optimization:
            zero: dict[str, Any] = {
                "stage": stage, "contiguous_gradients": contiguous_gradients, "overlap_comm": overlap_comm,
                "allgather_partitions": allgather_partitions, "reduce_scatter": reduce_scatter,
                "allgather_bucket_size": _BUCKET_CAP if allgather_bucket_size is None else allgather_bucket_size,
                "reduce_bucket_size": _BUCKET_CAP if reduce_bucket_size is None else reduce_bucket_size,
                "sub_group_size": _SUB_GROUP_CAP if sub_group_size is None else sub_group_size,
            }
            if offload_optimizer:
                zero["offload_optimizer"] = {"device": offload_optimizer_device, "nvme_path": nvme_path,
                                             "buffer_count": optimizer_buffer_count, "pin_memory": pin_memory}
            if offload_parameters:
                zero["offload_param"] = {"device": offload_params_device, "nvme_path": nvme_path,
                                         "buffer_count": params_buffer_count, "buffer_size": params_buffer_size,
                                         "max_in_cpu": max_in_cpu, "pin_memory": pin_memory}
            self.config["zero_optimization"] = zero
            self.config["zero_allow_untested_optimizer"] = zero_allow_untested_optimizer
        self._bucket_args = {"allgather_bucket_size": allgather_bucket_size, "reduce_bucket_size": reduce_bucket_size,
                             "sub_group_size": sub_group_size}
        self._fp16_scaling = {"loss_scale": loss_scale, "initial_scale_power": initial_scale_power,
                              "loss_scale_window": loss_scale_window, "hysteresis": hysteresis,
                              "min_loss_scale": min_loss_scale}
        self.remote_device = remote_device
        self.logging_batch_size_per_gpu = logging_batch_size_per_gpu
        self.logging_level = logging_level
        self.load_full_weights = load_full_weights
        self.exclude_frozen_parameters = exclude_frozen_parameters
        # not a rule of its own: the loop's accumulation_window answer, delivered through the seam the other
        # strategies use (batches that do not end a window run inside no_backward_sync)
        self._boundary = True
        self._config_done = False
        self._engine: Any = None
        self._weights_loaded = False  # load_checkpoint put them in the engine already

    def __repr__(self) -> str:
        return f"DeepSpeedStrategy(stage={self.zero_stage}, world_size={self.world_size})"

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, value: Precision | None) -> None:
        name = getattr(value, "name", "32-true")
        self._precision = value if isinstance(value, _DeepSpeedPrecision) else _DeepSpeedPrecision(name)

    @property
    def supports_inference_mode(self) -> bool:
        # ZeRO-3 gathers parameters into its own storage during forward: inference tensors there break training
        return self.zero_stage != 3 and super().supports_inference_mode

    @property
    def zero_stage(self) -> int:
        return int((self.config.get("zero_optimization") or {}).get("stage", 0))

    @property
    def deepspeed_engine(self) -> Any:
        """The ``DeepSpeedEngine`` wrapping the module (from set-up on, and still after fit, so
        ``trainer.save_checkpoint`` works then), else None."""
        engine = self._engine
        return engine if engine is not None and engine.module is self.lightning_module else None

    # -- the config: the Trainer's flags go in, contradictions come out ---------------------------
    def connect_training_settings(self, *, accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                                  gradient_clip_algorithm: str | None = None, precision_given: bool = False,
                                  batch_size: int | None = None) -> None:
        """The caller's accumulation, clipping, precision and batch size go into the DeepSpeed config (merged at
        launch, so a contradiction fails once, before any process starts).

        Example::

            strategy.connect_training_settings(accumulate_grad_batches=2, gradient_clip_val=1.0)
        """
        self._settings = dict(accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
                              gradient_clip_algorithm=gradient_clip_algorithm, precision_given=precision_given,
                              batch_size=batch_size)

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._merge_settings()  # before any process starts: a bad config fails here, once
        return super().launch(function, *args, **kwargs)

    def _merge_settings(self) -> None:
        if self._config_done:
            return
        settings = getattr(self, "_settings", None) or {}
        cfg = self.config
        origin = "DeepSpeedStrategy(config=...)" if self._config_given else "the DeepSpeed config"

        accumulate = settings.get("accumulate_grad_batches", 1)
        if "gradient_accumulation_steps" in cfg and cfg["gradient_accumulation_steps"] not in (accumulate, "auto"):
            raise MisconfigurationException(
                f"{origin} sets gradient_accumulation_steps={cfg['gradient_accumulation_steps']}, but "
                f"Trainer(accumulate_grad_batches={accumulate}). Set it in one place: the Trainer flag (and remove "
                "it from the config), or the same value in both."
            )
        cfg["gradient_accumulation_steps"] = accumulate

        clip, algorithm = settings.get("gradient_clip_val"), settings.get("gradient_clip_algorithm")
        if clip and (algorithm or "norm") == "value":
            raise MisconfigurationException(
                f"DeepSpeed clips gradients by norm only, and Trainer(gradient_clip_algorithm='value') asks for value "
                f"clipping. Use gradient_clip_algorithm='norm' (gradient_clip_val={clip}), or another strategy."
            )
        if clip:
            if cfg.get("gradient_clipping") not in (None, "auto", 0, 0.0, float(clip)):
                raise MisconfigurationException(
                    f"{origin} sets gradient_clipping={cfg['gradient_clipping']}, but "
                    f"Trainer(gradient_clip_val={clip}). Set it in one place, or the same value in both."
                )
            cfg["gradient_clipping"] = float(clip)
        elif cfg.get("gradient_clipping") in (None, "auto"):
            # no clipping asked for: none. Left out, DeepSpeed's own default applies, which clips by total norm at
            # 1.0 (deepspeed/runtime/constants.py GRADIENT_CLIPPING_DEFAULT in 0.19): a step with a larger gradient
            # norm would be shortened silently, unlike the same program under DDP or FSDP (Lightning's Trainer also
            # writes 0.0 here when its gradient_clip_val is unset)
            cfg["gradient_clipping"] = 0.0

        name = self.precision.name
        given = bool(settings.get("precision_given"))
        wanted = _DTYPE_KEYS.get(name)
        enabled = [k for k in ("fp16", "bf16") if isinstance(cfg.get(k), dict) and cfg[k].get("enabled") in (True, "auto")]
        if name == "64-true":
            raise MisconfigurationException(
                "DeepSpeed does not train in float64 (precision='64-true'). Use '32-true', 'bf16-mixed' or '16-mixed'."
            )
        if wanted is not None:
            if enabled and enabled != [wanted]:
                raise MisconfigurationException(
                    f"{origin} enables {enabled[0]}, but Trainer(precision={name!r}) asks for {wanted}. Set the "
                    "precision in one place: the Trainer flag (and remove it from the config), or matching values."
                )
            section = dict(cfg.get(wanted) or {}, enabled=True)
            if wanted == "fp16":
                for key, value in self._fp16_scaling.items():
                    section.setdefault(key, value)
            cfg[wanted] = section
        elif enabled:
            if given:
                raise MisconfigurationException(
                    f"{origin} enables {enabled[0]}, but Trainer(precision={name!r}) asks for float32. Set the "
                    "precision in one place: the Trainer flag (and remove it from the config), or matching values."
                )
            self.precision = _DeepSpeedPrecision("bf16-mixed" if enabled == ["bf16"] else "16-mixed")

        if "train_micro_batch_size_per_gpu" not in cfg and "train_batch_size" not in cfg:
            size = self.logging_batch_size_per_gpu
            if size == "auto":
                size = settings.get("batch_size") or 1
            cfg["train_micro_batch_size_per_gpu"] = int(size)
        cfg.setdefault("zero_allow_untested_optimizer", True)
        # a torch optimizer with optimizer offload works (DeepSpeed's CPU Adam is faster, but compiles C++ first)
        cfg.setdefault("zero_force_ds_cpu_optimizer", False)
        cfg.setdefault("steps_per_print", sys.maxsize)  # fulmen's progress bar and loggers report progress
        self._config_done = True

    # -- set-up ---------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        super().setup_environment()  # the torch.distributed process group, started as for DDP
        self._merge_settings()
        deepspeed = import_deepspeed("strategy='deepspeed'", self.logging_level)
        if self.root_device.type == "cpu":
            _skip_shm_comm_build(deepspeed)
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        deepspeed.init_distributed(dist_backend=self.process_group_backend, timeout=self._timeout)

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        """Under ZeRO stage 3, layers built in ``configure_model`` are partitioned as they are created."""
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.Init(remote_device=self.remote_device, config_dict_or_path=self.config):
            yield

    def setup_module(self, module: nn.Module) -> nn.Module:
        self.lightning_module = module
        self.model = module
        if self.training:
            return module  # the engine is built with the optimizer, in setup_optimizers
        engine = self.deepspeed_engine
        if engine is not None:  # evaluating after fit: the engine it trained in
            self.model = engine
            return engine
        # evaluation or prediction only: an engine without an optimizer gathers ZeRO-3 shards and sets dtypes
        inference: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1, "steps_per_print": sys.maxsize}
        for key in ("fp16", "bf16"):
            if key in self.config:
                inference[key] = self.config[key]
        if self.zero_stage == 3:
            inference["zero_optimization"] = self.config["zero_optimization"]
            inference["zero_allow_untested_optimizer"] = True
        self.model = self._initialize(module, None, inference)
        return self.model

    def setup_optimizers(self, optimizers: list[Optimizer]) -> list[Optimizer]:
        if len(optimizers) > 1:
            raise MisconfigurationException(
                f"DeepSpeed trains with one optimizer, and configure_optimizers returned {len(optimizers)}. Return one "
                "(with one optional scheduler), or use strategy='fsdp' or 'ddp'."
            )
        if not optimizers and "optimizer" not in self.config:
            raise MisconfigurationException(
                "DeepSpeed needs an optimizer: return one from configure_optimizers, or put an 'optimizer' section in "
                "the DeepSpeed config."
            )
        module = self.lightning_module
        settings = getattr(self, "_settings", None) or {}
        if not getattr(module, "automatic_optimization", True) and settings.get("accumulate_grad_batches", 1) != 1:
            raise MisconfigurationException("accumulate_grad_batches does not apply to manual optimization.")
        from fulmen.module import LightningModule
        from fulmen._utils import is_overridden

        if is_overridden("configure_gradient_clipping", module, LightningModule):
            rank_zero_warn(
                "DeepSpeed clips gradients inside its optimizer step, so configure_gradient_clipping is called but "
                "cannot clip. Set Trainer(gradient_clip_val=...) instead."
            )
        if is_overridden("backward", module, LightningModule):
            rank_zero_warn("DeepSpeed runs the backward pass itself; the module's backward() override is not used.")
        self.model = engine = self._initialize(module, optimizers[0] if optimizers else None, self.config)
        self._optimizers = [engine.optimizer]
        return [engine.optimizer]

    def _initialize(self, module: nn.Module, optimizer: Optimizer | None, config: dict[str, Any]) -> Any:
        import deepspeed

        if self._sized_buckets and "zero_optimization" in config:
            numel = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)
            config = dict(config, zero_optimization=_sized_to_model(
                config["zero_optimization"], numel, self._bucket_args))
        trainable = [p for p in module.parameters() if p.requires_grad] if optimizer is None else None
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, model_parameters=trainable or None,
                                          config=config, dist_init_required=False)
        _share_master_weights(engine.optimizer)
        self.precision.engine = self._engine = engine
        return engine

    # -- what the loops call --------------------------------------------------------------------
    def step_function(self, name: str) -> Callable[..., Any]:
        """Steps run as the engine's forward, so ZeRO-3 gathers even the parameters a step uses directly."""
        module = self.lightning_module
        step = getattr(module, name)
        engine = self.deepspeed_engine
        if engine is None:
            return step
        run = functools.partial(call_as_forward, engine, module, step, nested_without_hooks=self.zero_stage == 3)
        release = getattr(engine.optimizer, "empty_partition_cache", None) if self.zero_stage == 3 else None
        if name == "training_step" or release is None:
            return run
        # ZeRO-3 keeps parameters it expects to use again soon gathered
        return releasing_after_eval(run, release)

    def no_backward_sync(self) -> Callable[[], ContextManager] | None:
        @contextmanager
        def within_window() -> Iterator[None]:
            self._boundary = False  # the engine accumulates; the next optimizer_step closes the window
            try:
                yield
            finally:
                self._boundary = True

        return within_window

    def backward(self, loss: Tensor, optimizer: Optimizer | None, *args: Any, module: Any = None, **kwargs: Any) -> None:
        engine = self.deepspeed_engine
        if engine is None:
            raise MisconfigurationException("DeepSpeed's backward needs its engine, which exists during trainer.fit only.")
        engine.set_gradient_accumulation_boundary(self._boundary)
        self.precision.backward(loss, module, *args, **kwargs)
        if not self._boundary:
            engine.step()  # only counts the micro-batch: DeepSpeed steps at the boundary

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None, model: Any,
                       after_closure: Callable[[], None] | None = None, **kwargs: Any) -> Any:
        self._boundary = True
        out = closure() if closure is not None else None
        if closure is not None and out is None:
            raise MisconfigurationException(
                "training_step returned None to skip the batch, which DeepSpeed cannot do (its optimizer step expects "
                "a backward pass). Return a loss for every batch, or use strategy='fsdp' or 'ddp'."
            )
        if after_closure is not None:
            after_closure()
        self.deepspeed_engine.step()
        return out

    def clip_gradients(self, optimizer: Optimizer, clip_val: float, algorithm: str) -> None:
        """The engine clips by the config's ``gradient_clipping`` inside its step, so there is nothing to do
        here, and asking for other clipping (e.g. ``self.clip_gradients`` in manual optimization) is an error."""
        configured = float(self.config.get("gradient_clipping") or 0.0)
        if algorithm == "value" or configured != float(clip_val):
            raise MisconfigurationException(
                f"DeepSpeed clips gradients inside its optimizer step, by norm, at the config's gradient_clipping="
                f"{configured}; clip_gradients({clip_val}, {algorithm!r}) cannot clip after backward. Set "
                f"gradient_clipping={clip_val} in DeepSpeedStrategy(config=...) (or Trainer(gradient_clip_val=...) "
                "with automatic optimization)."
            )

    # -- checkpoints ----------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        return {}  # the engine writes the weights (partitioned under ZeRO-3) itself

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return {}  # likewise the optimizer partitions

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """A directory: DeepSpeed's shards in ``checkpoint/`` and fulmen's state in its client state."""
        if storage_options is not None:
            raise MisconfigurationException(
                "storage_options do not apply to DeepSpeed checkpoints: its engine writes them."
            )
        engine = self.deepspeed_engine
        if engine is None:
            raise MisconfigurationException("A DeepSpeed checkpoint is written by the engine, which exists during fit.")
        client = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        client["fulmen_keys"] = sorted(client)

        def write(tmp: str) -> None:
            engine.save_checkpoint(tmp, client_state=client, tag=_TAG,
                                   exclude_frozen_parameters=self.exclude_frozen_parameters)

        sharded_checkpoint.write_directory(filepath, write, self)

    def load_checkpoint(self, filepath: Any, weights_only: bool | None = True) -> dict[str, Any]:
        engine = self.deepspeed_engine
        kind = sharded_checkpoint.kind(filepath)
        if kind != "deepspeed":
            if kind is None and os.path.isdir(os.fspath(filepath)):
                raise CheckpointError(f"{os.fspath(filepath)!r} is a directory but not a DeepSpeed checkpoint.")
            if self.training and not self.load_full_weights:
                raise CheckpointError(
                    f"{os.fspath(filepath)!r} is not a DeepSpeed checkpoint directory, so DeepSpeed cannot resume its "
                    "optimizer from it. Resume from the directory a DeepSpeed run saved, or start from these weights "
                    "with Module.load_from_checkpoint(path) (or DeepSpeedStrategy(load_full_weights=True))."
                )
            checkpoint = super().load_checkpoint(filepath, weights_only)
            self._load_full_weights(checkpoint["state_dict"])
            checkpoint.pop("optimizer_states", None)
            return checkpoint
        if not self.training:
            # evaluation: the float32 weights, put together from the shards (DeepSpeed's own loader cannot fill
            # an engine without an optimizer from a ZeRO-3 checkpoint)
            checkpoint = sharded_checkpoint.load_consolidated(filepath)
            self._load_full_weights(checkpoint["state_dict"])
            return checkpoint
        check_same_world_size(filepath, self.world_size, self.config)
        path, client = engine.load_checkpoint(
            os.fspath(filepath), load_optimizer_states=True, load_lr_scheduler_states=True,
            load_module_strict=getattr(self.lightning_module, "strict_loading", True))
        if path is None or client is None:
            raise CheckpointError(
                f"DeepSpeed could not load {os.fspath(filepath)!r} (no 'latest' tag, or its files are missing)."
            )
        keys = client.get("fulmen_keys")
        checkpoint = {k: client[k] for k in keys} if keys else {
            k: v for k, v in client.items() if k not in sharded_checkpoint._DEEPSPEED_KEYS}
        self._weights_loaded = True
        checkpoint["state_dict"] = {}  # in the engine already (restore_checkpoint's load is a no-op)
        checkpoint["optimizer_states"] = [{} for _ in self._optimizers]
        return checkpoint

    def _load_full_weights(self, state_dict: dict[str, Any]) -> None:
        module = self.lightning_module
        self._weights_loaded = True
        if self.zero_stage != 3:
            module.load_state_dict(state_dict, strict=getattr(module, "strict_loading", True))
            return
        import deepspeed

        # submodule by submodule: its partitioned parameters are gathered, loaded (rank zero's values win), and
        # partitioned again; buffers are not partitioned, so every rank loads its own
        for name, sub in module.named_modules():
            prefix = f"{name}." if name else ""
            own = {k[len(prefix):]: v for k, v in state_dict.items()
                   if k.startswith(prefix) and "." not in k[len(prefix):]}
            if own:
                with deepspeed.zero.GatheredParameters(list(sub.parameters(recurse=False)), modifier_rank=0):
                    sub.load_state_dict(own, strict=False)

    def load_model_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        if self._weights_loaded:
            self._weights_loaded = False
            return  # load_checkpoint put them in the engine
        super().load_model_state_dict(state_dict, strict)

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        """The engine restored its optimizer partitions in ``load_checkpoint``."""


def _share_master_weights(optimizer: Any) -> None:
    """ZeRO-3 training in the parameters' own dtype and place (float32, no offload) needs no second "master"
    copy of this process's partition: DeepSpeed means to train the partition in place then (stage3.py
    ``_create_fp32_partitions``: "we don't need another copy of the weights"), but tests for it by comparing a
    ``torch.device`` with a device-name string, which is never equal, so it keeps a full clone. The clone is
    dropped here: it becomes a second tensor over the partition's storage (the optimizer and its state keep
    their keys). DeepSpeed's copy from master to partition after each step is then a copy onto itself."""
    partitions = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if not partitions or not masters or getattr(optimizer, "offload_optimizer", True) or getattr(
            optimizer, "offload_param", True) or len(partitions) != len(masters):
        return
    with torch.no_grad():
        for partition, master in zip(partitions, masters):
            if (partition is None or master is partition or master.dtype != partition.dtype
                    or master.device != partition.device or master.shape != partition.shape):
                continue
            partition.copy_(master)  # equal already unless set-up stepped the optimizer; the master's values win
            master.data = partition.data


_BUCKET_CAP = 200_000_000  # Lightning's bucket sizes, the most a bucket sized to the model gets
_SUB_GROUP_CAP = 1_000_000_000_000  # Lightning's ZeRO-3 sub-group size (DeepSpeed's own is 1e9)
# ZeRO-3's limits on gathered parameters, and DeepSpeed's defaults for them (the most they get here)
_STAGE3_LIMITS = {"stage3_prefetch_bucket_size": 50_000_000, "stage3_max_reuse_distance": 1_000_000_000,
                  "stage3_max_live_parameters": 1_000_000_000}


def _sized_to_model(zero: dict[str, Any], numel: int, given: dict[str, int | None]) -> dict[str, Any]:
    """``zero`` (the config's zero_optimization) with the sizes the user left unset bounded by the model's size:
    a sixteenth of its ``numel`` trainable parameters (at least 100k), so no bucket or gathered set holds the
    whole model."""
    bound = max(100_000, -(-numel // 16))
    zero = dict(zero)
    for key, value in given.items():
        if value is None:
            zero[key] = min(_SUB_GROUP_CAP if key == "sub_group_size" else _BUCKET_CAP, bound)
    if zero.get("stage") == 3:
        for key, default in _STAGE3_LIMITS.items():
            zero.setdefault(key, min(default, 2 * bound if key == "stage3_max_live_parameters" else bound))
    return zero


def _read_config(config: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, dict):
        return json.loads(json.dumps(config))  # a copy the strategy may fill in, leaving the caller's alone
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise MisconfigurationException(
            f"DeepSpeedStrategy(config={path!r}): no such file. Pass a dict or the path of a DeepSpeed JSON config."
        )
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise MisconfigurationException(f"DeepSpeed config {path!r} is not valid JSON: {err}") from None

