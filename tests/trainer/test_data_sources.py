"""Data reaches the Trainer three ways, as one loader, a list or a dict; batches of any nesting arrive on the device."""

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from helpers import BoringModel, make_loader, quiet_trainer


class DataModule(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.stages = []

    def setup(self, stage):
        self.stages.append(stage)

    def train_dataloader(self):
        return make_loader(32)

    def val_dataloader(self):
        return make_loader(16)

    def test_dataloader(self):
        return make_loader(24)

    def predict_dataloader(self):
        return make_loader(8)


class ModelWithData(BoringModel):
    def train_dataloader(self):
        return make_loader(32)

    def val_dataloader(self):
        return make_loader(16)

    def test_dataloader(self):
        return make_loader(24)

    def predict_dataloader(self):
        return make_loader(8)


@pytest.mark.parametrize("source", ["passed", "datamodule", "module"])
def test_every_entry_point_with_every_source(source):
    model = ModelWithData() if source == "module" else BoringModel()
    dm = DataModule() if source == "datamodule" else None
    trainer = quiet_trainer(max_epochs=1)
    if source == "passed":
        trainer.fit(model, make_loader(32), make_loader(16))
        val = trainer.validate(model, make_loader(16), verbose=False)
        test = trainer.test(model, make_loader(24), verbose=False)
        preds = trainer.predict(model, make_loader(8))
    else:
        trainer.fit(model, datamodule=dm)
        val = trainer.validate(model, datamodule=dm, verbose=False)
        test = trainer.test(model, datamodule=dm, verbose=False)
        preds = trainer.predict(model, datamodule=dm)
    assert trainer.global_step == 4
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [2]
    assert set(val[0]) == {"val_loss"} and set(test[0]) == {"test_loss"}
    assert len(preds) == 1 and preds[0].shape == (8, 2)
    if dm is not None:
        assert dm.stages == ["fit", "validate", "test", "predict"]
        assert trainer.datamodule is dm


def test_datamodule_passed_positionally_to_fit():
    dm = DataModule()
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(BoringModel(), dm)
    assert trainer.datamodule is dm and trainer.global_step == 4


def test_several_eval_loaders_get_dataloader_idx_and_suffixes():
    seen = []

    class M(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append((dataloader_idx, batch_idx))
            self.log("val_loss", torch.tensor(float(dataloader_idx)))

    trainer = quiet_trainer(max_epochs=1, num_sanity_val_steps=0)
    out = trainer.validate(M(), [make_loader(16), make_loader(8)], verbose=False)
    assert seen == [(0, 0), (0, 1), (1, 0)]
    assert out == [{"val_loss/dataloader_idx_0": 0.0}, {"val_loss/dataloader_idx_1": 1.0}]


def test_dict_of_eval_loaders_and_predictions_per_loader():
    trainer = quiet_trainer()
    preds = trainer.predict(BoringModel(), {"a": make_loader(8), "b": make_loader(16)})
    assert [len(p) for p in preds] == [1, 2]


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_several_train_loaders_cycle_to_the_longest(kind):
    batches = []

    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            parts = list(batch.values()) if isinstance(batch, dict) else batch
            batches.append(tuple(p[0].shape[0] for p in parts))
            return super().training_step(parts[0], batch_idx)

    loaders = [make_loader(32, 8), make_loader(16, 8)]
    if kind == "dict":
        loaders = dict(zip("ab", loaders))
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(M(), loaders)
    assert batches == [(8, 8)] * 4  # the shorter loader restarts (max_size_cycle)
    assert trainer.num_training_batches == 4


Pair = namedtuple("Pair", "x y")


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


class Movable:
    """A user type that is not a tensor but knows how to move itself."""

    def __init__(self, t):
        self.t = t

    def to(self, device):
        return Movable(self.t.to(device))


class _Batches:
    """An iterable of ready-made batches (a plain list would mean several loaders)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.mark.parametrize("wrap", [
    lambda x, y: (x, y),
    lambda x, y: [x, y],
    lambda x, y: {"x": x, "nested": {"y": [y]}},
    lambda x, y: Pair(x, y),
    lambda x, y: Batch(x, y),
    lambda x, y: (Movable(x), y),
])
def test_nested_batches_reach_the_step_on_the_module_device(wrap, monkeypatch):
    """Batches are moved with the strategy; a recording device move proves every leaf went through it."""
    moved = []
    original = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return original(self, *args, **kwargs)

    got = []

    class M(BoringModel):
        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            monkeypatch.setattr(torch.Tensor, "to", recording_to)
            try:
                return super().transfer_batch_to_device(batch, device, dataloader_idx)
            finally:
                monkeypatch.setattr(torch.Tensor, "to", original)

        def training_step(self, batch, batch_idx):
            got.append(batch)
            return self.layer.weight.sum()

    x, y = torch.randn(2, 32), torch.tensor([0, 1])
    quiet_trainer(max_steps=1).fit(M(), _Batches([wrap(x, y)]))
    assert type(got[0]) is type(wrap(x, y))
    assert moved and all(torch.device(d) == torch.device("cpu") for d in moved)


def test_iterable_without_length():
    def gen():
        for _ in range(5):
            yield torch.randn(4, 32), torch.zeros(4, dtype=torch.long)

    class Once:
        def __iter__(self):
            return gen()

    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(BoringModel(), Once())
    assert trainer.global_step == 10
