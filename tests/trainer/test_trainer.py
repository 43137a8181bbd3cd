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


class ValRuns(BoringModel):
    """Records (epoch, global_step) at every validation run outside the sanity check, and can stall a batch."""

    def __init__(self, stall_at=None):
        super().__init__()
        self.runs = []
        self.stall_at = stall_at

    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == self.stall_at:
            import time

            time.sleep(0.3)
        return super().training_step(batch, batch_idx)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.runs.append((self.current_epoch, self.global_step))


@pytest.mark.parametrize("interval", ["00:01:00:00", {"hours": 1}, __import__("datetime").timedelta(hours=1)])
def test_time_based_val_check_interval_that_never_elapses_never_validates(interval):
    model = ValRuns()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, val_check_interval=interval)
    trainer.fit(model, make_loader(), make_loader())
    assert model.runs == []  # only the clock decides, the epoch's end included (as in Lightning)
    assert trainer.global_step == 6


@pytest.mark.parametrize("check_every, expected", [(1, [(0, 2)]), (2, [(1, 4)]), (None, [(0, 2)])])
def test_time_based_val_check_interval_validates_after_the_batch_where_time_is_up(check_every, expected):
    # batch 1 of epoch 0 stalls past the 0.2 s interval; validation then resets the clock. With
    # check_val_every_n_epoch=2 it waits for epoch 1 and runs after that epoch's first batch.
    model = ValRuns(stall_at=(0, 1))
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1,
                            val_check_interval={"seconds": 0.2}, check_val_every_n_epoch=check_every)
    trainer.fit(model, make_loader(), make_loader())
    assert model.runs == expected


@pytest.mark.parametrize("value, match", [("1:2:3", "DD:HH:MM:SS"), ("a:b:c:d", "DD:HH:MM:SS"),
                                          ({"hourz": 1}, "timedelta's arguments")])
def test_bad_time_based_val_check_interval(value, match):
    with pytest.raises(MisconfigurationException, match=match):
        pl.Trainer(val_check_interval=value)


def test_fraction_limits_round_down_and_integral_floats_count_batches():
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=0.5, limit_val_batches=10.0, num_sanity_val_steps=0)
    assert trainer.limit_val_batches == 10 and isinstance(trainer.limit_val_batches, int)
    trainer.fit(BoringModel(), make_loader(24, 8), make_loader(64, 8))  # 3 batches * 0.5 -> 1
    assert trainer.num_training_batches == 1 and trainer.global_step == 1
    assert trainer.num_val_batches == [8]
    with pytest.raises(MisconfigurationException, match=r"=0.25` of a .* with 3 batches is less than one batch.*limit_train_batches=0.333"):
        quiet_trainer(max_epochs=1, limit_train_batches=0.25).fit(BoringModel(), make_loader(24, 8))

    class Combined(BoringModel):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch["a"], batch_idx)

    # several training loaders: the fraction applies to each, as in Lightning (8 * 0.25 = 2, but 3 * 0.25 < 1)
    loaders = {"a": make_loader(64, 8), "b": make_loader(24, 8)}
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=0.5)
    trainer.fit(Combined(), loaders)
    assert trainer.num_training_batches == 4
    with pytest.raises(MisconfigurationException, match=r"=0.25` of a .* with 3 batches is less than one batch"):
        quiet_trainer(max_epochs=1, limit_train_batches=0.25).fit(Combined(), loaders)


def test_num_sanity_val_steps_minus_one_is_inf_and_runs_every_batch():
    seen = []

    class Spy(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if trainer.sanity_checking:
                seen.append(batch_idx)

    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, num_sanity_val_steps=-1, callbacks=[Spy()])
    assert trainer.num_sanity_val_steps == float("inf")
    trainer.fit(BoringModel(), make_loader(), make_loader(40, 8))
    assert seen == [0, 1, 2, 3, 4]
    assert trainer.num_sanity_val_batches == [5]


@pytest.mark.parametrize("precision, dtype", [("32-true", torch.float32), ("64-true", torch.float64)])
def test_init_module_builds_in_the_precision_dtype(precision, dtype):
    trainer = quiet_trainer(precision=precision)
    with trainer.init_module():
        model = BoringModel()
        inside = torch.get_default_dtype()
    assert model.layer.weight.dtype == dtype and inside == dtype
    assert torch.get_default_dtype() == torch.float32  # restored after


def test_init_module_empty_init_skips_weight_initialisation():
    trainer = quiet_trainer()
    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 64)
    torch.manual_seed(0)
    with trainer.init_module(empty_init=False):
        initialised = torch.nn.Linear(64, 64)
    torch.manual_seed(0)
    with trainer.init_module(empty_init=True):
        empty = torch.nn.Linear(64, 64)
    assert torch.equal(initialised.weight, reference.weight)
    assert not torch.equal(empty.weight, reference.weight)
    # the RNG was not used: the next draw is what it would be right after seeding
    drawn = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(1))


def test_fast_dev_run_replaces_the_loggers_with_a_dummy_and_writes_nothing(tmp_path, monkeypatch):
    from fulmen.loggers import CSVLogger
    from fulmen.loggers.logger import DummyLogger

    monkeypatch.chdir(tmp_path)

    class UsesLogger(BoringModel):
        def training_step(self, batch, batch_idx):
            self.logger.experiment.add_scalar("x", 1.0)  # runs, does nothing
            self.logger.log_metrics({"y": 2.0}, step=0)
            return super().training_step(batch, batch_idx)

    for logger in (None, True, CSVLogger(tmp_path / "csv"), [CSVLogger(tmp_path / "a"), CSVLogger(tmp_path / "b")]):
        trainer = pl.Trainer(fast_dev_run=True, logger=logger, enable_progress_bar=False, accelerator="cpu")
        assert len(trainer.loggers) == 1 and isinstance(trainer.logger, DummyLogger)
        trainer.fit(UsesLogger(), make_loader(), make_loader())
        assert trainer.global_step == 1
    assert pl.Trainer(fast_dev_run=2, logger=False).loggers == []
    assert list(tmp_path.iterdir()) == []


def test_default_logger_is_tensorboard_when_installed_else_csv(tmp_path, monkeypatch):
    """As Lightning: published code calls self.logger.experiment.add_histogram/add_image on the default logger."""
    import sys

    from fulmen.loggers import CSVLogger, TensorBoardLogger

    pytest.importorskip("tensorboard")

    class Histograms(BoringModel):
        def training_step(self, batch, batch_idx):
            self.logger.experiment.add_histogram("weights", self.layer.weight, self.global_step)
            return super().training_step(batch, batch_idx)

    for logger in (None, True):
        trainer = pl.Trainer(logger=logger, default_root_dir=tmp_path, accelerator="cpu")
        assert isinstance(trainer.logger, TensorBoardLogger) and trainer.logger.save_dir == str(tmp_path)
    trainer = pl.Trainer(max_steps=2, default_root_dir=tmp_path, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(Histograms(), make_loader())
    assert list((tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # neither installed: CSV, as in Lightning
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    assert isinstance(pl.Trainer(default_root_dir=tmp_path).logger, CSVLogger)
