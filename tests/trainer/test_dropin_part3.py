"""Programs Lightning 2.x accepts run on fulmen with the same results (issue 21, drop-in part 3).

Each test is the program a Lightning user writes, with the Trainer's features left on (sanity check,
checkpoints, logger, progress bar), asserting the values, files and warnings Lightning gives.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fulmen as pl
from fulmen.errors import LegacyAPIError
from helpers import BoringModel, make_loader


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    """The Trainer a user writes: logger, checkpoints, sanity check and progress bar on."""
    kwargs.setdefault("max_epochs", 1)
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", enable_model_summary=False, **kwargs)


# -- 1. Lightning 1.x hooks that 2.x skips --------------------------------------------------------
def test_callback_with_1x_hooks_runs_to_the_end_with_one_warning(tmp_path):
    class Old(pl.Callback):  # written for Lightning 1.x: 2.x never calls these and goes on
        def __init__(self):
            self.calls, self.epochs = [], 0

        def on_epoch_end(self, trainer, pl_module):
            self.calls.append("on_epoch_end")

        def on_batch_start(self, trainer, pl_module):
            self.calls.append("on_batch_start")

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs += 1

    cb = Old()
    with pytest.warns(UserWarning, match=r"Callback Old defines `on_batch_start`.*will not run") as record:
        trainer = _trainer(tmp_path, max_epochs=2, callbacks=[cb])
        trainer.fit(BoringModel(), make_loader(), make_loader(n=16))
        _trainer(tmp_path, callbacks=[cb]).fit(BoringModel(), make_loader())  # a second run: no second warning
    assert trainer.global_step == 16 and cb.epochs == 3
    assert cb.calls == []  # as on Lightning 2.x: never called
    legacy = [str(w.message) for w in record if "Lightning 1.x hook" in str(w.message)]
    assert sorted(m.split("`")[1] for m in legacy) == ["on_batch_start", "on_epoch_end"]


def test_module_1x_hooks_warn_where_lightning_goes_on_and_raise_where_it_stops(tmp_path):
    class StepEnd(BoringModel):
        def training_step_end(self, out):
            raise AssertionError("never called")

        def test_epoch_end(self, outputs):  # refused by trainer.test only, as on Lightning
            raise AssertionError("never called")

    model = StepEnd()
    with pytest.warns(UserWarning, match=r"StepEnd defines `training_step_end`.*will not run"):
        trainer = _trainer(tmp_path)
        trainer.fit(model, make_loader(), make_loader(n=16))
    assert trainer.global_step == 8
    assert trainer.validate(model, make_loader(n=16), verbose=False)[0]["val_loss"] > 0
    with pytest.raises(LegacyAPIError, match=r"`test_epoch_end`.*on_test_epoch_end"):
        trainer.test(model, make_loader(n=16), verbose=False)


# -- 2. a validation step that needs gradients (meta-learning) ------------------------------------
class MetaLearner(BoringModel):
    """MAML-style: validation adapts a copy of the weights with one inner gradient step."""

    def __init__(self):
        super().__init__()
        self.adapted_losses = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        with torch.set_grad_enabled(True):
            fast = [p.detach().clone().requires_grad_(True) for p in self.layer.parameters()]
            loss = F.cross_entropy(F.linear(x, *fast), y)
            grads = torch.autograd.grad(loss, fast)
            fast = [p - 0.5 * g for p, g in zip(fast, grads)]
            probe = nn.Linear(2, 1)
            probe(F.linear(x, *fast)).sum().backward()  # backward() in validation, as the programs do
            assert probe.weight.grad is not None
        adapted = F.cross_entropy(F.linear(x, *fast), y)
        self.adapted_losses.append(adapted.detach())
        self.log("val_adapted", adapted)


def test_validation_step_that_needs_gradients_runs_in_sanity_check_fit_and_validate(tmp_path):
    model = MetaLearner()
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, make_loader(), make_loader(n=16))
    # 2 sanity batches + 2 validation batches per epoch x 2 epochs
    assert len(model.adapted_losses) == 2 + 2 * 2
    assert all(torch.isfinite(v) for v in model.adapted_losses)
    # a stand-alone validate runs under inference_mode unless told otherwise, on Lightning too
    trainer = _trainer(tmp_path, inference_mode=False)
    [res] = trainer.validate(model, make_loader(n=16), verbose=False)
    assert res["val_adapted"] == pytest.approx(torch.stack(model.adapted_losses[-2:]).mean().item(), rel=1e-5)


# -- 3. Trainer(model_registry=...) and the 2.6 signature -----------------------------------------
LIGHTNING_2_6_TRAINER_ARGS = [
    "accelerator", "strategy", "devices", "num_nodes", "precision", "logger", "callbacks", "fast_dev_run",
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches", "limit_val_batches",
    "limit_test_batches", "limit_predict_batches", "overfit_batches", "val_check_interval",
    "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps", "enable_checkpointing",
    "enable_progress_bar", "enable_model_summary", "accumulate_grad_batches", "gradient_clip_val",
    "gradient_clip_algorithm", "deterministic", "benchmark", "inference_mode", "use_distributed_sampler",
    "profiler", "detect_anomaly", "barebones", "plugins", "sync_batchnorm", "reload_dataloaders_every_n_epochs",
    "default_root_dir", "enable_autolog_hparams", "model_registry",
]  # list(inspect.signature(lightning.pytorch.Trainer).parameters), Lightning 2.6


def test_trainer_signature_has_lightning_2_6_arguments_in_order():
    assert list(inspect.signature(pl.Trainer).parameters) == LIGHTNING_2_6_TRAINER_ARGS


def test_model_registry_is_kept_and_warns_once_that_nothing_is_uploaded(tmp_path):
    with pytest.warns(UserWarning, match=r"model_registry='my-model'.*not used") as record:
        trainer = _trainer(tmp_path, model_registry="my-model")
    assert trainer.model_registry == "my-model"
    assert sum("model_registry" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(num_workers|worker|bottleneck).*")
        assert _trainer(tmp_path).model_registry is None


# -- 8. Trainer subclasses ------------------------------------------------------------------------
def test_trainer_subclass_with_positional_arguments(tmp_path):
    class MyTrainer(pl.Trainer):
        def __init__(self, tag, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tag = tag

    trainer = MyTrainer("exp1", max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path)
    assert trainer.tag == "exp1" and trainer.max_epochs == 1 and trainer.limit_train_batches == 2
    trainer.fit(BoringModel(), make_loader(), make_loader(n=16))
    assert trainer.global_step == 2
    assert list(inspect.signature(MyTrainer).parameters) == ["tag", "args", "kwargs"]
    with pytest.raises(TypeError, match=r"no argument `max_epoch`.*`max_epochs`"):  # a typo still gets the hint
        MyTrainer("exp1", max_epoch=1)
    with pytest.raises(TypeError, match=r"keyword arguments only"):
        pl.Trainer("cpu")

    class PopsItsOwn(pl.Trainer):  # Lightning's other subclass pattern: take own names out of **kwargs
        def __init__(self, **kwargs):
            self.custom = kwargs.pop("custom", 0)
            super().__init__(**kwargs)

    trainer = PopsItsOwn(custom=321, fast_dev_run=True)
    assert trainer.custom == 321 and trainer.fast_dev_run == 1
    with pytest.raises(TypeError, match=r"PopsItsOwn has no argument `max_epoch`.*`max_epochs`"):
        PopsItsOwn(custom=1, max_epoch=3)
    with pytest.raises(TypeError, match=r"gpus.*accelerator='gpu'"):  # removed 1.x flags keep their hint
        PopsItsOwn(gpus=1)


# -- 4. torchmetrics objects between successive trainer.test() calls ------------------------------
def test_logged_torchmetrics_start_each_test_call_empty_and_each_call_restores(tmp_path, caplog):
    torchmetrics = pytest.importorskip("torchmetrics")

    class WithMetrics(BoringModel):
        def __init__(self):
            super().__init__()
            self.mean = torchmetrics.MeanMetric()

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.mean(batch[0].sum(1).mean())
            self.log("test_mean", self.mean)

    data = make_loader(n=48)
    xs = torch.cat([x for x, _ in data])
    model = WithMetrics()
    trainer = _trainer(tmp_path)
    trainer.fit(model, data, make_loader(n=16))
    got = []
    with caplog.at_level("INFO", logger="fulmen"):
        for k in range(3):
            part = make_loader(n=16, seed=k + 1)
            [res] = trainer.test(model, part, ckpt_path="best", verbose=False)
            got.append(res["test_mean"])
    expected = [torch.cat([x for x, _ in make_loader(n=16, seed=k + 1)]).sum(1).mean().item() for k in range(3)]
    assert got == pytest.approx(expected, rel=1e-5)  # each call's own mean, not a running one
    assert xs.shape[0] == 48 and model.mean.update_count == 0  # reset at the evaluation's end, as in Lightning
    restored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Restoring states from")]
    assert len(restored) == 3 and all(trainer.checkpoint_callback.best_model_path in m for m in restored)


# -- 8. ckpt_path="last" in validate/test before a last checkpoint exists -------------------------
def test_ckpt_path_last_before_any_last_checkpoint_warns_and_uses_current_weights(tmp_path):
    model = BoringModel()
    loader = make_loader(n=16)
    trainer = _trainer(tmp_path)
    with pytest.warns(UserWarning, match=r'ckpt_path="last": no last checkpoint.*current weights'):
        [before] = trainer.test(model, loader, ckpt_path="last", verbose=False)
    expected = F.cross_entropy(model(torch.cat([x for x, _ in loader])), torch.cat([y for _, y in loader])).item()
    assert before["test_loss"] == pytest.approx(expected, rel=1e-5)
    trainer.fit(model, make_loader(), loader)  # ModelCheckpoint without save_last: still no last checkpoint
    with pytest.warns(UserWarning, match=r'ckpt_path="last": no last checkpoint'):
        [after] = trainer.validate(model, loader, ckpt_path="last", verbose=False)
    assert after["val_loss"] != pytest.approx(before["test_loss"])  # the trained weights, not reloaded ones


# -- 5. Tuner.lr_find: Lightning's grid, smoothing and suggestion ---------------------------------
def test_lr_find_samples_lightnings_grid_and_suggests_its_rate(tmp_path, caplog):
    from torch.utils.data import DataLoader, TensorDataset

    from fulmen.tuner import Tuner

    class Net(pl.LightningModule):
        def __init__(self, lr=0.01):
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 2))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    pl.seed_everything(1)
    x = torch.randn(512, 32)
    loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=8)  # 64 batches
    model = Net()
    trainer = _trainer(tmp_path, max_epochs=1)
    with caplog.at_level("INFO", logger="fulmen"):
        finder = Tuner(trainer).lr_find(model, loader, num_training=100)
    lrs = finder.results["lr"]
    # max_epochs=1 ends the sweep after the loader's 64 batches, as on Lightning
    assert len(lrs) == 64
    assert lrs[0] == pytest.approx(1e-8) and lrs[1:] == pytest.approx([1e-8 * 1e8 ** ((k + 1) / 100) for k in range(1, 64)])
    # the first smoothed losses are Lightning's (its bias correction reads about half the first loss)
    assert finder.results["loss"][:2] == pytest.approx([0.319775, 0.486657], abs=1e-5)
    assert finder.suggestion() == pytest.approx(7.585775750291837e-08, rel=1e-9)  # Lightning 2.6, same program
    assert model.hparams.lr == finder.suggestion()
    assert any("set the learning rate to its suggestion" in r.getMessage() and str(model.hparams.lr) in r.getMessage()
               for r in caplog.records)


# -- 6. hp_metric only for runs with hyperparameters ----------------------------------------------
def test_hp_metric_is_written_only_when_hyperparameters_are_saved(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fulmen.loggers import TensorBoardLogger

    class WithHparams(BoringModel):
        def __init__(self, lr: float = 0.1):
            super().__init__(lr=lr)
            self.save_hyperparameters()

    tags = {}
    for cls in (BoringModel, WithHparams):
        logger = TensorBoardLogger(tmp_path / cls.__name__)
        trainer = _trainer(tmp_path, logger=logger, enable_progress_bar=False)
        trainer.fit(cls(), make_loader(), make_loader(n=16))
        events = EventAccumulator(logger.log_dir)
        events.Reload()
        tags[cls.__name__] = {t: [e.value for e in events.Scalars(t)] for t in events.Tags()["scalars"] if "hp" in t}
    assert tags == {"BoringModel": {}, "WithHparams": {"hp_metric": [-1.0]}}


# -- 8. hyperparameters saved by both the module and the datamodule -------------------------------
def test_module_and_datamodule_hparams_with_tensor_values_merge_or_name_the_key(tmp_path):
    from fulmen.errors import MisconfigurationException

    class Model(BoringModel):
        def __init__(self, hp):
            super().__init__()
            self.save_hyperparameters(hp)

    class Data(pl.LightningDataModule):
        def __init__(self, hp):
            super().__init__()
            self.save_hyperparameters(hp)

        def train_dataloader(self):
            return make_loader()

        def val_dataloader(self):
            return make_loader(n=16)

    from fulmen.loggers import CSVLogger

    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, logger=logger)
    shared = {"weights": torch.ones(3), "depth": 2}
    trainer.fit(Model(shared), datamodule=Data({**shared, "batch": 8}))  # equal tensors: merged
    assert trainer.global_step == 8
    assert set(logger.experiment.hparams) == {"weights", "depth", "batch"}
    with pytest.raises(MisconfigurationException, match=r"\['weights'\]"):
        _trainer(tmp_path).fit(Model(shared), datamodule=Data({**shared, "weights": torch.zeros(3)}))


# -- 8. BatchSizeFinder with validate / test / predict ----------------------------------------------
@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_batch_size_finder_callback_tunes_evaluation_stages(tmp_path, stage):
    from torch.utils.data import DataLoader, TensorDataset

    from fulmen.callbacks import BatchSizeFinder

    data = TensorDataset(torch.randn(64, 32), torch.randint(0, 2, (64,)))

    class Sized(BoringModel):
        def __init__(self, batch_size=2):
            super().__init__()
            self.batch_size, self.sizes = batch_size, []

        def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
            self.sizes.append(len(batch[0]))

        on_test_batch_start = on_predict_batch_start = on_validation_batch_start

        def val_dataloader(self):
            return DataLoader(data, batch_size=self.batch_size)

        test_dataloader = predict_dataloader = val_dataloader

    model = Sized()
    finder = BatchSizeFinder(max_trials=3, steps_per_trial=2)
    trainer = _trainer(tmp_path, callbacks=[finder])
    kwargs = {} if stage == "predict" else {"verbose": False}
    out = getattr(trainer, stage)(model, **kwargs)
    # trials of 2 batches at 2, 4, 8 (as on Lightning), then the real run over 64 samples at 8
    assert finder.optimal_batch_size == model.batch_size == 8
    assert model.sizes == [2, 2, 4, 4] + [8] * 10
    assert len(out) == (8 if stage == "predict" else 1)
    assert trainer.state.fn.value == stage and trainer.lightning_module is model


# -- 8. val_check_interval longer than an epoch with validation turned off --------------------------
@pytest.mark.parametrize("limit_val_batches", [0, 0.0])
def test_val_check_interval_beyond_the_epoch_is_accepted_when_validation_is_off(tmp_path, limit_val_batches):
    class Counting(BoringModel):
        val_batches = 0

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.val_batches += 1

    model = Counting()
    trainer = _trainer(tmp_path, val_check_interval=100, limit_val_batches=limit_val_batches)
    trainer.fit(model, make_loader(), make_loader(n=16))
    assert trainer.global_step == 8 and model.val_batches == 0
    with pytest.raises(ValueError, match="val_check_interval=100"):  # with validation on it still fails, as Lightning
        _trainer(tmp_path, val_check_interval=100).fit(Counting(), make_loader(), make_loader(n=16))


# -- 9. overfit_batches reads the validation loader in order too -----------------------------------
def test_overfit_batches_validates_on_the_same_first_batches_in_order(tmp_path):
    from torch.utils.data import DataLoader

    data = torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)

    class Seen(BoringModel):
        def __init__(self):
            super().__init__()
            self.train_firsts, self.val_firsts = [], []

        def training_step(self, batch, batch_idx):
            self.train_firsts.append(int(batch[0, 0]))
            return self.layer(batch).sum()

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.val_firsts.append(int(batch[0, 0]))

    model = Seen()
    trainer = _trainer(tmp_path, max_epochs=2, overfit_batches=2)
    with pytest.warns(UserWarning, match="shuffled validation dataloader is read in order"):
        trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4, shuffle=True))
    first_two = [0, 4 * 32]  # the first element of the first two batches, in order
    assert model.train_firsts == first_two * 2
    assert model.val_firsts == first_two * 3  # sanity check, then after each epoch: the training batches


# -- 9. Lightning's PL_TRAINER_* environment defaults ---------------------------------------------
def test_trainer_arguments_from_pl_trainer_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "2")
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "0.5")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # not a literal: kept as text
    trainer = pl.Trainer(default_root_dir=tmp_path, enable_model_summary=False, limit_val_batches=1)
    assert (trainer.max_epochs, trainer.limit_train_batches) == (2, 0.5)
    trainer.fit(BoringModel(), make_loader(), make_loader(n=16))
    assert trainer.global_step == 2 * 4
    assert pl.Trainer(max_epochs=5, logger=False).max_epochs == 5  # an argument passed wins


def test_num_sanity_val_batches_is_known_after_fit_even_without_a_sanity_check(tmp_path):
    trainer = _trainer(tmp_path, num_sanity_val_steps=0, limit_val_batches=3)
    trainer.fit(BoringModel(), make_loader(), [make_loader(n=16), make_loader(n=64)])
    assert trainer.num_val_batches == [2, 3] and trainer.num_sanity_val_batches == [0, 0]  # Lightning's values
