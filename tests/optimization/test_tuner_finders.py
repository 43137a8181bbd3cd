"""lr_find on a problem whose good learning rate is known, and scale_batch_size against a simulated memory limit."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen as pl
from _optim_helpers import quiet_trainer, regression_data
from fulmen.callbacks import BatchSizeFinder, LearningRateFinder
from fulmen.errors import FulmenError, MisconfigurationException
from fulmen.finders import _search
from fulmen.tuner import Tuner


class LinearRegression(pl.LightningModule):
    """MSE on x ~ N(0, I): the Hessian is about 2*I, so SGD converges fastest near lr=0.5 and diverges past 1."""

    def __init__(self, lr=1e-3, batch_size=16, memory_limit=None, n=512):
        super().__init__()
        self.lr, self.batch_size, self.memory_limit, self.n = lr, batch_size, memory_limit, n
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.seen_sizes = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen_sizes.append(x.shape[0])
        if self.memory_limit is not None and x.shape[0] > self.memory_limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} MiB")
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        if self.memory_limit is not None and batch[0].shape[0] > self.memory_limit:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        self.log("val_loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def train_dataloader(self):
        return DataLoader(regression_data(self.n), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(regression_data(self.n, seed=1), batch_size=self.batch_size)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)]


def test_lr_find_suggests_a_good_rate_and_restores_the_model(tmp_path):
    model = LinearRegression(batch_size=64, n=2048)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=3)  # max_epochs bounds the sweep too (32 batches an epoch), as in Lightning
    finder = Tuner(trainer).lr_find(model, min_lr=1e-4, max_lr=10.0, num_training=80)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert lrs[0] == pytest.approx(1e-4) and all(a < b for a, b in zip(lrs, lrs[1:]))
    assert len(lrs) < 80 and lrs[-1] > 1.0  # stopped early once the loss blew up past lr=1
    suggestion = finder.suggestion()
    # Lightning's rule (the steepest fall of the loss against the raw rate) picks a cautious rate on this problem
    assert 1e-4 < suggestion < 0.02
    assert model.lr == suggestion
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.global_step == 0 and not any(isinstance(c, LearningRateFinder) for c in trainer.callbacks)

    fig = finder.plot(suggest=True)
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].lines) == 2
    fig.savefig(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0

    x, y = regression_data(2048).tensors
    initial = nn.functional.mse_loss(model.layer(x), y).item()
    trainer.fit(model)  # the fit goes on with the suggested rate
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == suggestion
    assert nn.functional.mse_loss(model.layer(x), y).item() < initial


def test_lr_find_linear_mode_without_update_keeps_the_attribute():
    model = LinearRegression(lr=0.123)
    finder = Tuner(quiet_trainer(max_epochs=1)).lr_find(model, min_lr=0.01, max_lr=0.5, num_training=20,
                                                         mode="linear", update_attr=False, early_stop_threshold=None)
    assert len(finder.results["lr"]) == 20
    # Lightning's grid: min_lr first, then step k at (k + 1) / num_training of the way, max_lr last
    assert finder.results["lr"][-1] == pytest.approx(0.5) and finder.results["lr"][1] - finder.results["lr"][0] == pytest.approx(0.49 * 2 / 20)
    assert model.lr == 0.123


def test_lr_find_writes_into_hparams_and_warns_on_too_few_points():
    class HP(LinearRegression):
        def __init__(self, learning_rate=1e-3):
            super().__init__()
            del self.lr
            self.save_hyperparameters()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)

    model = HP()
    Tuner(quiet_trainer(max_epochs=1)).lr_find(model, num_training=30, min_lr=1e-4, max_lr=3.0)
    assert model.hparams.learning_rate != 1e-3
    with pytest.warns(UserWarning, match="too few"):
        finder = Tuner(quiet_trainer(max_epochs=1)).lr_find(HP(), num_training=5)
    with pytest.warns(UserWarning, match="5 point"):
        assert finder.suggestion() is None


def test_lr_find_needs_an_lr_attribute():
    class NoLr(LinearRegression):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = NoLr()
    del model.lr
    with pytest.raises(MisconfigurationException, match="'lr' or 'learning_rate'"):
        Tuner(quiet_trainer(max_epochs=1)).lr_find(model, num_training=5)


def test_learning_rate_finder_callback_tunes_then_fits_with_the_suggestion():
    model = LinearRegression(batch_size=64, n=2048)
    cb = LearningRateFinder(min_lr=1e-4, max_lr=10.0, num_training_steps=80)
    seen_lrs = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quiet_trainer(max_epochs=1, callbacks=[cb, Spy()])
    trainer.fit(model)
    assert model.lr == cb.optimal_lr.suggestion()
    assert seen_lrs and seen_lrs[0] == model.lr  # the fit itself runs with the found rate, from step 0
    assert trainer.global_step == 2048 // 64


def test_tuner_refuses_a_trainer_that_already_has_the_callback():
    trainer = quiet_trainer(max_epochs=1, callbacks=[LearningRateFinder()])
    with pytest.raises(MisconfigurationException, match="already has a LearningRateFinder"):
        Tuner(trainer).lr_find(LinearRegression())


# -- batch size ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, expected", [("power", 32), ("binsearch", 48)])
def test_scale_batch_size_finds_the_simulated_memory_limit_and_restores_state(mode, expected):
    model = LinearRegression(batch_size=7, memory_limit=48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1)
    callbacks = list(trainer.callbacks)
    found = Tuner(trainer).scale_batch_size(model, mode=mode, init_val=2, margin=0.0)
    assert found == expected == model.batch_size
    tried = sorted(set(model.seen_sizes))
    assert 64 in tried and (mode == "power" or 49 in tried)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.global_step == 0 and trainer.callbacks == callbacks
    model.seen_sizes.clear()
    trainer.fit(model)
    assert model.seen_sizes[0] == max(model.seen_sizes) == expected


def test_scale_batch_size_is_capped_by_the_dataset():
    model = LinearRegression(n=40)
    assert Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(model, init_val=4) == 40


def test_scale_batch_size_for_validation():
    model = LinearRegression(memory_limit=20)
    assert Tuner(quiet_trainer()).scale_batch_size(model, method="validate", mode="binsearch",
                                                        margin=0.0) == 20


def test_batch_size_finder_callback_then_fits():
    model = LinearRegression(memory_limit=40)
    cb = BatchSizeFinder(mode="binsearch", init_val=8)  # Lightning's default margin keeps 5% of headroom
    trainer = quiet_trainer(max_epochs=1, callbacks=[cb])
    trainer.fit(model)
    assert cb.optimal_batch_size == 38 == model.batch_size  # int(40 * 0.95)
    assert trainer.global_step == -(-512 // 38)


def test_scale_batch_size_rejects_passed_loaders_and_missing_attribute():
    model = LinearRegression()
    with pytest.raises(MisconfigurationException, match="cannot use a loader passed to fit"):
        Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(model, model.train_dataloader())
    with pytest.raises(MisconfigurationException, match="'bs'"):
        Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(model, batch_arg_name="bs")


def test_other_errors_are_not_swallowed_and_one_that_never_fits_is_reported():
    class Broken(LinearRegression):
        def training_step(self, batch, batch_idx):
            raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(Broken())
    with pytest.raises(FulmenError, match="even a batch of 1"):
        _search(lambda size: False, "power", 4, 25, lambda: None)


@pytest.mark.parametrize("mode, margin, max_val, expected", [
    ("binsearch", 0.05, 8192, 45),  # Lightning's defaults: 48 fits, 5% of headroom is kept
    ("binsearch", 0.25, 8192, 36),
    ("power", 0.25, 8192, 32),  # the margin is binsearch's only, as in Lightning
    ("power", 0.05, 16, 16),  # never tries above max_val
    ("binsearch", 0.0, 24, 24),
])
def test_scale_batch_size_margin_and_max_val(mode, margin, max_val, expected):
    model = LinearRegression(memory_limit=48)
    found = Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(model, mode=mode, init_val=2, margin=margin,
                                                               max_val=max_val)
    assert found == expected == model.batch_size
    assert max(model.seen_sizes) <= max(max_val, 2)


@pytest.mark.parametrize("kwargs, match", [({"margin": 1.0}, "margin=1.0"), ({"max_val": 0}, "max_val=0")])
def test_scale_batch_size_rejects_bad_margin_and_max_val(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(LinearRegression(), **kwargs)
    with pytest.raises(MisconfigurationException, match=match):
        BatchSizeFinder(**kwargs)


def test_lr_find_signature_and_finder_api_match_lightning(tmp_path):
    import inspect

    params = list(inspect.signature(Tuner.lr_find).parameters)
    assert params == ["self", "model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule", "method",
                      "min_lr", "max_lr", "num_training", "mode", "early_stop_threshold", "update_attr", "attr_name"]
    params = list(inspect.signature(Tuner.scale_batch_size).parameters)
    assert params == ["self", "model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule", "method",
                      "mode", "steps_per_trial", "init_val", "max_trials", "batch_arg_name", "margin", "max_val"]
    model = LinearRegression(batch_size=64, n=1024)
    finder = Tuner(quiet_trainer(max_epochs=2)).lr_find(model, min_lr=1e-4, max_lr=1.0, num_training=30,
                                                        early_stop_threshold=None)
    assert set(finder.results) == {"lr", "loss"} and len(finder.results["lr"]) == 30
    suggestion = finder.suggestion(skip_begin=5, skip_end=2)
    assert suggestion in finder.results["lr"][5:-2]
    pytest.importorskip("matplotlib")
    fig = finder.plot(suggest=True, show=False)
    red = [line for line in fig.axes[0].get_lines() if line.get_color() == "red"]
    assert len(red) == 1 and red[0].get_xdata()[0] == suggestion


def test_lr_find_records_one_point_per_optimizer_step_when_accumulating():
    # 3 batches per window: a point averages the window's losses and comes at the step that ends it
    finder = Tuner(quiet_trainer(max_epochs=1, accumulate_grad_batches=3)).lr_find(
        LinearRegression(), min_lr=1e-4, max_lr=1.0, num_training=10, early_stop_threshold=None, update_attr=False)
    assert len(finder.results["loss"]) == 10
    lrs = finder.results["lr"]
    assert lrs == sorted(lrs) and len(set(lrs)) == 10
