"""fulmen.demos.boring_classes: the boring model and data run every stage as Lightning's do."""

import torch
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.demos import BoringDataModule, BoringModel, DemoModel
from fulmen.demos.boring_classes import (
    ManualOptimBoringModel,
    RandomDataset,
    RandomDictDataset,
    RandomIterableDataset,
    RandomIterableDatasetWithLen,
)


def _trainer(**kw):
    kw.setdefault("max_epochs", 1)
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def test_datasets_have_lightnings_shapes():
    assert RandomDataset(32, 64)[3].shape == (32,) and len(RandomDataset(32, 64)) == 64
    item = RandomDictDataset(4, 5)[0]
    assert torch.equal(item["b"], item["a"] + 2)
    assert [x.shape for x in RandomIterableDataset(3, 4)] == [torch.Size([3])] * 4
    assert not hasattr(RandomIterableDataset(3, 4), "__len__") and len(RandomIterableDatasetWithLen(3, 4)) == 4


def test_boring_model_fits_validates_tests_and_predicts_from_its_own_loaders():
    model = BoringModel()
    before = model.layer.weight.detach().clone()
    trainer = _trainer(limit_train_batches=8, limit_val_batches=2)
    trainer.fit(model)
    assert trainer.global_step == 8 and not torch.equal(before, model.layer.weight)
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == [0.1 * 0.1]  # StepLR stepped once
    assert trainer.test(model, verbose=False) == [{}]
    preds = trainer.predict(model)
    assert len(preds) == 64 and preds[0].shape == (1, 2)


def test_boring_model_learns_to_output_ones():
    model = BoringModel()
    x = torch.randn(64, 32)
    start = model.step(x).item()
    _trainer(max_epochs=2).fit(model, DataLoader(RandomDataset(32, 64), batch_size=4))
    assert model.step(x).item() < start / 2


def test_boring_datamodule_splits_four_ways_and_manual_model_trains():
    dm = BoringDataModule()
    trainer = _trainer(limit_val_batches=3)
    model = ManualOptimBoringModel()
    trainer.fit(model, datamodule=dm)
    assert len(dm.random_train) == 64 and len(dm.random_val) == 64
    assert trainer.global_step == 64 and trainer.num_val_batches == [3]
    trainer.test(model, datamodule=dm, verbose=False)
    assert set(dm.random_test.indices) == set(range(128, 192))


def test_demo_model_trains_with_adam():
    model = DemoModel(out_dim=4, learning_rate=0.05)
    loader = DataLoader(RandomDataset(32, 16), batch_size=4)
    first = model(next(iter(loader))).sum().item()
    _trainer(max_epochs=3).fit(model, loader)
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)
    assert model(next(iter(loader))).sum().item() < first


def test_iterable_boring_datamodule_pairs_a_map_style_and_an_iterable_loader():
    from fulmen.demos.boring_classes import IterableBoringDataModule, Net

    seen = []

    class Pairs(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            seen.append([b.shape for b in batch])
            return sum(self.layer(b).sum() for b in batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    _trainer(num_sanity_val_steps=0, limit_val_batches=0).fit(Pairs(), datamodule=IterableBoringDataModule())
    assert len(seen) == 16 and seen[0] == [torch.Size([1, 4]), torch.Size([1, 4])]
    out = Net().eval()(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
