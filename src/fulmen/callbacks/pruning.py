"""``ModelPruning``: prune weights during training with ``torch.nn.utils.prune``."""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Callable, Sequence

import torch
import torch.nn.utils.prune as prune
from torch import nn

from fulmen._utils import rank_zero_info
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException

_METHODS = {
    "l1_unstructured": prune.L1Unstructured,
    "random_unstructured": prune.RandomUnstructured,
    "ln_structured": prune.LnStructured,
    "random_structured": prune.RandomStructured,
}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_pruned(module: nn.Module, name: str) -> bool:
    return hasattr(module, name + "_mask")


class ModelPruning(Callback):
    """Prune ``amount`` of the chosen parameters at the end of training epochs (or validation epochs).

    ``pruning_fn`` is one of ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"`` (needs
    ``pruning_norm`` and ``pruning_dim``), ``"random_structured"`` (needs ``pruning_dim``), or a
    ``torch.nn.utils.prune.BasePruningMethod`` subclass. ``parameters_to_prune`` are ``(module, name)`` pairs
    (default: every layer's ``parameter_names``, i.e. weights and biases). ``amount`` and ``apply_pruning``
    may be functions of the epoch. With the lottery ticket hypothesis the weights that survive are reset to
    their values from before training (``resample_parameters``: to fresh random values). With
    ``make_pruning_permanent`` the masks are folded into the weights when fit ends, and checkpoints hold plain
    (pruned) weights that load into the unpruned model.

    Args:
        pruning_fn: A name such as ``"l1_unstructured"`` or a ``BasePruningMethod`` subclass.
        parameters_to_prune: ``(module, parameter name)`` pairs. Empty: every layer's ``parameter_names``.
        parameter_names: Which parameters of each layer to prune when ``parameters_to_prune`` is empty (default
            weight and bias).
        use_global_unstructured: Rank all chosen parameters together instead of layer by layer (unstructured
            methods).
        amount: Fraction (float) or count (int) to prune, or a function of the epoch that returns one.
        apply_pruning: Whether to prune, or a function of the epoch that says so.
        make_pruning_permanent: Fold the masks into the weights when fit ends.
        use_lottery_ticket_hypothesis: Reset the surviving weights to their initial values (or a function of the
            epoch).
        resample_parameters: With the lottery ticket hypothesis, draw fresh random values instead.
        pruning_dim: Dimension along which structured methods prune.
        pruning_norm: Norm that ``ln_structured`` ranks by.
        verbose: 0: quiet; 1: log the overall sparsity; 2: also each layer's.
        prune_on_train_epoch_end: Prune at the end of the training epoch; False: at the end of validation.

    Example::

        fulmen.Trainer(callbacks=[ModelPruning("l1_unstructured", amount=lambda epoch: 0.2 if epoch < 5 else 0)])
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: Callable | str,
        parameters_to_prune: Sequence[tuple[nn.Module, str]] = (),
        parameter_names: list[str] | None = None,
        use_global_unstructured: bool = True,
        amount: int | float | Callable[[int], int | float] = 0.5,
        apply_pruning: bool | Callable[[int], bool] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
        resample_parameters: bool = False,
        pruning_dim: int | None = None,
        pruning_norm: int | None = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        self._parameter_names = list(parameter_names or self.PARAMETER_NAMES)
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise MisconfigurationException(
                    f"ModelPruning(parameter_names=[{name!r}]): only {list(self.PARAMETER_NAMES)} can be pruned."
                )
        if isinstance(pruning_fn, str):
            if pruning_fn not in _METHODS:
                raise MisconfigurationException(
                    f"ModelPruning(pruning_fn={pruning_fn!r}) is not known; use one of {sorted(_METHODS)} or a "
                    "torch.nn.utils.prune.BasePruningMethod subclass."
                )
            method = _METHODS[pruning_fn]
            if pruning_fn == "ln_structured" and (pruning_norm is None or pruning_dim is None):
                raise MisconfigurationException("ModelPruning('ln_structured') needs pruning_norm and pruning_dim.")
            if pruning_fn == "random_structured" and pruning_dim is None:
                raise MisconfigurationException("ModelPruning('random_structured') needs pruning_dim.")
        elif isinstance(pruning_fn, type) and issubclass(pruning_fn, prune.BasePruningMethod):
            method = pruning_fn
        else:
            raise MisconfigurationException(
                f"ModelPruning(pruning_fn={pruning_fn!r}): pass a method name such as 'l1_unstructured' or a "
                "torch.nn.utils.prune.BasePruningMethod subclass."
            )
        if use_global_unstructured and method.PRUNING_TYPE != "unstructured":
            raise MisconfigurationException(
                f"ModelPruning: use_global_unstructured=True needs an unstructured method; {method.__name__} is "
                f"{method.PRUNING_TYPE}. Pass use_global_unstructured=False."
            )
        if not callable(amount) and not (isinstance(amount, int) and amount >= 0 or isinstance(amount, float) and 0 <= amount <= 1):
            raise MisconfigurationException(
                f"ModelPruning(amount={amount!r}): pass a fraction in [0, 1], a count >= 0, or a function of the epoch."
            )
        self._method = method
        self._method_kwargs = {k: v for k, v in (("n", pruning_norm), ("dim", pruning_dim)) if v is not None}
        self._parameters_to_prune = list(parameters_to_prune)
        self._use_global_unstructured = use_global_unstructured
        self.amount = amount
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._verbose = verbose
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._originals: dict[int, nn.Module] = {}

    # -- set-up -------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not self._parameters_to_prune:
            layers = [m for m in pl_module.modules() if m is not pl_module and not isinstance(m, _CONTAINERS)]
            self._parameters_to_prune = [(m, n) for n in self._parameter_names for m in layers
                                         if isinstance(getattr(m, n, None), torch.Tensor)]
        for module, name in self._parameters_to_prune:
            if not isinstance(getattr(module, name, None), torch.Tensor):
                raise MisconfigurationException(
                    f"ModelPruning: {type(module).__name__} has no parameter {name!r} to prune."
                )
        if self._use_lottery_ticket_hypothesis:
            self._originals = {id(m): deepcopy(m) for m, _ in self._parameters_to_prune}

    # -- when -----------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(trainer.current_epoch)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._prune_on_train_epoch_end and not trainer.sanity_checking:
            self._run_pruning(trainer.current_epoch)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._make_pruning_permanent:  # plain weights, loadable into the unpruned model
            checkpoint["state_dict"] = self._permanent_state_dict(pl_module, checkpoint["state_dict"])

    def _run_pruning(self, epoch: int) -> None:
        apply = self._apply_pruning(epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(epoch) if callable(self.amount) else self.amount
        if not apply or not amount:
            return
        self.apply_pruning(amount)
        lottery = self._use_lottery_ticket_hypothesis
        if lottery(epoch) if callable(lottery) else lottery:
            self.apply_lottery_ticket_hypothesis()

    # -- what -----------------------------------------------------------------------------------------
    def apply_pruning(self, amount: int | float) -> None:
        """Prune ``amount`` (a fraction, or a count) of the parameters, globally or layer by layer."""
        before = self._sparsity() if self._verbose else None
        if self._use_global_unstructured:
            prune.global_unstructured(self._parameters_to_prune, pruning_method=self._method, amount=amount,
                                      **self._method_kwargs)
        else:
            for module, name in self._parameters_to_prune:
                self._method.apply(module, name, amount=amount, **self._method_kwargs)
        if self._verbose:
            rank_zero_info(f"Applied {self._method.__name__} (amount={amount}): sparsity {before:.2%} -> "
                           f"{self._sparsity():.2%}")

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the surviving weights to their values before training (or to fresh ones with resampling)."""
        for module, name in self._parameters_to_prune:
            original = self._originals[id(module)]
            if self._resample_parameters and hasattr(original, "reset_parameters"):
                original = deepcopy(original)
                original.reset_parameters()
            target = getattr(module, name + "_orig") if _is_pruned(module, name) else getattr(module, name)
            with torch.no_grad():
                target.copy_(getattr(original, name).to(target.device))

    def make_pruning_permanent(self, module: nn.Module | None = None) -> None:
        """Fold the masks into the weights and remove the pruning re-parametrisation."""
        for mod, name in self._parameters_to_prune:
            if (module is None or any(mod is m for m in module.modules())) and _is_pruned(mod, name):
                prune.remove(mod, name)

    def _permanent_state_dict(self, pl_module: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
        prefixes = {id(m): p for p, m in pl_module.named_modules()}
        out = dict(state_dict)
        for module, name in self._parameters_to_prune:
            if not _is_pruned(module, name):
                continue
            key = f"{prefixes[id(module)]}.{name}" if prefixes[id(module)] else name
            out[key] = (out.pop(key + "_orig") * out.pop(key + "_mask")).detach().clone()
        return out

    def _sparsity(self) -> float:
        total = zeros = 0
        for module, name in self._parameters_to_prune:
            t = getattr(module, name)
            total += t.numel()
            zeros += int((t == 0).sum())
        return zeros / max(total, 1)
