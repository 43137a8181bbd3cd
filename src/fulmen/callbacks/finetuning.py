"""``BaseFinetuning`` and ``BackboneFinetuning``: freeze parts of a model, then unfreeze them during training."""

from __future__ import annotations

from typing import Any, Callable, Generator, Iterable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from fulmen._utils import rank_zero_info, rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default: the backbone's learning rate grows 1.5x per epoch."""
    return 1.5


class BaseFinetuning(Callback):
    """Subclass it: freeze modules in ``freeze_before_training`` and unfreeze them in ``finetune_function``
    (called at the start of every epoch for every optimizer), e.g. with ``unfreeze_and_add_param_group``.

    The optimizers' parameter groups are recorded in checkpoints, so resuming rebuilds them.

    Example::

        class UnfreezeAt(BaseFinetuning):
            def freeze_before_training(self, pl_module):
                self.freeze(pl_module.feature_extractor)

            def finetune_function(self, pl_module, epoch, optimizer):
                if epoch == 5:
                    self.unfreeze_and_add_param_group(pl_module.feature_extractor, optimizer)
    """

    def __init__(self) -> None:
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False

    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restarting = True
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", {})

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # rebuild the parameter groups the run had, before the Trainer loads the optimizer states into them
        state = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("internal_optimizer_metadata")
        if not state or not trainer.optimizers:
            return
        named = dict(pl_module.named_parameters())
        for idx, optimizer in enumerate(trainer.optimizers):
            if idx in state:
                optimizer.param_groups = [{**g, "params": [named[n] for n in g["params"]]} for g in state[idx]]

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # before configure_optimizers, so what is frozen is not trained from the first step, as in Lightning
        self.freeze_before_training(pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._restarting:  # what the optimizers train again requires grad again
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.requires_grad = True
            self._restarting = False

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        names = {p: n for n, p in pl_module.named_parameters()}
        for idx, optimizer in enumerate(trainer.optimizers):
            before = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
                      for g in optimizer.param_groups]
            if idx not in self._internal_optimizer_metadata:
                self._internal_optimizer_metadata[idx] = groups
            elif len(optimizer.param_groups) != before:
                self._internal_optimizer_metadata[idx].extend(groups[before:])

    # -- to override --------------------------------------------------------------------------------
    def freeze_before_training(self, pl_module: Any) -> None:
        """Freeze what should not train at first."""
        raise NotImplementedError(f"{type(self).__name__} must implement freeze_before_training(self, pl_module).")

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze (and add to ``optimizer``) what should train from ``epoch`` on."""
        raise NotImplementedError(f"{type(self).__name__} must implement finetune_function(self, pl_module, epoch, optimizer).")

    # -- tools ----------------------------------------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
        """The modules that hold parameters themselves (leaves), from a module or a list of them."""
        if isinstance(modules, nn.ModuleDict):
            modules = modules.values()
        if isinstance(modules, nn.Module):
            found = list(modules.modules())
        else:
            found = [m for mod in modules for m in BaseFinetuning.flatten_modules(mod)]
        return [m for m in found if not m._modules or m._parameters]

    @staticmethod
    def filter_params(modules: nn.Module | Iterable[nn.Module], train_bn: bool = True,
                      requires_grad: bool = True) -> Generator[nn.Parameter, None, None]:
        """Parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad`` (BatchNorm's skipped unless
        ``train_bn``)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and not train_bn:
                continue
            for p in mod.parameters(recurse=False):
                if p.requires_grad == requires_grad:
                    yield p

    @staticmethod
    def make_trainable(modules: nn.Module | Iterable[nn.Module]) -> None:
        """Let ``modules`` train again (BatchNorm layers track running statistics again)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm):
                mod.track_running_stats = True
            for p in mod.parameters(recurse=False):
                p.requires_grad = True

    @staticmethod
    def freeze_module(module: nn.Module) -> None:
        """Stop ``module``'s own parameters from training (a BatchNorm also stops updating its statistics)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for p in module.parameters(recurse=False):
            p.requires_grad = False

    @staticmethod
    def freeze(modules: nn.Module | Iterable[nn.Module], train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers keep training."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """``params`` that ``optimizer`` does not hold yet."""
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        params = list(params)
        fresh = [p for p in params if id(p) not in held]
        if len(fresh) != len(params):
            rank_zero_warn(
                "Some parameters to unfreeze are already in the optimizer and are skipped. To add them later, build "
                "the optimizer from trainable ones only: `torch.optim.Adam(filter(lambda p: p.requires_grad, "
                "self.parameters()))`."
            )
        return fresh

    @staticmethod
    def unfreeze_and_add_param_group(modules: nn.Module | Iterable[nn.Module], optimizer: Optimizer,
                                     lr: float | None = None, initial_denom_lr: float = 10.0,
                                     train_bn: bool = True) -> None:
        """Unfreeze ``modules`` and train them in a new parameter group of ``optimizer``, at ``lr`` (default:
        the first group's rate divided by ``initial_denom_lr``)."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_on_optimizer(optimizer, BaseFinetuning.filter_params(modules, train_bn, True))
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})


class BackboneFinetuning(BaseFinetuning):
    """Freeze ``pl_module.backbone`` until ``unfreeze_backbone_at_epoch``, then train it in its own parameter
    group, starting at ``backbone_initial_lr`` (default: the current rate x ``backbone_initial_ratio_lr``) and
    growing by ``lambda_func(epoch + 1)`` each epoch, never above the main rate when ``should_align``.

    Args:
        unfreeze_backbone_at_epoch: Epoch at which the backbone starts training.
        lambda_func: Factor applied to the backbone's rate at each later epoch, as a function of the epoch.
        backbone_initial_ratio_lr: The backbone's first rate, as a fraction of the main rate (when
            ``backbone_initial_lr`` is None).
        backbone_initial_lr: The backbone's first rate, given directly.
        should_align: Never let the backbone's rate exceed the main rate.
        initial_denom_lr: Divisor of the main rate for a new parameter group when no rate is given.
        train_bn: Train BatchNorm layers of the backbone while it is frozen.
        verbose: Log both rates at every epoch once the backbone trains.
        rounding: Decimal places of the rates in those log lines.

    Example::

        fulmen.Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)])
    """

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable[[int], float] = multiplicative,
                 backbone_initial_ratio_lr: float = 10e-2, backbone_initial_lr: float | None = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.previous_backbone_lr = state_dict.get("previous_backbone_lr")

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            raise MisconfigurationException(
                f"BackboneFinetuning needs `self.backbone` (an nn.Module) on {type(pl_module).__name__}: the part to "
                "freeze first. Name it so, or subclass BaseFinetuning to freeze other parts."
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        main_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            lr = self.backbone_initial_lr if self.backbone_initial_lr is not None else main_lr * self.backbone_initial_ratio_lr
            self.previous_backbone_lr = lr
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr, train_bn=self.train_bn,
                                              initial_denom_lr=self.initial_denom_lr)
        elif epoch > self.unfreeze_backbone_at_epoch:
            lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            lr = main_lr if self.should_align and lr > main_lr else lr
            optimizer.param_groups[-1]["lr"] = lr
            self.previous_backbone_lr = lr
        else:
            return
        if self.verbose:
            rank_zero_info(f"Current lr: {round(main_lr, self.rounding)}, "
                           f"Backbone lr: {round(self.previous_backbone_lr, self.rounding)}")
