"""Checkpoint contents, exact resume, load_from_checkpoint, Lightning checkpoints, and refusing malicious pickles."""

import argparse
import os
import pathlib

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import EarlyStopping, ModelCheckpoint
from fulmen.checkpoint import load_checkpoint
from fulmen.errors import MisconfigurationException, UntrustedCheckpointError

DATA = os.path.join(os.path.dirname(__file__), "data")


class Net(pl.LightningModule):
    def __init__(self, lr=0.1, hidden=3, name="tiny"):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


class Data(pl.LightningDataModule):
    def __init__(self, batch_size=4, root=pathlib.Path("/data")):
        super().__init__()
        self.save_hyperparameters()
        self.served = 0

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        ds = TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        g = torch.Generator().manual_seed(2)
        return DataLoader(TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)), batch_size=4)

    def state_dict(self):
        return {"served": self.served + 1}

    def load_state_dict(self, state):
        self.served = state["served"]


def _trainer(tmp_path, epochs, **kw):
    return pl.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def test_resume_equals_straight_run(tmp_path):
    pl.seed_everything(7)
    straight = Net()
    _trainer(tmp_path / "a", 4).fit(straight, datamodule=Data())

    pl.seed_everything(7)
    first = Net()
    t = _trainer(tmp_path / "b", 2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)])
    t.fit(first, datamodule=Data())
    last = t.checkpoint_callback.last_model_path
    resumed = Net()
    t2 = _trainer(tmp_path / "b", 4, callbacks=[ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)])
    t2.fit(resumed, datamodule=Data(), ckpt_path=last)
    assert t2.current_epoch == 4 and t2.global_step == 16
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert t2.lr_scheduler_configs[0].scheduler.get_last_lr() == [0.1 * 0.5 ** 4]


def test_checkpoint_holds_everything(tmp_path):
    class Stateful(pl.Callback):
        def state_dict(self):
            return {"seen": 3}

    pl.seed_everything(0)
    trainer = _trainer(tmp_path, 1, callbacks=[Stateful(), EarlyStopping("val_loss")])
    trainer.fit(Net(hidden=5), datamodule=Data(batch_size=8))
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    ckpt = load_checkpoint(tmp_path / "full.ckpt")
    assert ckpt["fulmen_version"] == pl.__version__ and ckpt["epoch"] == 1 and ckpt["global_step"] == 2
    assert ckpt["hyper_parameters"] == {"lr": 0.1, "hidden": 5, "name": "tiny"} and ckpt["hparams_name"] == "kwargs"
    assert ckpt["datamodule_hyper_parameters"] == {"batch_size": 8, "root": pathlib.Path("/data")}
    assert ckpt["Data"] == {"served": 1}
    assert ckpt["callbacks"][Stateful().state_key] == {"seen": 3}  # keyed by the class's qualified name
    assert "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}" in ckpt["callbacks"]
    assert len(ckpt["optimizer_states"]) == 1 and ckpt["lr_schedulers"][0]["last_epoch"] == 1
    assert ckpt["loops"]["fulmen"]["global_step"] == 2 and "rng_states" in ckpt
    assert torch.equal(ckpt["state_dict"]["net.1.running_mean"], trainer.lightning_module.net[1].running_mean)
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    weights = load_checkpoint(tmp_path / "weights.ckpt")
    assert "optimizer_states" not in weights and "callbacks" not in weights and "state_dict" in weights


def test_load_from_checkpoint_rebuilds_module_and_datamodule(tmp_path):
    pl.seed_everything(0)
    trainer = _trainer(tmp_path, 1)
    model = Net(lr=0.05, hidden=6)
    trainer.fit(model, datamodule=Data(batch_size=8))
    path = trainer.checkpoint_callback.best_model_path
    loaded = Net.load_from_checkpoint(path)
    assert loaded.hparams == {"lr": 0.05, "hidden": 6, "name": "tiny"} and loaded.net[0].out_features == 6
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert Net.load_from_checkpoint(path, name="other").hparams.name == "other"
    dm = Data.load_from_checkpoint(path)
    assert dm.hparams.batch_size == 8 and dm.served == 1
    with pytest.raises(RuntimeError, match="size mismatch"):
        Net.load_from_checkpoint(path, hidden=2)


def test_save_hyperparameters_variants_round_trip(tmp_path):
    class Named(Net):
        def __init__(self, lr=0.1, hidden=3, backbone=None):
            super().__init__(lr=lr, hidden=hidden)
            self.save_hyperparameters("lr", "hidden")

    class Ignored(Net):
        def __init__(self, lr=0.1, hidden=3, backbone=None):
            super().__init__(lr=lr, hidden=hidden)
            self.save_hyperparameters(ignore=["backbone"])

    class FromDict(Net):
        def __init__(self, config):
            super().__init__(lr=config["lr"], hidden=config["hidden"])
            self.save_hyperparameters(config)

    for cls, args in ((Named, dict(lr=0.2, hidden=4, backbone=torch.nn.Linear(1, 1))),
                      (Ignored, dict(lr=0.2, hidden=4, backbone=torch.nn.Linear(1, 1))),
                      (FromDict, dict(config={"lr": 0.2, "hidden": 4}))):
        trainer = _trainer(tmp_path / cls.__name__, 1, limit_train_batches=1, limit_val_batches=1)
        trainer.fit(cls(**args), datamodule=Data())
        loaded = cls.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
        assert (loaded.hparams.lr, loaded.net[0].out_features) == (0.2, 4), cls.__name__
    assert load_checkpoint(trainer.checkpoint_callback.best_model_path)["hparams_name"] == "config"


def test_module_checkpoint_hooks(tmp_path):
    class Hooked(Net):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["extra"] = torch.tensor([1.0, 2.0])

        def on_load_checkpoint(self, checkpoint):
            self.extra = checkpoint["extra"]

    trainer = _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(Hooked(), datamodule=Data())
    loaded = Hooked.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert torch.equal(loaded.extra, torch.tensor([1.0, 2.0]))


def test_lightning_checkpoints_load(tmp_path):
    model = Net.load_from_checkpoint(os.path.join(DATA, "lightning_plain.ckpt"))
    assert model.hparams == {"lr": 0.1, "hidden": 3, "name": "tiny"}
    ckpt = load_checkpoint(os.path.join(DATA, "lightning_plain.ckpt"))
    assert torch.equal(model.net[1].running_var, ckpt["state_dict"]["net.1.running_var"])
    # resume it: Lightning's loop position, optimizer, scheduler and callback states carry over
    es = EarlyStopping("val_loss", patience=3)
    trainer = _trainer(tmp_path, 3, callbacks=[es])
    trainer.fit(Net(), datamodule=Data(), ckpt_path=os.path.join(DATA, "lightning_plain.ckpt"))
    assert trainer.current_epoch == 3 and trainer.global_step == 8 + 4
    assert es.best_score <= ckpt["callbacks"]["EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"]["best_score"]

    class Rich(Net):
        def __init__(self, lr=0.1, data_dir=None, opt=None, dtype=None):
            super().__init__(lr=lr)
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

    rich = Rich.load_from_checkpoint(os.path.join(DATA, "lightning_rich_hparams.ckpt"))
    assert rich.hparams.data_dir == pathlib.Path("/data/tiny") and rich.hparams.opt == argparse.Namespace(beta=0.9)
    assert rich.hparams.dtype is torch.float32


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def _malicious(tmp_path):
    trainer = _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(Net(), datamodule=Data())
    ckpt = load_checkpoint(trainer.checkpoint_callback.best_model_path)
    _Payload.marker = str(tmp_path / "pwned")
    ckpt["hyper_parameters"]["name"] = _Payload()
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)  # what an attacker would hand out: a plain torch.save file
    return path


def test_malicious_checkpoint_is_refused_everywhere(tmp_path):
    path = _malicious(tmp_path)
    with pytest.raises(UntrustedCheckpointError, match=r"posix.system.*weights_only=False"):
        Net.load_from_checkpoint(path)
    with pytest.raises(UntrustedCheckpointError, match="trusted=True"):
        _trainer(tmp_path, 2).fit(Net(), datamodule=Data(), ckpt_path=path)
    with pytest.raises(UntrustedCheckpointError):
        _trainer(tmp_path, 1).validate(Net(), datamodule=Data(), ckpt_path=path)
    with pytest.raises(UntrustedCheckpointError):
        Data.load_from_checkpoint(path)
    with open(path, "rb") as f:
        with pytest.raises(UntrustedCheckpointError):
            Net.load_from_checkpoint(f)
    assert not (tmp_path / "pwned").exists()  # the payload never ran
    Net.load_from_checkpoint(path, weights_only=False)  # the caller vouches for the file: it loads (and runs)
    assert (tmp_path / "pwned").exists()


def test_memory_filesystem_paths():
    trainer = pl.Trainer(max_epochs=1, default_root_dir="memory://saving_root", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(Net(), datamodule=Data())
    best = trainer.checkpoint_callback.best_model_path
    assert best == "memory://saving_root/checkpoints/epoch=0-step=2.ckpt"
    assert Net.load_from_checkpoint(best).hparams.hidden == 3
    trainer.save_checkpoint("memory://saving_root/manual.ckpt")
    resumed = pl.Trainer(max_epochs=2, default_root_dir="memory://saving_root", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=2, limit_val_batches=1)
    resumed.fit(Net(), datamodule=Data(), ckpt_path="memory://saving_root/manual.ckpt")
    assert resumed.global_step == 4


def test_hparams_file_and_missing_arguments(tmp_path):
    trainer = _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(Net(hidden=4), datamodule=Data())
    path = trainer.checkpoint_callback.best_model_path
    (tmp_path / "hp.yaml").write_text("lr: 0.5\nhidden: 4\nname: from_yaml\n")
    assert Net.load_from_checkpoint(path, hparams_file=tmp_path / "hp.yaml").hparams.name == "from_yaml"
    with pytest.raises(MisconfigurationException, match=".yaml"):
        Net.load_from_checkpoint(path, hparams_file=tmp_path / "hp.txt")

    class Needs(Net):
        def __init__(self, required):
            super().__init__()

    with pytest.raises(MisconfigurationException, match="required"):
        Needs.load_from_checkpoint(path)


def test_load_from_checkpoint_strict_raises_on_mismatched_keys(tmp_path):
    from helpers import BoringModel, make_loader, quiet_trainer

    class Bigger(BoringModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    trainer = quiet_trainer(max_steps=1)
    trainer.fit(BoringModel(), make_loader())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(RuntimeError, match="Missing key"):
        Bigger.load_from_checkpoint(tmp_path / "m.ckpt")  # strict by default, as in Lightning
    with pytest.raises(RuntimeError, match="Missing key"):
        Bigger.load_from_checkpoint(tmp_path / "m.ckpt", strict=True)
    with pytest.warns(UserWarning, match="extra.weight"):
        Bigger.load_from_checkpoint(tmp_path / "m.ckpt", strict=False)
