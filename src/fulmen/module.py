"""``LightningModule``: the model and every step of its training in one ``nn.Module``."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import itertools
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen._utils import AttributeDict, move_data_to_device, rank_zero_only, rank_zero_warn
from fulmen.errors import MisconfigurationException, missing_extra


# Set by LightningCLI while it builds a module: the resolved config of its arguments (and the function that can
# rebuild it), which save_hyperparameters records instead of reading the __init__ frames, as Lightning does
_given_hparams: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("_given_hparams", default=None)


@contextlib.contextmanager
def _given_hyperparameters(hparams: dict[str, Any], instantiator: str) -> Iterator[None]:
    token = _given_hparams.set({**hparams, "_instantiator": instantiator})
    try:
        yield
    finally:
        _given_hparams.reset(token)


class HyperparametersMixin:
    """``save_hyperparameters()`` and ``hparams``, shared by LightningModule and LightningDataModule."""

    def __init__(self) -> None:
        super().__init__()
        self._log_hyperparams = False  # save_hyperparameters(logger=True) turns it on: nothing saved, nothing logged

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None,
                             frame: Any = None, logger: bool = True) -> None:
        """Record the ``__init__`` arguments in ``self.hparams``; checkpoints keep them and
        ``load_from_checkpoint`` rebuilds the object from them.

        With no arguments every ``__init__`` argument is saved; name some to save only those, or pass
        one dict/Namespace to save it as is. ``ignore`` drops names (e.g. a backbone module).

        Example::

            class LitModel(fulmen.LightningModule):
                def __init__(self, hidden=64, lr=1e-3, backbone=None):
                    super().__init__()
                    self.save_hyperparameters(ignore=["backbone"])
                    self.hparams.lr  # 1e-3
        """
        self._log_hyperparams = logger
        if len(args) == 1 and isinstance(args[0], (dict, Namespace)):
            init_args = _collect_init_args(self, frame or inspect.currentframe().f_back)
            # the __init__ argument holding the dict: load_from_checkpoint passes it back whole under that name
            self._hparams_name = next((k for k, v in init_args.items() if v is args[0]), None)
            self._set_hparams(vars(args[0]) if isinstance(args[0], Namespace) else args[0])
            return
        given = _given_hparams.get() if frame is None else None
        init_args = dict(given) if given is not None else _collect_init_args(self, frame or inspect.currentframe().f_back)
        self._hparams_name = "kwargs"
        if args:
            missing = [a for a in args if not isinstance(a, str) or a not in init_args]
            if missing:
                raise MisconfigurationException(
                    f"save_hyperparameters({', '.join(map(repr, missing))}): not an argument of "
                    f"{type(self).__name__}.__init__ (its arguments are {sorted(init_args)}). Pass argument names "
                    "as strings, or one dict of values."
                )
            init_args = {a: init_args[a] for a in args}
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or ())
        self._set_hparams({k: v for k, v in init_args.items() if k not in ignore})
        for k, v in self._hparams.items():
            if isinstance(v, nn.Module):
                rank_zero_warn(
                    f"Hyperparameter {k!r} is an nn.Module: its weights are in the checkpoint already, so fulmen "
                    "leaves it out of the saved hyperparameters and the loggers (pass it again to "
                    f"load_from_checkpoint). Write `self.save_hyperparameters(ignore=[{k!r}])` to say so.",
                    stacklevel=3,
                )

    def _set_hparams(self, values: Mapping[str, Any]) -> None:
        self._hparams = AttributeDict(values)
        try:
            self._hparams_initial = copy.deepcopy(self._hparams)
        except Exception:  # e.g. an unpicklable object: keep a shallow record
            self._hparams_initial = AttributeDict(self._hparams)

    def _hparams_to_save(self, initial: bool = False) -> dict[str, Any]:
        """The hyperparameters a checkpoint or a logger gets: modules (their weights are in the state_dict)
        and values that cannot be pickled (a lambda, a local class, an open file) are left out, each with
        one warning naming it and the ``ignore=[...]`` that silences it, so saving never fails on them."""
        import pickle

        warned = self.__dict__.setdefault("_hparams_unsaved", set())
        out = {}
        for k, v in (self.hparams_initial if initial else self.hparams).items():
            if isinstance(v, nn.Module):
                continue
            try:
                pickle.dumps(v)
            except Exception:
                if k not in warned:
                    warned.add(k)
                    rank_zero_warn(
                        f"Hyperparameter {k!r} cannot be pickled, so checkpoints and loggers go without it; "
                        f"`self.save_hyperparameters(ignore=[{k!r}])` leaves it out on purpose and silences this."
                    )
                continue
            out[k] = v
        return out

    @property
    def hparams(self) -> AttributeDict:
        """The saved hyperparameters; an empty AttributeDict until ``save_hyperparameters()``."""
        if not hasattr(self, "_hparams"):
            self._hparams = AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        """The hyperparameters as first saved, unaffected by later edits of ``hparams``."""
        if not hasattr(self, "_hparams_initial"):
            return AttributeDict()
        try:
            return copy.deepcopy(self._hparams_initial)
        except Exception:  # e.g. an open file among them: a shallow copy, as _set_hparams kept
            return AttributeDict(self._hparams_initial)


def _collect_init_args(obj: Any, frame: Any) -> dict[str, Any]:
    """Arguments of every ``__init__`` on the stack that is initialising ``obj``; outermost call wins."""
    out: dict[str, Any] = {}
    while frame is not None:
        local = frame.f_locals
        if frame.f_code.co_name == "__init__" and local.get("self") is obj:
            code = frame.f_code
            n = code.co_argcount + code.co_kwonlyargcount
            values = {k: local[k] for k in code.co_varnames[:n] if k != "self" and k in local}
            if code.co_flags & inspect.CO_VARKEYWORDS:
                values.update(local.get(code.co_varnames[n + bool(code.co_flags & inspect.CO_VARARGS)], {}))
            values.pop("__class__", None)
            out.update(values)  # walking outwards: the subclass's (outermost) __init__ overrides its parents
        frame = frame.f_back
    return out


class DataHooks:
    """The hooks a LightningModule and a LightningDataModule share: preparing data, the four
    loaders, moving batches to the device, and checkpoint additions."""

    def prepare_data(self) -> None:
        """Download or write data once per machine; do not set state here."""

    def setup(self, stage: str) -> None:
        """Build what the run needs; ``stage`` is 'fit', 'validate', 'test' or 'predict'."""

    def teardown(self, stage: str) -> None:
        """Release what ``setup`` built."""

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch before it moves to the device; return it."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a batch to ``device``; override for custom batch types without ``.to()``."""
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch after it reached the device (e.g. GPU augmentation); return it."""
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to or edit a checkpoint about to be written."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what ``on_save_checkpoint`` added, before the state is restored."""

    def train_dataloader(self) -> Any:
        """The training loader(s), when not passed to ``fit``."""
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        """The validation loader(s), when not passed to ``fit``/``validate``."""
        raise NotImplementedError

    def test_dataloader(self) -> Any:
        """The test loader(s), when not passed to ``test``."""
        raise NotImplementedError

    def predict_dataloader(self) -> Any:
        """The predict loader(s), when not passed to ``predict``."""
        raise NotImplementedError


class LightningModule(HyperparametersMixin, DataHooks, nn.Module):
    """A model together with how to train, validate, test and predict with it.

    Override ``training_step`` and ``configure_optimizers`` at least; ``fulmen.Trainer`` does the rest.

    Example::

        class LitModel(fulmen.LightningModule):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(64, 10)

            def forward(self, x):
                return torch.relu(self.l1(x.view(x.size(0), -1)))

            def training_step(self, batch, batch_idx):
                x, y = batch
                loss = F.cross_entropy(self(x), y)
                self.log("train_loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=0.02)

        fulmen.Trainer(max_epochs=3).fit(LitModel(), train_loader)
    """

    #: the checkpoint keys under which the module's hyperparameters, their ``__init__`` argument name and their
    #: container type are stored (Lightning's names and values, so ``checkpoint[Model.CHECKPOINT_HYPER_PARAMS_KEY]``
    #: reads the same in both)
    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    _jit_is_scripting = False  # True while to_torchscript compiles: properties then answer without a Trainer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._trainer: Any = None
        self.automatic_optimization: bool = True
        self.example_input_array: Any = None
        self._compiler_ctx: Any = None
        self._strict_loading: bool | None = None

    @property
    def strict_loading(self) -> bool:
        """Whether a checkpoint's weights must match this module's keys exactly (default True).

        Set it to False in ``__init__`` for a module whose checkpoints leave weights out on purpose (a frozen
        backbone loaded from elsewhere); ``trainer.fit(ckpt_path=...)`` and ``load_from_checkpoint`` then load
        what is there.

        Example::

            class Head(fulmen.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.strict_loading = False  # the backbone's weights are not in our checkpoints
        """
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, strict: bool) -> None:
        self._strict_loading = strict

    # -- attachments ----------------------------------------------------------------------------
    @property
    def trainer(self) -> Any:
        """The Trainer running this module; an error when there is none."""
        if self._trainer is None and not self._jit_is_scripting:
            raise RuntimeError(
                f"{type(self).__qualname__} is not attached to a Trainer. Use it inside trainer.fit/validate/"
                "test/predict, or check `module._trainer is not None` first."
            )
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = trainer

    def __getstate__(self) -> dict[str, Any]:
        # a pickled or deep-copied module travels without its Trainer (which holds the module again,
        # its loaders and its loggers), as in Lightning: the copy is detached, ready for another run
        state = super().__getstate__()
        state["_trainer"] = None
        return state

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters (CPU when it has none)."""
        return next((t.device for t in itertools.chain(self.parameters(), self.buffers())), torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the module's parameters."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.get_default_dtype())

    @property
    def current_epoch(self) -> int:
        """The epoch running now, from 0; 0 without a Trainer."""
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        """How many optimizer steps were taken; 0 without a Trainer."""
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        """The index of this process among all processes of the run (0 without a trainer)."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """The index of this process on its machine (0 without a trainer)."""
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        """The first logger of the Trainer, or None."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """Every logger of the Trainer."""
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def on_gpu(self) -> bool:
        """Whether the module's parameters are on a CUDA device."""
        return self.device.type == "cuda"

    # -- logging --------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: str | Callable = "mean",
            enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
            add_dataloader_idx: bool = True, batch_size: int | None = None, metric_attribute: str | None = None,
            rank_zero_only: bool = False) -> None:
        """Record a scalar under ``name``; the Trainer reduces it per step and per epoch.

        In ``training_step`` the default is one value per step; in validation and test steps, the mean
        over the epoch weighted by batch size. Values stay on the device until a logger reads them.

        Args:
            name: Key the value is recorded under (with ``_step``/``_epoch`` added when both are on).
            value: A number, a scalar tensor or a torchmetrics ``Metric``.
            prog_bar: Show it in the progress bar.
            logger: Send it to the loggers. None: yes, unless the Trainer logs nothing.
            on_step: Record each step's value. None: True in training steps, False elsewhere.
            on_epoch: Record the epoch's reduced value. None: False in training steps, True elsewhere.
            reduce_fx: How the epoch value is made from the step values: "mean", "sum", "max", "min" or a function.
            enable_graph: Keep the value's autograd graph (it is detached otherwise).
            sync_dist: Reduce the value across processes before recording it (a collective call per log).
            sync_dist_group: The process group for ``sync_dist``. None: all processes.
            add_dataloader_idx: With several evaluation loaders, add ``/dataloader_idx_N`` to the name.
            batch_size: Weight of this value in the epoch mean. None: read from the batch.
            metric_attribute: Attribute name of a ``Metric`` value, so its state can be saved and restored.
            rank_zero_only: Set when calling on global rank 0 only (no reduction across processes).

        Example::

            def training_step(self, batch, batch_idx):
                loss = ...
                self.log("train_loss", loss, prog_bar=True)
                return loss
        """
        trainer = self._trainer
        if trainer is None:
            # outside a run (e.g. calling training_step by hand) logging is a no-op, as in Lightning, which says so
            rank_zero_warn(f"self.log({name!r}) is ignored: {type(self).__name__} is not attached to a Trainer. Values "
                           "are recorded only inside trainer.fit/validate/test/predict.")
            return
        if not isinstance(name, str):
            raise MisconfigurationException(f"`self.log` needs a string name, got {type(name).__name__}.")
        if trainer.barebones:
            rank_zero_warn("`self.log` does nothing with `Trainer(barebones=True)`, which turns logging off for speed.")
            return
        results = trainer._metrics.current
        if results is None or results.fx is None:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` was called outside a hook where logging is possible (in predict or "
                "set-up hooks, say). Log from the training/validation/test steps or their batch/epoch hooks."
            )
        if rank_zero_only:  # called on rank zero only: nothing to reduce across ranks
            sync_dist = False
        results.log(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist,
                    sync_dist_group, add_dataloader_idx, batch_size, trainer.strategy.root_device)

    def log_dict(self, dictionary: Mapping[str, Any], prog_bar: bool = False, logger: bool | None = None,
                 on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: str | Callable = "mean",
                 enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
                 add_dataloader_idx: bool = True, batch_size: int | None = None,
                 rank_zero_only: bool = False) -> None:
        """``self.log`` for every item of ``dictionary`` (a dict or a torchmetrics MetricCollection).

        Args:
            dictionary: Names and values to record.
            prog_bar: As for ``log``.
            logger: As for ``log``.
            on_step: As for ``log``.
            on_epoch: As for ``log``.
            reduce_fx: As for ``log``.
            enable_graph: As for ``log``.
            sync_dist: As for ``log``.
            sync_dist_group: As for ``log``.
            add_dataloader_idx: As for ``log``.
            batch_size: As for ``log``.
            rank_zero_only: As for ``log``.

        Example::

            self.log_dict({"val_loss": loss, "val_acc": acc})
        """
        for name, value in dictionary.items():
            self.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                     sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx,
                     batch_size=batch_size, rank_zero_only=rank_zero_only)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Every process's ``data`` (a tensor or a collection of them), stacked on a new first dimension;
        in one process, ``data`` itself. ``sync_grads=True`` lets gradients flow back through the gather.

        Example::

            def validation_step(self, batch, batch_idx):
                preds = self.all_gather(self(batch[0]))  # (world_size, batch, ...)
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return data
        return trainer.strategy.all_gather(data, group=group, sync_grads=sync_grads)

    @rank_zero_only
    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the main process only, so several processes do not repeat each line."""
        print(*args, **kwargs)

    # -- steps ------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """What ``self(x)`` computes; used by the steps and for inference."""
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and return the loss of one batch: a tensor, a dict with ``"loss"``, or None to skip it."""
        raise MisconfigurationException(
            f"{type(self).__name__} does not define `training_step(self, batch, batch_idx)`, which Trainer.fit needs. "
            "Add it, returning the loss tensor."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one validation batch; log metrics with ``self.log``."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one test batch; log metrics with ``self.log``."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Return the prediction for one batch; by default ``self(batch)``."""
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return the optimizer(s), optionally with learning-rate schedulers."""
        raise MisconfigurationException(
            f"{type(self).__name__} does not define `configure_optimizers(self)`, which Trainer.fit needs. Add it, "
            "e.g. `return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )

    def configure_callbacks(self) -> Sequence[Any] | Any:
        """Callbacks that belong to this model; they replace Trainer callbacks of the same type."""
        return []

    def configure_model(self) -> None:
        """Create layers here to build them directly on the device (called in every run, so guard re-entry)."""

    @property
    def device_mesh(self) -> Any:
        """The ``DeviceMesh`` of a sharded strategy (FSDP), set before ``configure_model``; None otherwise."""
        return self.__dict__.get("_device_mesh")

    # -- optimization ---------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s) from ``configure_optimizers``: one object, or a list when there are several.

        With manual optimization, call ``.step()`` and ``.zero_grad()`` on them yourself.

        Example::

            opt = self.optimizers()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
        """
        trainer = self.trainer
        opts = trainer._lightning_optimizers if use_pl_optimizer else trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler(s) from ``configure_optimizers``: None, one, or a list."""
        scheds = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward pass for manual optimization; use it instead of ``loss.backward()`` so precision
        and distribution work.

        Example::

            self.manual_backward(loss)
        """
        trainer = self.trainer
        if self.automatic_optimization:
            raise MisconfigurationException(
                "`manual_backward` is for manual optimization. Set `self.automatic_optimization = False` in "
                "`__init__`, or return the loss from `training_step` and let the Trainer call backward."
            )
        trainer._call_hooks("on_before_backward", loss)
        trainer.strategy.backward(loss, None, *args, module=self, **kwargs)
        trainer._call_hooks("on_after_backward")

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Run the backward pass; override to customise it."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Make only ``optimizer``'s parameters require gradients (for alternating optimizers, e.g. GANs)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        own = {id(p) for g in optimizer.param_groups for p in g["params"]}
        state: dict[int, bool] = {}
        for p in self._optimized_parameters():
            state.setdefault(id(p), p.requires_grad)
            if id(p) not in own:
                p.requires_grad = False
        for p in (p for g in optimizer.param_groups for p in g["params"]):
            p.requires_grad = state.get(id(p), p.requires_grad)
        self._param_requires_grad_state = state

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """``toggle_optimizer`` for the block, ``untoggle_optimizer`` after it, also when the block raises.

        Example::

            def training_step(self, batch, batch_idx):
                opt_g, opt_d = self.optimizers()
                with self.toggled_optimizer(opt_g):
                    loss = self.generator_loss(batch)
                    self.manual_backward(loss)
                    opt_g.step()
                    opt_g.zero_grad()
        """
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        """Undo ``toggle_optimizer``."""
        state = getattr(self, "_param_requires_grad_state", {})
        for p in self._optimized_parameters():
            if id(p) in state:
                p.requires_grad = state[id(p)]
        self._param_requires_grad_state = {}

    def _optimized_parameters(self) -> Iterator[nn.Parameter]:
        return (p for opt in self.trainer.optimizers for group in opt.param_groups for p in group["params"])

    def clip_gradients(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or value.

        Example::

            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
        """
        trainer = self.trainer
        flag_val, flag_algorithm = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
        if gradient_clip_val is None:
            gradient_clip_val = flag_val
        elif flag_val is not None and flag_val != gradient_clip_val:
            raise MisconfigurationException(  # Lightning's words, then the fix
                f"You have set `Trainer(gradient_clip_val={flag_val!r})` and have passed "
                f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them."
            )
        if gradient_clip_algorithm is None:
            gradient_clip_algorithm = flag_algorithm
        elif flag_algorithm is not None and flag_algorithm != gradient_clip_algorithm.lower():
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_algorithm={flag_algorithm!r})` and have passed "
                f"`clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r})`. Please use only one of them."
            )
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        algorithm = (gradient_clip_algorithm or "norm").lower()
        if algorithm not in ("norm", "value"):
            raise MisconfigurationException(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r} is not known; use 'norm' or 'value'."
            )
        optimizer = getattr(optimizer, "optimizer", optimizer)
        strategy = self.trainer.strategy
        strategy.precision.unscale_gradients(optimizer)  # clip true-size gradients under 16-mixed scaling
        strategy.clip_gradients(optimizer, float(gradient_clip_val), algorithm)

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Called before each optimizer step with the Trainer's clipping flags; override to clip differently."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable | None = None) -> None:
        """Step ``optimizer``; ``optimizer_closure`` runs training_step, zero_grad and backward and must be called.

        Example (learning-rate warm-up)::

            def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
                optimizer.step(closure=optimizer_closure)
                if self.trainer.global_step < 500:
                    for g in optimizer.param_groups:
                        g["lr"] = 1e-3 * (self.trainer.global_step + 1) / 500
        """
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        """Clear the gradients; override e.g. to keep them."""
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step a learning-rate scheduler; ``metric`` is the monitored value for ReduceLROnPlateau."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -- hooks (the data hooks come from DataHooks) ------------------------------------------------
    def on_fit_start(self) -> None: """When fit begins."""
    def on_fit_end(self) -> None: """When fit ends."""
    def on_train_start(self) -> None: """When the training loop begins, after the sanity check."""
    def on_train_end(self) -> None: """When the training loop ends."""
    def on_train_epoch_start(self) -> None: """At the start of each training epoch."""
    def on_train_epoch_end(self) -> None: """At the end of each training epoch."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Before ``training_step``; return -1 to end the epoch here."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimizer step of a batch."""

    def on_validation_start(self) -> None: """When validation begins."""
    def on_validation_end(self) -> None: """When validation ends."""
    def on_validation_epoch_start(self) -> None: """At the start of a validation epoch."""
    def on_validation_epoch_end(self) -> None: """At the end of a validation epoch: log epoch-level metrics here."""

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Before ``validation_step``."""

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """After ``validation_step``."""

    def on_test_start(self) -> None: """When testing begins."""
    def on_test_end(self) -> None: """When testing ends."""
    def on_test_epoch_start(self) -> None: """At the start of the test epoch."""
    def on_test_epoch_end(self) -> None: """At the end of the test epoch."""

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Before ``test_step``."""

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """After ``test_step``."""

    def on_predict_start(self) -> None: """When prediction begins."""
    def on_predict_end(self) -> None: """When prediction ends."""
    def on_predict_epoch_start(self) -> None: """At the start of the predict epoch."""
    def on_predict_epoch_end(self) -> None: """At the end of the predict epoch."""

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Before ``predict_step``."""

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """After ``predict_step``."""

    def on_validation_model_zero_grad(self) -> None:
        """Before validation inside fit: drops gradients so they do not hold memory during evaluation."""
        self.zero_grad(set_to_none=True)

    def on_validation_model_eval(self) -> None:
        """Put the model in eval mode for validation."""
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        """After validation; only called when overridden (the loop otherwise restores each layer's mode)."""
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        """Put the model in eval mode for testing."""
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        """After testing; only called when overridden (the loop otherwise restores each layer's mode)."""
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        """Put the model in eval mode for prediction."""
        self.trainer.model.eval()

    def on_before_backward(self, loss: Tensor) -> None: """Before ``loss.backward()``."""
    def on_after_backward(self) -> None: """After ``loss.backward()``: inspect gradients here."""

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Before ``optimizer.step()``, with gradients unscaled."""

    def on_before_zero_grad(self, optimizer: Optimizer) -> None: """Before ``optimizer.zero_grad()``."""

    # -- utilities ------------------------------------------------------------------------------
    def freeze(self) -> None:
        """No gradients for any parameter, and eval mode."""
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        """Undo ``freeze``."""
        for p in self.parameters():
            p.requires_grad = True
        self.train()

    # -- export -----------------------------------------------------------------------------------
    def _example_on_device(self, example: Any) -> Any:
        """An example input through the batch-transfer hooks to the module's device, as a batch would go."""
        example = self.on_before_batch_transfer(example, 0)
        example = self.transfer_batch_to_device(example, self.device, 0)
        return self.on_after_batch_transfer(example, 0)

    @torch.no_grad()
    def to_torchscript(self, file_path: Any = None, method: str = "script", example_inputs: Any = None,
                       **kwargs: Any) -> Any:
        """The module compiled to TorchScript (in eval mode), saved to ``file_path`` when given.

        ``method="script"`` compiles ``forward`` with ``torch.jit.script``; ``"trace"`` records one call
        of ``example_inputs`` (default ``self.example_input_array``) with ``torch.jit.trace``. Extra keyword
        arguments go to that function. The module's train/eval mode is restored afterwards.

        Example::

            scripted = model.to_torchscript("model.pt")
            traced = model.to_torchscript(method="trace", example_inputs=torch.randn(1, 64))
            torch.jit.load("model.pt")(torch.randn(1, 64))
        """
        if method not in ("script", "trace"):
            raise MisconfigurationException(
                f"The 'method' parameter only supports 'script' or 'trace', but value given was: {method}"
            )
        if method == "trace" and example_inputs is None:
            if self.example_input_array is None:
                raise MisconfigurationException(
                    "to_torchscript(method='trace') runs the model on an example input, and none was given: pass "
                    "`example_inputs=` or set `self.example_input_array` in `__init__`."
                )
            example_inputs = self.example_input_array
        mode = self.training
        self._jit_is_scripting = True  # torch.jit reads every property; without a Trainer `trainer` must not raise
        try:
            if method == "script":
                compiled = torch.jit.script(self.eval(), **kwargs)
            else:
                compiled = torch.jit.trace(func=self.eval(), example_inputs=self._example_on_device(example_inputs),
                                           **kwargs)
        finally:
            del self._jit_is_scripting  # back to the class default
            self.train(mode)
        if file_path is not None:
            from fulmen.checkpoint import get_filesystem

            with get_filesystem(file_path).open(str(file_path), "wb") as f:
                torch.jit.save(compiled, f)
        return compiled

    @torch.no_grad()
    def to_onnx(self, file_path: Any = None, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export the module to ONNX at ``file_path`` with ``torch.onnx.export``; return what that returns.

        ``input_sample`` (default ``self.example_input_array``) goes through the batch-transfer hooks
        to the module's device first. Keyword arguments go to ``torch.onnx.export``; torch's default
        exporter (``dynamo=True``) needs ``onnx`` and ``onnxscript``: ``pip install 'fulmen[onnx]'``.

        Example::

            model.to_onnx("model.onnx", torch.randn(1, 64))
            model.to_onnx("model.onnx", torch.randn(1, 64), dynamo=False, export_params=True)
        """
        from fulmen._utils import package_available  # looked up per call, so tests can stand in for it

        feature = f"`{type(self).__name__}.to_onnx()`"
        if not package_available("onnx"):
            raise missing_extra("onnx", "onnx", feature)
        if kwargs.get("dynamo", True) and not package_available("onnxscript"):
            raise missing_extra("onnxscript", "onnx", feature + " (torch's default exporter, dynamo=True)")
        if input_sample is None:
            if self.example_input_array is None:
                raise MisconfigurationException(
                    "Could not export to ONNX since neither `input_sample` nor `model.example_input_array` attribute "
                    "is set. Pass `input_sample=` or set `self.example_input_array` in `__init__`."
                )
            input_sample = self.example_input_array
        input_sample = self._example_on_device(input_sample)
        if isinstance(file_path, os.PathLike):
            file_path = os.fspath(file_path)
        mode = self.training
        try:
            return torch.onnx.export(self, input_sample, file_path, **kwargs)
        finally:
            self.train(mode)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Rebuild the module from a checkpoint: its saved hyperparameters (updated by ``kwargs``),
        then its weights.

        Example::

            model = LitModel.load_from_checkpoint("epoch=9-step=500.ckpt", map_location="cpu")
        """
        from fulmen.saving import load_from_checkpoint

        return load_from_checkpoint(cls, "module", checkpoint_path, map_location=map_location,
                                    hparams_file=hparams_file, strict=strict, weights_only=weights_only, **kwargs)


# properties TorchScript must not compile (see to_torchscript): they reach the Trainer or Python-only state
LightningModule.__jit_unused_properties__ = sorted(
    {name for cls in (LightningModule, HyperparametersMixin) for name, value in vars(cls).items()
     if isinstance(value, property)}
)
