"""``WeightAveraging`` and ``EMAWeightAveraging``: keep an average of the weights (torch's ``AveragedModel``),
validate with it, and end training with it."""

from __future__ import annotations

import itertools
from copy import deepcopy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from fulmen._utils import rank_zero_warn
from fulmen.callbacks.callback import Callback


def _copy_without_trainer(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares (does not copy) the Trainer it is attached to."""
    return deepcopy(module, memo={id(getattr(module, "_trainer", None)): None})


class WeightAveraging(Callback):
    """Average the model's weights over training with ``torch.optim.swa_utils.AveragedModel``.

    The average is updated after every optimizer step (override ``should_update`` to choose), swapped in
    for validation, written to checkpoints as ``state_dict`` (the live weights go to ``current_model_state``),
    and copied into the module when fit ends. ``kwargs`` go to ``AveragedModel`` (e.g. ``avg_fn``,
    ``multi_avg_fn``); ``device`` holds the average elsewhere (e.g. ``"cpu"``).

    Args:
        device: Where the averaged copy lives (None: with the model), e.g. ``"cpu"`` to save GPU memory.
        use_buffers: Average the buffers too (BatchNorm statistics) instead of copying them.

    Example::

        class AverageLate(WeightAveraging):
            def should_update(self, step_idx=None, epoch_idx=None):
                return step_idx is not None and step_idx >= 100

        fulmen.Trainer(callbacks=[AverageLate()])
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to fold the weights in now: after optimizer step ``step_idx`` or epoch ``epoch_idx`` (0-based)."""
        return step_idx is not None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.configure_model()
        trainer_ref, pl_module._trainer = pl_module._trainer, None  # AveragedModel deep-copies the module
        try:
            self._average_model = AveragedModel(pl_module, device=self._device or pl_module.device,
                                                use_buffers=self._use_buffers, **self._kwargs)
        finally:
            pl_module._trainer = trainer_ref

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for avg, cur in self._pairs(pl_module):
            cur.data.copy_(avg.data)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return  # outside fit: the module already holds the averaged weights
        state = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
        checkpoint["averaging_state"] = {k: v for k, v in state.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            state = {"module." + k: v for k, v in checkpoint["state_dict"].items()}
            self._average_model.load_state_dict({**state, **checkpoint["averaging_state"]})
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            rank_zero_warn("The checkpoint was not written with WeightAveraging; the average starts from its weights.")
            self._average_model.module.load_state_dict(deepcopy(checkpoint["state_dict"]), strict=False)

    def _pairs(self, pl_module: Any) -> Any:
        avg = self._average_model.module
        return zip(itertools.chain(avg.parameters(), avg.buffers()),
                   itertools.chain(pl_module.parameters(), pl_module.buffers()))

    def _swap(self, pl_module: Any) -> None:
        for avg, cur in self._pairs(pl_module):
            tmp = avg.data.clone()
            avg.data.copy_(cur.data)
            cur.data.copy_(tmp)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights: ``avg = decay * avg + (1 - decay) * weights``.

    Updated every ``update_every_n_steps`` optimizer steps from ``update_starting_at_step`` (or at epoch
    ends from ``update_starting_at_epoch``).

    Args:
        device: Where the averaged copy lives (None: with the model).
        use_buffers: Average the buffers too instead of copying them.
        decay: Weight of the old average at each update.
        update_every_n_steps: Update after every this many optimizer steps.
        update_starting_at_step: First optimizer step that updates the average.
        update_starting_at_epoch: First epoch whose end updates the average.

    Example::

        fulmen.Trainer(callbacks=[EMAWeightAveraging(decay=0.999, update_starting_at_step=1000)])
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True, decay: float = 0.999,
                 update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(device=device, use_buffers=use_buffers, **kwargs, avg_fn=get_ema_avg_fn(decay=decay))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        return epoch_idx is not None and self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
