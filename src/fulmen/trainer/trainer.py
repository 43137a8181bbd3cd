"""``Trainer``: the flags, their validation, and the fit/validate/test/predict entry points.

The loops themselves live in ``loops.py``; this file sets a run up, hands it to them, and cleans up.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import sys
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch

from fulmen._utils import is_overridden, rank_zero_info, rank_zero_warn
from fulmen.accelerators import Accelerator, resolve_accelerator
from fulmen.callbacks.callback import CALLBACK_HOOKS, Callback
from fulmen.errors import ArgumentTypeError, MisconfigurationException, UnknownArgumentError, _TunerExitException
from fulmen.precision import make_precision
from fulmen.strategies.launcher import Handoff
from fulmen.strategies.strategy import SingleDeviceStrategy, Strategy
from fulmen.trainer import checkpointing, loops
from fulmen.trainer import data as _data
from fulmen.trainer.checks import check_fit_configuration
from fulmen.trainer.logging import MetricsHub
from fulmen.trainer.optimizers import LightningOptimizer, LRSchedulerConfig
from fulmen.trainer.state import LoopState, RunningStage, TrainerFn, TrainerState, TrainerStatus

if TYPE_CHECKING:  # a hint only (LightningCLI reads it: `--trainer.logger CSVLogger`); no import cost
    from fulmen.loggers.logger import Logger


class _TrainerHandoff(Handoff):
    """What a spawned run (``strategy="ddp_spawn"``) brings back to the Trainer that launched it: rank 0's fitted
    weights, callback metrics, loop progress and checkpoint callbacks' states (see ``launcher.Handoff``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def modules(self) -> list[Any]:
        return [self.trainer.lightning_module]

    def collect(self) -> Any:
        from fulmen._utils import apply_to_collection

        trainer = self.trainer
        to_cpu = lambda t: t.detach().cpu()  # noqa: E731
        weights = {k: to_cpu(v) for k, v in trainer.lightning_module.state_dict().items()}
        metrics = apply_to_collection(dict(trainer.callback_metrics), torch.Tensor, to_cpu)
        states = [cb.state_dict() for cb in trainer.checkpoint_callbacks]
        return weights, metrics, trainer._loop.state_dict(), states

    def restore(self, data: Any) -> None:
        weights, metrics, loop_state, states = data
        trainer = self.trainer
        trainer.lightning_module.load_state_dict(weights)
        trainer._metrics.callback.clear()
        trainer._metrics.callback.update(metrics)
        trainer._loop.load_state_dict(loop_state)
        for cb, state in zip(trainer.checkpoint_callbacks, states):
            cb.load_state_dict(state)

    def suspects(self) -> list[tuple[str, Any]]:
        trainer = self.trainer
        found = [("the LightningModule", trainer.lightning_module), ("the datamodule", trainer.datamodule)]
        for loaders in (trainer._given_train_loaders, trainer._given_val_loaders, trainer._given_eval_loaders):
            for ld in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
                if ld is not None:
                    found.append(("a dataloader's dataset", getattr(ld, "dataset", ld)))
        return found


class _CheckedInit(type):
    """Reject unknown Trainer arguments with the closest valid name, and fill Lightning's environment defaults.

    Unknown names fail before ``__init__`` runs; a subclass with ``**kwargs`` (which may pop names of its own)
    gets the same message when they reach the Trainer's ``__init__``.
    """

    @property
    def __signature__(cls) -> inspect.Signature:
        # `inspect.signature(Trainer)` would otherwise read this metaclass's `__call__(*args, **kwargs)`
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        base = Trainer
        params = inspect.signature(cls.__init__).parameters
        kwargs = {**_env_defaults(cls, params), **kwargs}
        if args and cls.__init__ is base.__init__:  # a subclass may take positional arguments of its own
            raise UnknownArgumentError(
                f"{cls.__name__}() takes keyword arguments only, e.g. {cls.__name__}(max_epochs=10)."
            )
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            # a subclass's `**kwargs` may pop its own names before passing the rest on: the Trainer's own
            # signature is checked when they reach it
            try:
                return super().__call__(*args, **kwargs)
            except TypeError as exc:
                unexpected = rf"{base.__qualname__}\.__init__\(\) got an unexpected keyword argument '(\w+)'"
                found = re.fullmatch(unexpected, str(exc))
                if found is None:
                    raise
                own = inspect.signature(base.__init__).parameters
                raise UnknownArgumentError(_unknown_argument_message(cls, found.group(1), own)) from None
        for name in kwargs:
            if name not in params:
                raise UnknownArgumentError(_unknown_argument_message(cls, name, params))
        return super().__call__(*args, **kwargs)


def _unknown_argument_message(cls: type, name: str, params: Any) -> str:
    from fulmen.trainer.legacy import trainer_flag_hint

    legacy = trainer_flag_hint(name)
    if legacy is not None:
        return legacy
    close = difflib.get_close_matches(name, [p for p in params if p not in ("self", "args", "kwargs")], n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return f"{cls.__name__} has no argument `{name}`.{hint}"


def _env_defaults(cls: type, params: Any) -> dict[str, Any]:
    """Lightning's environment defaults: ``PL_TRAINER_MAX_EPOCHS=3`` (``PL_<CLASS>_<ARGUMENT>``, the class's name
    in capitals) stands for ``max_epochs=3`` unless the argument is passed. Values are read as Python literals
    where they parse (``3``, ``0.5``, ``True``, ``[0, 1]``), else kept as text."""
    import ast

    found = {}
    prefix = f"PL_{cls.__name__.upper()}_"
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name == "self":
            continue
        raw = os.environ.get(prefix + name.upper())
        if raw:
            try:
                found[name] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                found[name] = raw
    return found


def _make_strategy(strategy: Any, accelerator: Accelerator, devices: list[torch.device], num_nodes: int,
                   precision: Any, checkpoint_io: Any, environment: Any, sync_batchnorm: bool) -> Strategy:
    """The strategy object for the flags; a multi-process one learns its ranks from the cluster environment."""
    from fulmen.strategies import STRATEGY_NAMES, ParallelStrategy, resolve_strategy_name

    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise MisconfigurationException(f"num_nodes={num_nodes!r}: pass the number of machines, an integer >= 1.")
    several = len(devices) * num_nodes > 1
    if strategy is None or strategy == "auto":
        strategy = "ddp" if several else "single_device"
    if isinstance(strategy, str):
        name = strategy.lower()
        if name == "single_device":
            if several:
                raise MisconfigurationException(
                    f"strategy='single_device' runs one process, but devices={len(devices)} x num_nodes={num_nodes} asks "
                    "for several. Use strategy='ddp' (or 'auto'), or devices=1."
                )
            return SingleDeviceStrategy(devices[0], precision, checkpoint_io)
        if name not in STRATEGY_NAMES:
            close = difflib.get_close_matches(name, list(STRATEGY_NAMES) + ["auto", "single_device"], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MisconfigurationException(
                f"strategy={strategy!r} is not known.{hint} Use 'auto', 'single_device', "
                + ", ".join(repr(n) for n in STRATEGY_NAMES) + ", or a Strategy instance."
            )
        strategy = resolve_strategy_name(name)
    if not isinstance(strategy, Strategy):
        raise MisconfigurationException(
            f"strategy={strategy!r} is not a strategy; pass a name such as 'ddp', or a fulmen Strategy instance."
        )
    if precision is not None:
        strategy.precision = precision
    if checkpoint_io is not None:
        strategy.checkpoint_io = checkpoint_io
    if isinstance(strategy, ParallelStrategy):
        from fulmen.strategies.environments import detect_environment

        if sync_batchnorm and devices[0].type != "cuda":
            raise MisconfigurationException(
                f"sync_batchnorm=True needs CUDA GPUs: torch's SyncBatchNorm does not run on {devices[0].type}. Remove the "
                "flag here (each process then keeps its own batch statistics)."
            )
        strategy.sync_batchnorm = sync_batchnorm
        strategy.configure(accelerator, devices, num_nodes, environment or detect_environment())
    elif several:
        raise MisconfigurationException(
            f"{type(strategy).__name__} runs one process, but devices={len(devices)} x num_nodes={num_nodes} asks for "
            "several. Pass strategy='ddp', or devices=1."
        )
    return strategy


def resolve_hardware(accelerator: Any, strategy: Any, devices: Any, num_nodes: int, precision: Any, plugins: Any,
                     sync_batchnorm: bool = False) -> tuple[Accelerator, list[int], Strategy]:
    """The accelerator, device indices and configured strategy for Lightning's hardware flags: the one place
    where they are read, for the Trainer and for Fabric alike.

    Example::

        accelerator, device_ids, strategy = resolve_hardware("cpu", "ddp", 2, 1, "32-true", None)
    """
    from fulmen.precision import Precision
    from fulmen.strategies.environments import ClusterEnvironment

    accelerator = resolve_accelerator(accelerator)
    parsed = accelerator.parse_devices(devices)  # GPUs are indexed, CPU processes counted (0..n-1)
    device_ids = list(range(parsed)) if isinstance(parsed, int) else list(parsed)
    parallel_devices = accelerator.get_parallel_devices(device_ids)
    plugins = plugins if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else []
    precision_plugin = next((p for p in plugins if isinstance(p, Precision)), None)
    if precision_plugin is not None and precision is not None:
        raise MisconfigurationException("Pass precision either as `precision=` or as a Precision plugin, not both.")
    prec = precision_plugin or make_precision(precision, parallel_devices[0].type)
    checkpoint_io = next((p for p in plugins if hasattr(p, "save_checkpoint") and hasattr(p, "load_checkpoint")), None)
    environment = next((p for p in plugins if isinstance(p, ClusterEnvironment)), None)
    keep_own = isinstance(strategy, Strategy) and precision is None and precision_plugin is None
    strategy = _make_strategy(strategy, accelerator, parallel_devices, num_nodes, None if keep_own else prec,
                              checkpoint_io, environment, sync_batchnorm)
    return accelerator, device_ids, strategy


def _parse_duration(value: Any, flag: str) -> float | None:
    """Seconds in ``value``: 'DD:HH:MM:SS', a timedelta or a dict of timedelta arguments (None stays None)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        try:
            return timedelta(**value).total_seconds()
        except TypeError as exc:
            raise MisconfigurationException(
                f"{flag}={value!r}: the dict holds timedelta's arguments, e.g. {{'hours': 2, 'minutes': 30}} ({exc})."
            ) from None
    if isinstance(value, str):
        try:
            d, h, m, s = (int(x) for x in value.split(":"))
        except ValueError:
            raise MisconfigurationException(
                f"{flag}={value!r}: write it as 'DD:HH:MM:SS', e.g. '00:12:00:00' for twelve hours."
            ) from None
        return timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
    raise MisconfigurationException(f"{flag}={value!r}: pass 'DD:HH:MM:SS', a timedelta or a dict like {{'hours': 2}}.")


class Trainer(metaclass=_CheckedInit):
    """Runs a LightningModule: ``fit``, ``validate``, ``test`` and ``predict``.

    It moves the model and batches to the device, runs the loops with evaluation mode and inference
    mode where they belong, logs, shows progress, and saves checkpoints. Flags, defaults and meaning
    are PyTorch Lightning 2.x's.

    Example::

        trainer = fulmen.Trainer(max_epochs=5, accelerator="auto")
        trainer.fit(model, train_loader, val_loader)
        trainer.test(model, test_loader)

    Args:
        accelerator: "auto" (a GPU when there is one), "cpu", "cuda"/"gpu", "mps", or an ``Accelerator`` instance.
        strategy: "auto", "single_device" or a Strategy instance.
        devices: how many devices, which ones (a list or "0,"), or "auto".
        num_nodes: machines to run on.
        precision: "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true" (or 32, 64, 16, "bf16").
        logger: a logger, a list of them, True for the default (a TensorBoardLogger when tensorboard or tensorboardX
            is installed, else a CSVLogger), or False for none.
        callbacks: callbacks to add to the default ones.
        fast_dev_run: run N (True: 1) batches of each loop once to smoke-test the code; no logs or checkpoints.
        max_epochs: stop after this many epochs (1000 when neither max_epochs nor max_steps is set; -1: no limit).
        min_epochs: train at least this many epochs even when asked to stop earlier.
        max_steps: stop after this many optimizer steps (-1: no limit).
        min_steps: take at least this many optimizer steps even when asked to stop earlier.
        max_time: stop after this long: "DD:HH:MM:SS", a timedelta or a dict such as {"hours": 2}.
        limit_train_batches: batches per training epoch: a count, or a fraction of the loader.
        limit_val_batches: batches per validation run: a count, or a fraction (0 turns validation off).
        limit_test_batches: batches per test run: a count, or a fraction.
        limit_predict_batches: batches per predict run: a count, or a fraction.
        overfit_batches: train and validate on this many (or this fraction of) batches, unshuffled.
        val_check_interval: validate every N training batches (int), at this fraction of an epoch (float), or
            whenever this much time passed since the last validation ("DD:HH:MM:SS", a timedelta or a dict
            such as {"minutes": 30}; checked after each batch, in the epochs check_val_every_n_epoch allows).
        check_val_every_n_epoch: validate every N epochs; None counts val_check_interval across epochs.
        num_sanity_val_steps: validation batches run before training to catch bugs early (-1: all).
        log_every_n_steps: how often step-level values go to the loggers.
        enable_checkpointing: add a ModelCheckpoint when none is given (default True).
        enable_progress_bar: show a progress bar (default True).
        enable_model_summary: print the model summary at the start of fit (default True).
        accumulate_grad_batches: add up gradients over N batches before each optimizer step.
        gradient_clip_val: clip gradients at this value before each step (None or 0: no clipping).
        gradient_clip_algorithm: "norm" (default) or "value".
        deterministic: use only deterministic algorithms (True), warn about others ("warn"), or leave torch as is (None).
        benchmark: let cuDNN pick the fastest kernels for fixed input sizes.
        inference_mode: evaluate under torch.inference_mode() (True) or torch.no_grad() (False).
        use_distributed_sampler: wrap samplers for multi-process runs.
        profiler: None, "simple", "advanced", "pytorch", or a Profiler instance.
        detect_anomaly: run with torch.autograd's anomaly detection and check every loss.
        barebones: turn off every extra (logging, checkpoints, progress bar, summary) for the bare loop.
        plugins: a Precision plugin or a CheckpointIO, to replace the default ones.
        sync_batchnorm: synchronise batch norm statistics across processes.
        reload_dataloaders_every_n_epochs: ask for fresh training loaders every N epochs (0: never).
        default_root_dir: where logs and checkpoints go when no other path is given (default: the current directory).
        enable_autolog_hparams: send the module's and datamodule's hyperparameters to the loggers.
        model_registry: accepted for Lightning 2.6 programs and configs, and kept as ``trainer.model_registry``.
            Lightning uploads checkpoints to its hosted model registry under this name; fulmen has no such
            service, so nothing is uploaded (one warning says so). Checkpoints stay where ModelCheckpoint writes.
    """

    def __init__(
        self,
        *,
        accelerator: str | Any = "auto",
        strategy: str | Strategy = "auto",
        devices: list[int] | str | int = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Logger | Iterable[Logger] | bool | None = None,
        callbacks: list[Callback] | Callback | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: float | int | None = None,
        limit_val_batches: float | int | None = None,
        limit_test_batches: float | int | None = None,
        limit_predict_batches: float | int | None = None,
        overfit_batches: float | int = 0.0,
        val_check_interval: int | float | str | timedelta | dict[str, int] | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True,
        model_registry: str | None = None,
    ) -> None:
        # -- hardware -----------------------------------------------------------------------------
        self._precision_flag = precision
        self._accelerator, self._device_ids, self.strategy = resolve_hardware(
            accelerator, strategy, devices, num_nodes, precision, plugins, sync_batchnorm)
        if self.strategy.world_size == 1:
            # torch's first optimizer construction imports torch._dynamo (~1-2 s). Every fit pays it in
            # configure_optimizers anyway; paying it here keeps that one-time cost out of fit's timings. Not
            # with several processes: a process about to start the others would pay it alone while they wait
            # to be started; each pays it during set-up instead (DDP's constructor or the first optimizer), all at
            # the same time, as a torchrun script does.
            import torch._dynamo  # noqa: F401

        # -- loop limits --------------------------------------------------------------------------
        fast_dev_run = int(fast_dev_run) if isinstance(fast_dev_run, bool) else fast_dev_run
        if not isinstance(fast_dev_run, int) or fast_dev_run < 0:
            raise MisconfigurationException(f"fast_dev_run={fast_dev_run!r}: pass True, False or a number of batches >= 0.")
        self.fast_dev_run = fast_dev_run
        if max_epochs is None and max_steps == -1 and not fast_dev_run:
            max_epochs = 1000  # Lightning's default when no limit at all is given
        for flag, value in (("max_epochs", max_epochs), ("min_epochs", min_epochs), ("min_steps", min_steps)):
            if value is not None and (not isinstance(value, int) or value < -1):
                raise MisconfigurationException(f"{flag}={value!r}: pass a whole number (or -1 for no limit).")
        if not isinstance(max_steps, int) or max_steps < -1:
            raise MisconfigurationException(f"max_steps={max_steps!r}: pass a whole number, or -1 for no limit.")
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs
        self.max_steps = max_steps
        self.min_steps = min_steps
        self.max_time = _parse_duration(max_time, "max_time")
        self.limit_train_batches = _data.check_limit(limit_train_batches, "limit_train_batches")
        self.limit_val_batches = _data.check_limit(limit_val_batches, "limit_val_batches")
        self.limit_test_batches = _data.check_limit(limit_test_batches, "limit_test_batches")
        self.limit_predict_batches = _data.check_limit(limit_predict_batches, "limit_predict_batches")
        self.overfit_batches = _data.check_limit(overfit_batches, "overfit_batches") or 0
        # a duration validates whenever that much wall-clock time has passed since the last validation
        self._val_check_seconds = None
        if isinstance(val_check_interval, (str, dict, timedelta)):
            self._val_check_seconds = _parse_duration(val_check_interval, "val_check_interval")
        elif val_check_interval is not None:
            if isinstance(val_check_interval, float):
                val_check_interval = _data.check_limit(val_check_interval, "val_check_interval")  # 10.0 -> 10
            if isinstance(val_check_interval, float):
                if val_check_interval == 0:
                    raise MisconfigurationException(
                        "val_check_interval=0.0 would validate never; to turn validation off set limit_val_batches=0."
                    )
            elif not isinstance(val_check_interval, int) or val_check_interval < 1:
                raise MisconfigurationException(
                    f"val_check_interval={val_check_interval!r}: pass a fraction of an epoch in (0, 1] or a number of "
                    "training batches >= 1."
                )
        self.val_check_interval = 1.0 if val_check_interval is None else val_check_interval
        if check_val_every_n_epoch is not None and (not isinstance(check_val_every_n_epoch, int) or check_val_every_n_epoch < 1):
            raise MisconfigurationException(
                f"check_val_every_n_epoch={check_val_every_n_epoch!r}: pass an integer >= 1, or None to count "
                "val_check_interval across epochs."
            )
        self.check_val_every_n_epoch = check_val_every_n_epoch
        if num_sanity_val_steps is not None and (not isinstance(num_sanity_val_steps, int) or num_sanity_val_steps < -1):
            raise MisconfigurationException(f"num_sanity_val_steps={num_sanity_val_steps!r}: pass -1 (all), 0 (none) or a count.")
        # -1 means every batch, which Lightning reports as inf
        self.num_sanity_val_steps: int | float = (
            2 if num_sanity_val_steps is None else math.inf if num_sanity_val_steps == -1 else num_sanity_val_steps
        )
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 0):
            raise MisconfigurationException(f"log_every_n_steps={log_every_n_steps!r}: pass an integer >= 0.")
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise MisconfigurationException(
                f"accumulate_grad_batches={accumulate_grad_batches!r}: pass an integer >= 1."
            )
        self.accumulate_grad_batches = accumulate_grad_batches
        if gradient_clip_val is not None and (not isinstance(gradient_clip_val, (int, float)) or gradient_clip_val < 0):
            raise MisconfigurationException(f"gradient_clip_val={gradient_clip_val!r}: pass a number >= 0.")
        if gradient_clip_algorithm is not None and gradient_clip_algorithm.lower() not in ("norm", "value"):
            raise MisconfigurationException(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r} is not known; use 'norm' or 'value'."
            )
        self.gradient_clip_val = gradient_clip_val
        # None when not given, as in Lightning: configure_gradient_clipping receives it as is; clipping defaults to norm
        self.gradient_clip_algorithm = gradient_clip_algorithm.lower() if gradient_clip_algorithm else None
        if not isinstance(reload_dataloaders_every_n_epochs, int) or reload_dataloaders_every_n_epochs < 0:
            raise MisconfigurationException("reload_dataloaders_every_n_epochs: pass an integer >= 0.")
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        if fast_dev_run:
            self.limit_train_batches = self.limit_val_batches = fast_dev_run
            self.limit_test_batches = self.limit_predict_batches = fast_dev_run
            self.max_steps, self.max_epochs, self.num_sanity_val_steps = fast_dev_run, 1, 0
            self.val_check_interval, self.check_val_every_n_epoch, self.log_every_n_steps = 1.0, 1, 1
            self._val_check_seconds = None
        if self.overfit_batches:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches

        # -- behaviour flags ----------------------------------------------------------------------
        self.inference_mode = inference_mode
        self.detect_anomaly = detect_anomaly
        self.use_distributed_sampler = use_distributed_sampler
        self.sync_batchnorm = sync_batchnorm
        self.num_nodes = num_nodes
        self.barebones = barebones
        self.enable_autolog_hparams = enable_autolog_hparams
        self.model_registry = model_registry
        if model_registry:
            rank_zero_warn(
                f"Trainer(model_registry={model_registry!r}) is kept but not used: fulmen does not upload to "
                "Lightning's hosted model registry. Checkpoints are written where ModelCheckpoint saves them; "
                "remove the argument to silence this."
            )
        self.deterministic = deterministic
        self._set_torch_flags(deterministic, benchmark)
        from fulmen.profilers import make_profiler

        self.profiler = make_profiler(profiler)  # a pass-through one for None: loops then wrap nothing
        self._default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else None

        if barebones:
            for flag, value in (("enable_checkpointing", enable_checkpointing), ("logger", logger),
                                ("enable_progress_bar", enable_progress_bar),
                                ("enable_model_summary", enable_model_summary)):
                if value:
                    raise MisconfigurationException(f"barebones=True turns {flag} off; drop `{flag}={value!r}`.")
            enable_checkpointing = enable_progress_bar = enable_model_summary = False
            logger = False
        if not fast_dev_run:
            self._loggers = self._make_loggers(logger)
        else:  # as Lightning: code that calls self.logger still runs, and nothing is written
            from fulmen.loggers.logger import DummyLogger

            wanted = logger is None or logger is True or bool(self._make_loggers(logger))
            self._loggers = [DummyLogger()] if wanted else []
        self.callbacks = self._make_callbacks(callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary)

        # -- run state ------------------------------------------------------------------------------
        self.state = TrainerState()
        self._loop = LoopState()
        self._metrics = MetricsHub(self)
        self.lightning_module: Any = None
        self.datamodule: Any = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.num_training_batches: float = math.inf
        self.num_val_batches: list[float] = []
        self.num_sanity_val_batches: list[float] = []
        self.num_test_batches: list[float] = []
        self.num_predict_batches: list[float] = []
        self.is_last_batch = False
        self.ckpt_path: str | None = None
        self._hooks: dict[str, list[Any]] = {}
        self._given_val_loaders: Any = None
        self._given_train_loaders: Any = None
        self._given_eval_loaders: Any = None
        self._model_was_given = True
        self._verbose = True
        self._return_predictions = True
        self._val_check_batch: float = math.inf
        self._enable_validation = False
        self._preemption: Any = None  # set while fit runs: SIGTERM / SLURM requeue handling
        # the loop's decisions for the batch whose batch-end hooks run, which callbacks and checkpoints read:
        self._ends_window = False  # it ends an accumulation window (accumulation_window)
        self._step_row_due = False  # its logged row goes to the loggers after the hooks (logging_due)
        self._val_due = False  # validation runs after the hooks (the epoch plan's val_due)
        self._worker_streams = {"train": _data._WorkerStreams()}  # loader workers' random streams, by loader

    # -- construction helpers ---------------------------------------------------------------------
    def _merge_model_callbacks(self, module: Any) -> None:
        """Callbacks from ``configure_callbacks`` replace the Trainer's of the same type; checkpoints go last."""
        from fulmen.callbacks.model_checkpoint import _reorder

        extra = module.configure_callbacks()
        if not extra:
            return
        extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
        types = {type(cb) for cb in extra}
        kept = [cb for cb in self.callbacks if type(cb) not in types]
        self.callbacks = _reorder(kept + extra)

    @staticmethod
    def _set_torch_flags(deterministic: Any, benchmark: bool | None) -> None:
        if deterministic not in (None, True, False, "warn"):
            raise MisconfigurationException(f"deterministic={deterministic!r}: pass True, False, 'warn' or None.")
        if deterministic is not None:
            if deterministic:
                # cuBLAS needs this to be deterministic; harmless elsewhere
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
        if benchmark is None:
            benchmark = False if deterministic else torch.backends.cudnn.benchmark
        if benchmark and deterministic:
            rank_zero_warn("benchmark=True with deterministic=True may pick non-deterministic cuDNN kernels.")
        torch.backends.cudnn.benchmark = bool(benchmark)

    def _make_loggers(self, logger: Any) -> list[Any]:
        if logger is False:
            return []
        if logger is None or logger is True:
            # Lightning's default: TensorBoard when tensorboard (or tensorboardX) is installed, else CSV
            from fulmen.loggers import CSVLogger, TensorBoardLogger
            from fulmen.loggers.logger import _module_available

            if _module_available("tensorboard") or _module_available("tensorboardX"):
                return [TensorBoardLogger(save_dir=self.default_root_dir)]
            return [CSVLogger(save_dir=self.default_root_dir)]
        loggers = list(logger) if isinstance(logger, Iterable) else [logger]
        for lg in loggers:
            if not hasattr(lg, "log_metrics"):
                raise MisconfigurationException(
                    f"logger={lg!r} is not a logger; pass a fulmen.loggers.Logger (e.g. CSVLogger('logs')), a list of "
                    "them, True (the default logger) or False."
                )
        return loggers

    def _make_callbacks(self, callbacks: Any, enable_checkpointing: bool | None, enable_progress_bar: bool | None,
                        enable_model_summary: bool | None) -> list[Callback]:
        from fulmen import callbacks as cbs
        from fulmen.callbacks.model_checkpoint import _reorder

        out = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        for cb in out:
            if not isinstance(cb, Callback):
                raise MisconfigurationException(
                    f"callbacks must be fulmen.Callback instances; got {type(cb).__name__}. Subclass fulmen.Callback."
                )
        has = lambda kind: any(isinstance(cb, kind) for cb in out)  # noqa: E731
        if enable_checkpointing is False and has(cbs.ModelCheckpoint):
            raise MisconfigurationException(
                "enable_checkpointing=False, but a ModelCheckpoint is in `callbacks`. Remove one or the other."
            )
        bars = [type(cb).__name__ for cb in out if isinstance(cb, cbs.ProgressBar)]
        if len(bars) > 1:
            raise MisconfigurationException(
                f"`callbacks` holds {len(bars)} progress bars ({', '.join(bars)}); a Trainer draws one. Keep one of them."
            )
        if enable_progress_bar is False and has(cbs.ProgressBar):
            raise MisconfigurationException(
                "enable_progress_bar=False, but a progress bar is in `callbacks`. Remove one or the other."
            )
        if enable_checkpointing is not False and not has(cbs.ModelCheckpoint) and not self.fast_dev_run:
            out.append(cbs.ModelCheckpoint())
        if enable_progress_bar is not False and not has(cbs.ProgressBar):
            out.append(cbs.TQDMProgressBar())
        if enable_model_summary is not False and not has(cbs.ModelSummary) and not self.fast_dev_run:
            out.append(cbs.ModelSummary())
        return _reorder(out)

    # -- public properties --------------------------------------------------------------------------
    @property
    def default_root_dir(self) -> str:
        """Where logs and checkpoints go when no path is given: the current directory by default."""
        return self._default_root_dir if self._default_root_dir is not None else os.getcwd()

    @property
    def loggers(self) -> list[Any]:
        """Every logger of the run, in the order given (empty with ``logger=False``)."""
        return self._loggers

    @loggers.setter
    def loggers(self, loggers: list[Any] | None) -> None:
        self._loggers = list(loggers or [])

    @property
    def logger(self) -> Any:
        """The first logger, or ``None`` when logging is off."""
        return self._loggers[0] if self._loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self._loggers = [] if logger is None else [logger]

    @property
    def log_dir(self) -> str:
        """The first logger's directory, else ``default_root_dir``."""
        d = getattr(self.logger, "log_dir", None) or getattr(self.logger, "save_dir", None)
        return os.fspath(d) if d is not None else self.default_root_dir

    @property
    def model(self) -> Any:
        """What the loop calls: the module, or its distributed wrapper."""
        return self.strategy.model

    @property
    def current_epoch(self) -> int:
        """The epoch the loop is in, counted from 0; after ``fit`` it equals the number of epochs completed."""
        return self._loop.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far."""
        return self._loop.global_step

    @property
    def should_stop(self) -> bool:
        """Set to ``True`` (by a callback or the module) to end ``fit`` at the next step boundary."""
        return self._loop.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._loop.should_stop = bool(value)

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """The latest value of everything logged: what callbacks such as ModelCheckpoint monitor."""
        return self._metrics.callback_metrics()

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """What was last sent to the loggers, brought up to date with the running stage's values."""
        return self._metrics.logged_metrics()

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """What the progress bar shows (values logged with ``prog_bar=True``)."""
        return self._metrics.progress_bar_metrics()

    @property
    def precision(self) -> str:
        """The precision setting in use, as a string such as ``"32-true"`` or ``"bf16-mixed"``."""
        return self.strategy.precision.name

    @property
    def world_size(self) -> int:
        """How many processes take part in the run (1 without distribution)."""
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        """This process's index among all processes of the run, from 0."""
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        """This process's index among the processes on its machine, from 0."""
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        """The index of this process's machine, from 0."""
        return self.strategy.node_rank

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process of global rank 0, the one that writes logs and checkpoints."""
        return self.strategy.is_global_zero

    @property
    def num_devices(self) -> int:
        """How many devices this machine's share of the run uses."""
        return len(self._device_ids)

    @property
    def device_ids(self) -> list[int]:
        """The indices of the devices this machine uses."""
        return list(self._device_ids)

    @property
    def accelerator(self) -> Accelerator:
        """The hardware this run uses, as an object (``CPUAccelerator``, ``CUDAAccelerator``, ...).

        Example::

            fulmen.Trainer(accelerator="cpu").accelerator  # CPUAccelerator()
        """
        return self._accelerator

    @property
    def received_sigterm(self) -> bool:
        """Whether SIGTERM (or SLURM's requeue signal) arrived during the running fit."""
        return self._preemption is not None and self._preemption.requested

    @property
    def interrupted(self) -> bool:
        """Whether the last run ended by an exception or a ``KeyboardInterrupt`` rather than by its limits."""
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def training(self) -> bool:
        """Whether the training loop is running (not validation inside ``fit``)."""
        return self.state.stage == RunningStage.TRAINING

    @property
    def sanity_checking(self) -> bool:
        """Whether the sanity-check validation before the first epoch is running."""
        return self.state.stage == RunningStage.SANITY_CHECKING

    @property
    def validating(self) -> bool:
        """Whether a validation loop is running, inside ``fit`` or through ``validate``."""
        return self.state.stage == RunningStage.VALIDATING

    @property
    def testing(self) -> bool:
        """Whether ``test`` is running."""
        return self.state.stage == RunningStage.TESTING

    @property
    def predicting(self) -> bool:
        """Whether ``predict`` is running."""
        return self.state.stage == RunningStage.PREDICTING

    @property
    def evaluating(self) -> bool:
        """True during validation (the sanity check included) and testing."""
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """Every ``ModelCheckpoint`` among the callbacks."""
        from fulmen.callbacks import ModelCheckpoint

        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        """The first ``ModelCheckpoint`` among the callbacks, or ``None``."""
        return next(iter(self.checkpoint_callbacks), None)

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        """Every ``EarlyStopping`` among the callbacks."""
        from fulmen.callbacks import EarlyStopping

        return [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Any:
        """The first ``EarlyStopping`` among the callbacks, or ``None``."""
        return next(iter(self.early_stopping_callbacks), None)

    @property
    def progress_bar_callback(self) -> Any:
        """The progress bar callback, or ``None`` with ``enable_progress_bar=False``."""
        from fulmen.callbacks import ProgressBar

        return next((cb for cb in self.callbacks if isinstance(cb, ProgressBar)), None)

    @property
    def enable_validation(self) -> bool:
        """Whether ``fit`` runs validation: a validation loader and ``validation_step`` exist and ``limit_val_batches`` is not 0."""
        return self._enable_validation

    @property
    def estimated_stepping_batches(self) -> float:
        """How many optimizer steps fit will take, from the loader length, limits, epochs and accumulation."""
        if self.train_dataloader is None and self.lightning_module is not None:
            _data.setup_train_data(self)
        batches = self.num_training_batches
        if math.isinf(batches):
            return self.max_steps if self.max_steps != -1 else math.inf
        epochs = self.max_epochs if self.max_epochs not in (None, -1) else math.inf
        total = math.ceil(batches / self.accumulate_grad_batches) * epochs
        return total if self.max_steps == -1 else min(total, self.max_steps)

    # -- entry points ---------------------------------------------------------------------------
    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Iterator[None]:
        """Create the model inside this to build it directly on the Trainer's device, in its precision's
        dtype (``"bf16-true"``: bfloat16 weights from the start, never a float32 copy).

        ``empty_init=True`` skips the weight initialisation, for weights a checkpoint will overwrite:
        faster, and the values are garbage until loaded.

        Example::

            trainer = fulmen.Trainer(accelerator="cuda", precision="bf16-true")
            with trainer.init_module(empty_init=True):
                model = MyModel.load_from_checkpoint("big.ckpt")
        """
        with self.strategy.tensor_init_context(empty_init=empty_init):
            yield

    def fit(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
            ckpt_path: str | None = None, weights_only: bool | None = None) -> None:
        """Train ``model``, validating as the flags say; resume from ``ckpt_path`` when given.

        Data comes from the loaders passed here, from ``datamodule``, or from the module's
        ``train_dataloader``/``val_dataloader`` methods.

        Example::

            trainer.fit(model, train_loader, val_loader)
            trainer.fit(model, datamodule=dm, ckpt_path="last")
        """
        from fulmen.datamodule import LightningDataModule

        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException(
                "fit() got both dataloaders and a datamodule; pass one or the other."
            )
        self._given_train_loaders, self._given_val_loaders = train_dataloaders, val_dataloaders
        self._model_was_given, self._given_eval_loaders = True, None
        self._run(model, TrainerFn.FITTING, datamodule, ckpt_path, weights_only)

    def validate(self, model: Any = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the validation loop once; return one dict of epoch metrics per dataloader.

        Example::

            [metrics] = trainer.validate(model, val_loader)
        """
        return self._evaluate(model, dataloaders, ckpt_path, datamodule, TrainerFn.VALIDATING, weights_only, verbose)

    def test(self, model: Any = None, dataloaders: Any = None, ckpt_path: str | None = None, verbose: bool = True,
             datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the test loop once; return one dict of epoch metrics per dataloader.

        Example::

            [metrics] = trainer.test(model, test_loader, ckpt_path="best")
        """
        return self._evaluate(model, dataloaders, ckpt_path, datamodule, TrainerFn.TESTING, weights_only, verbose)

    def predict(self, model: Any = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None,
                weights_only: bool | None = None) -> Any:
        """Run ``predict_step`` over the data; return the predictions per batch (a list per loader when
        there are several).

        Example::

            preds = torch.cat(trainer.predict(model, loader))
        """
        keep = True if return_predictions is None else return_predictions
        return self._evaluate(model, dataloaders, ckpt_path, datamodule, TrainerFn.PREDICTING, weights_only,
                              return_predictions=keep)

    def _evaluate(self, model: Any, dataloaders: Any, ckpt_path: Any, datamodule: Any, fn: TrainerFn,
                  weights_only: bool | None, verbose: bool = True, return_predictions: bool = True) -> Any:
        """What validate, test and predict share: the data, the batch size search, the model and checkpoint."""
        from fulmen.datamodule import LightningDataModule

        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if datamodule is not None and dataloaders is not None:
            raise MisconfigurationException(f"{fn.value}() got both dataloaders and a datamodule; pass one or the other.")
        self._tune_batch_size(model, fn, dataloaders, datamodule)  # before the flags: its trials set their own
        self._given_eval_loaders = dataloaders
        self._verbose, self._return_predictions = verbose, return_predictions
        model = self._model_or_current(model, fn.value)
        return self._run(model, fn, datamodule, self._eval_ckpt(model, ckpt_path), weights_only)

    def _tune_batch_size(self, model: Any, fn: TrainerFn, dataloaders: Any, datamodule: Any) -> None:
        """A BatchSizeFinder callback searches before validate/test/predict run (Lightning: as the stage starts).
        Its trials are runs of the same stage; what they change on the Trainer is put back for the real one."""
        from fulmen.callbacks.batch_size_finder import BatchSizeFinder

        finder = next((cb for cb in self.callbacks if isinstance(cb, BatchSizeFinder)), None)
        target = model if model is not None else self.lightning_module
        if finder is None or target is None or self.fast_dev_run:
            return
        saved = (self.state, self.lightning_module, self.datamodule, self._model_was_given)
        try:
            finder.scale_batch_size_for(self, target, fn.value, dataloaders, datamodule)
        finally:
            self.state, self.lightning_module, self.datamodule, self._model_was_given = saved

    def _model_or_current(self, model: Any, what: str) -> Any:
        if model is None and self.lightning_module is None:
            raise ArgumentTypeError(
                f"trainer.{what}() needs a model: pass it, e.g. trainer.{what}(model, dataloaders), or call "
                "trainer.fit(model) first."
            )
        self._model_was_given = model is not None
        return self.lightning_module if model is None else model

    def _eval_ckpt(self, model: Any, ckpt_path: Any) -> Any:
        """Resolve ``"best"``/``"last"``; with no model given after fit, the best checkpoint is used."""
        if ckpt_path is None and not self._model_was_given and self.state.fn == TrainerFn.FITTING:
            return getattr(self.checkpoint_callback, "best_model_path", "") or None
        if ckpt_path == "last":
            path = getattr(self.checkpoint_callback, "last_model_path", "")
            if not path:
                # as Lightning: "last" may be written before any fit has saved one; the current weights are used
                rank_zero_warn(
                    'ckpt_path="last": no last checkpoint was saved yet, so no checkpoint is loaded and the model\'s '
                    "current weights are used. Add `ModelCheckpoint(save_last=True)` and run trainer.fit first, or "
                    "pass a file path."
                )
                return None
            return path
        if ckpt_path == "best":
            cb = self.checkpoint_callback
            if cb is None:
                raise MisconfigurationException(
                    'ckpt_path="best" needs a ModelCheckpoint callback, and this Trainer has none. Pass a path.'
                )
            if not cb.best_model_path:
                raise MisconfigurationException(
                    'ckpt_path="best": no such checkpoint was saved yet. Run trainer.fit first with a monitored '
                    "metric, or pass a file path."
                )
            return cb.best_model_path
        return ckpt_path

    # -- the run ------------------------------------------------------------------------------------
    def _run(self, model: Any, fn: TrainerFn, datamodule: Any, ckpt_path: Any, weights_only: bool | None) -> Any:
        from fulmen.module import LightningModule

        model = _from_compiled(model)
        if not isinstance(model, LightningModule):
            raise ArgumentTypeError(
                f"Trainer.{fn.value} needs a fulmen.LightningModule, got {type(model).__name__}. Subclass "
                "fulmen.LightningModule (it is an nn.Module)."
            )
        if fn == TrainerFn.FITTING:
            check_fit_configuration(model)
        self.state = TrainerState(TrainerStatus.RUNNING, fn, None)
        self.lightning_module = model
        model._trainer = self
        if datamodule is not None:
            self.datamodule = datamodule
            datamodule.trainer = self
        elif fn == TrainerFn.FITTING or self._model_was_given or self._given_eval_loaders is not None:
            self.datamodule = None  # keep the fit's datamodule only for e.g. a bare trainer.test()
        self.ckpt_path = os.fspath(ckpt_path) if ckpt_path is not None else None
        self._metrics.reset_all()
        self.train_dataloader = None
        self.val_dataloaders = self.test_dataloaders = self.predict_dataloaders = None
        self.strategy.connect(model)
        self.strategy.training = fn == TrainerFn.FITTING
        self.strategy.connect_training_settings(
            accumulate_grad_batches=self.accumulate_grad_batches, gradient_clip_val=self.gradient_clip_val,
            gradient_clip_algorithm=self.gradient_clip_algorithm, precision_given=self._precision_flag is not None,
            batch_size=getattr(getattr(self, "_given_train_loaders", None), "batch_size", None))
        try:
            result = self.strategy.launch(self._run_stage, fn, weights_only, handoff=_TrainerHandoff(self))
            if self.state.status == TrainerStatus.RUNNING:  # the run happened in spawned workers
                self.state.status = TrainerStatus.FINISHED
            return result
        except BaseException:
            self.state.status = TrainerStatus.INTERRUPTED
            raise
        finally:
            self.state.stage = None

    def _run_stage(self, fn: TrainerFn, weights_only: bool | None) -> Any:
        """The run itself, in each process of the strategy (a spawned worker runs it on its own copy)."""
        self.lightning_module._trainer = self  # a pickled module (spawned workers) comes without its trainer
        with ExitStack() as cleanup:  # unwound in reverse order, however the run ends
            cleanup.callback(lambda: setattr(self.state, "stage", None))
            cleanup.callback(lambda: _data.release_workers(self.train_dataloader, self.val_dataloaders,
                                                           self.test_dataloaders, self.predict_dataloaders))
            if self.detect_anomaly:
                cleanup.enter_context(torch.autograd.set_detect_anomaly(True))
            if self.profiler.active:
                from fulmen.profilers import attach

                cleanup.callback(attach(self, fn.value))
            if fn == TrainerFn.FITTING:
                from fulmen.trainer.signals import Preemption

                self._preemption = Preemption(self)
                cleanup.callback(setattr, self, "_preemption", None)
                cleanup.callback(self._preemption.restore)
                self._preemption.install()
            try:
                result = loops.run(self, fn, weights_only)
                self.state.status = TrainerStatus.FINISHED
                return result
            except _TunerExitException:  # a tuner finished its search inside fit: a clean stop
                self.state.status = TrainerStatus.FINISHED
                self.strategy.teardown()
                return None
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    self._interrupted_by_keyboard(exc)
                self.state.status = TrainerStatus.INTERRUPTED
                self._on_exception(exc)
                raise

    def _interrupted_by_keyboard(self, exc: KeyboardInterrupt) -> None:
        """Ctrl-C, as in Lightning: status INTERRUPTED, ``on_exception`` hooks, loggers finalized, then
        ``SystemExit(1)``. Further Ctrl-C presses are ignored while that runs (then the handler is restored)."""
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        rank_zero_info("Detected KeyboardInterrupt, attempting graceful shutdown ...")
        try:
            self.state.status = TrainerStatus.INTERRUPTED
            self._on_exception(exc)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        raise SystemExit(1) from exc

    def _async_writers(self) -> list[Any]:
        """The background checkpoint writers of this run: the strategy's, and ModelCheckpoint(save_async=True)'s."""
        from fulmen.checkpoint import AsyncCheckpointIO

        ios = [self.strategy.checkpoint_io] + [getattr(cb, "_async_io", None) for cb in self.callbacks]
        return [io for io in ios if isinstance(io, AsyncCheckpointIO)]

    def _flush_checkpoints(self, quiet: bool = False) -> None:
        """Wait until every background checkpoint write is on disk; raise a failed one's error unless ``quiet``."""
        for io in self._async_writers():
            try:
                io.teardown()  # waits, then stops the writer thread (a later save starts it again)
            except Exception:
                if not quiet:
                    raise

    def _on_exception(self, exc: BaseException) -> None:
        self._flush_checkpoints(quiet=True)  # writes already queued still land (and the original error wins)
        module = self.lightning_module
        for cb in self.callbacks:
            if is_overridden("on_exception", cb, Callback):
                cb.on_exception(self, module, exc)
        for owner in (module, self.datamodule):  # a datamodule of None has no hook
            if hasattr(owner, "on_exception"):
                owner.on_exception(exc)
        self.strategy.on_exception(exc)
        for lg in self.loggers:
            with suppress(Exception):  # never hide the original error behind a logger's
                lg.finalize("failed")
        self.strategy.teardown()

    # -- hooks ----------------------------------------------------------------------------------
    def _collect_hooks(self) -> None:
        """Once per run: which callbacks override which hook, so unused hooks cost nothing later."""
        self._hooks = {
            name: [getattr(cb, name) for cb in self.callbacks if is_overridden(name, cb, Callback)]
            for name in CALLBACK_HOOKS
        }
        self._monitoring_epoch_end = [
            cb.on_train_epoch_end for cb in self.callbacks
            if getattr(cb, "_runs_after_module_epoch_end", False) and is_overridden("on_train_epoch_end", cb, Callback)
        ]
        self._hooks["on_train_epoch_end"] = [
            h for h in self._hooks["on_train_epoch_end"] if h not in self._monitoring_epoch_end
        ]

    def _call_hooks(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Callbacks' ``name`` then the module's (when it has one); returns the module's result."""
        module = self.lightning_module
        with self._metrics.hook(name):  # hooks may run inside a logging hook: its name comes back after
            for hook in self._hooks.get(name, ()):
                hook(self, module, *args, **kwargs)
            fn = getattr(module, name, None)
            return fn(*args, **kwargs) if fn is not None else None

    def _call_module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.lightning_module, name, None)
        if fn is None:  # a hook the user switched off with `model.<hook> = None`
            return None
        with self._metrics.hook(name):
            return fn(*args, **kwargs)

    def _call_callbacks(self, name: str, *args: Any, **kwargs: Any) -> None:
        with self._metrics.hook(name):
            for hook in self._hooks.get(name, ()):
                hook(self, self.lightning_module, *args, **kwargs)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, filepath: Any, weights_only: bool = False, storage_options: Any = None) -> None:
        """Write a checkpoint of the current run to ``filepath`` (atomically: never a half-written file).

        Example::

            trainer.save_checkpoint("manual.ckpt")
        """
        if self.lightning_module is None:
            raise MisconfigurationException(
                "save_checkpoint needs a model: call it during or after trainer.fit/validate/test/predict."
            )
        checkpoint = checkpointing.dump_checkpoint(self, weights_only)
        self.strategy.save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        self.strategy.barrier("save_checkpoint")

    def _save_checkpoint_async(self, filepath: Any, weights_only: bool, io: Any) -> None:
        """``save_checkpoint`` through a given background writer (``ModelCheckpoint(save_async=True)``)."""
        checkpoint = checkpointing.dump_checkpoint(self, weights_only)
        if self.is_global_zero:
            io.save_checkpoint(checkpoint, filepath)
        self.strategy.barrier("save_checkpoint")

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the main process only."""
        if self.is_global_zero:
            print(*args, **kwargs)


def _from_compiled(model: Any) -> Any:
    """The LightningModule inside ``torch.compile(module)``, with its forward and steps compiled.

    The Trainer then runs the compiled code while checkpoints, hooks and ``trainer.lightning_module``
    see the plain module (state_dict keys without the ``_orig_mod.`` prefix), as in Lightning.
    """
    # a compiled model means torch._dynamo is imported; torch's lazy `torch._dynamo` would import it (~1-2 s)
    dynamo = sys.modules.get("torch._dynamo")
    optimized = getattr(getattr(dynamo, "eval_frame", None), "OptimizedModule", None)
    if optimized is None or not isinstance(model, optimized):
        return model
    from fulmen.module import LightningModule

    module, ctx = model._orig_mod, model.dynamo_ctx
    if not isinstance(module, LightningModule):
        raise MisconfigurationException(
            f"The compiled model wraps a {type(module).__name__}; the Trainer needs a compiled fulmen.LightningModule: "
            "`trainer.fit(torch.compile(lit_module))`."
        )
    if module._compiler_ctx is not None and module._compiler_ctx["dynamo_ctx"] is ctx:
        return module  # compiled for an earlier run already
    if module._compiler_ctx is not None:  # compiled again, differently: start from the plain methods
        for name in module._compiler_ctx["originals"]:
            module.__dict__.pop(name, None)
    steps = [s for s in ("training_step", "validation_step", "test_step", "predict_step")
             if is_overridden(s, module, LightningModule)]  # wrapping the others would make them look overridden
    originals = {name: getattr(module, name) for name in ["forward", *steps]}
    module._compiler_ctx = {"compiler": "dynamo", "dynamo_ctx": ctx, "originals": originals}
    for name, fn in originals.items():
        setattr(module, name, ctx(fn))
    return module

