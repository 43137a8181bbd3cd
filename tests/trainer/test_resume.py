"""A run stopped anywhere and resumed from its checkpoint ends with the same weights, bit for bit.

The loop keeps all progress in one LoopState and the random states at the epoch's start, so a
mid-epoch resume rebuilds the same shuffled order, skips what was seen, and continues.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fulmen as pl
from helpers import make_loader, quiet_trainer


class Dropout(pl.LightningModule):
    """Consumes randomness every step (dropout), so any RNG slip shows in the weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 16), nn.Dropout(0.5), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


class Interrupt(pl.Callback):
    """Save a checkpoint after `at` optimizer steps, then stop the run as a crash would."""

    def __init__(self, at, path):
        self.at, self.path = at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("killed")


def _fit(model, callbacks=(), ckpt_path=None, epochs=3):
    pl.seed_everything(3)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=list(callbacks))
    trainer.fit(model, make_loader(80, 8, shuffle=True), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("at", [4, 10, 17])  # mid-epoch, exactly at an epoch's end, mid second epoch
def test_resume_anywhere_is_bit_for_bit(tmp_path, at):
    torch.manual_seed(0)
    straight = Dropout()
    reference = {k: v.clone() for k, v in straight.state_dict().items()}
    _fit(straight)

    interrupted = Dropout()
    interrupted.load_state_dict(reference)
    ckpt = tmp_path / "crash.ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        _fit(interrupted, [Interrupt(at, ckpt)])

    resumed = Dropout()
    trainer = _fit(resumed, ckpt_path=ckpt)
    assert trainer.global_step == 30 and trainer.current_epoch == 3
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
