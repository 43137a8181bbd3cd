"""Trainer-level behaviour: pickling and copying with a trainer attached, flags Lightning accepts."""

import copy
import io
import pickle

import pytest
import torch

import fulmen as pl
from fulmen.errors import MisconfigurationException
from helpers import BoringModel, make_loader, quiet_trainer


class Holder(torch.nn.Module):
    """A plain module keeping a trainer reference."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer


class ManualModel(BoringModel):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_deepcopy_of_a_module_during_fit_is_detached_and_equal():
    copies = []

    class CopyInCallback(pl.Callback):  # what EMA/SWA-style callbacks do
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            copies.append(copy.deepcopy(pl_module))

    model = BoringModel()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[CopyInCallback()])
    trainer.fit(model, make_loader())
    assert len(copies) == 2
    last = copies[-1]
    assert last._trainer is None and model._trainer is trainer
    assert torch.equal(last.layer.weight, model.layer.weight)
    assert last.layer.weight.data_ptr() != model.layer.weight.data_ptr()
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        last.trainer


@pytest.mark.parametrize("model_cls", [BoringModel, ManualModel])
def test_trainer_and_module_pickle_and_torch_save_round_trip(tmp_path, model_cls):
    model = model_cls()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
                         accelerator="cpu")  # default logger, checkpointing and progress bar
    trainer.fit(model, make_loader(), make_loader())

    restored = pickle.loads(pickle.dumps(trainer))
    assert restored.global_step == 2 and restored.current_epoch == 1
    assert torch.equal(restored.lightning_module.layer.weight, model.layer.weight)
    assert restored.lightning_module._trainer is None  # as in Lightning: modules pickle without a trainer
    assert type(copy.deepcopy(trainer)) is pl.Trainer

    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded._trainer is None and torch.equal(loaded.layer.weight, model.layer.weight)

    assert pickle.loads(pickle.dumps(Holder(trainer))).trainer.global_step == 2
