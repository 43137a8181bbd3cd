"""The fit/validate/test/predict loops honour Lightning's flags: limits, validation cadence, stopping."""

import math

import pytest
import torch

import fulmen as pl
from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import RunningStage, TrainerFn, TrainerStatus, accumulation_window
from helpers import BoringModel, make_loader, quiet_trainer


class Counting(BoringModel):
    """Counts the batches each loop saw, per epoch for validation."""

    def __init__(self):
        super().__init__()
        self.train_batches = 0
        self.val_runs: list[tuple[int, int]] = []  # (epoch, batches) per validation run
        self._val_batches = 0

    def training_step(self, batch, batch_idx):
        self.train_batches += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._val_batches += 1
        return super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self):
        self.val_runs.append((self.current_epoch, self._val_batches))
        self._val_batches = 0


def fit(model=None, train=80, val=40, bs=8, **flags):
    model = model or Counting()
    trainer = quiet_trainer(**{"max_epochs": 1, **flags})
    trainer.fit(model, make_loader(train, bs), make_loader(val, bs))
    return trainer, model


def test_defaults_sanity_check_then_validation_each_epoch():
    trainer, model = fit(max_epochs=2)
    # 2 sanity batches, then all 5 validation batches at the end of each epoch
    assert model.val_runs == [(0, 2), (0, 5), (1, 5)]
    assert trainer.global_step == 20 and trainer.current_epoch == 2
    assert trainer.state.status == TrainerStatus.FINISHED and trainer.state.fn == TrainerFn.FITTING


def test_max_epochs_defaults_to_1000_without_limits():
    assert pl.Trainer(logger=False, enable_checkpointing=False).max_epochs == 1000
    assert pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False).max_epochs is None


@pytest.mark.parametrize("limit, expected", [(3, 3), (0.5, 5), (1.0, 10)])
def test_limit_train_batches(limit, expected):
    trainer, model = fit(limit_train_batches=limit, num_sanity_val_steps=0)
    assert model.train_batches == expected == trainer.num_training_batches


def test_limit_val_batches_and_zero_disables_validation():
    _, model = fit(limit_val_batches=2, num_sanity_val_steps=0)
    assert model.val_runs == [(0, 2)]
    _, model = fit(limit_val_batches=0)
    assert model.val_runs == []


@pytest.mark.parametrize("steps, expected", [(0, []), (-1, [(0, 5)]), (3, [(0, 3)])])
def test_num_sanity_val_steps(steps, expected):
    _, model = fit(num_sanity_val_steps=steps, limit_val_batches=5, max_steps=1)
    assert model.val_runs[: len(expected)] == expected


def test_val_check_interval_fraction_and_int():
    _, model = fit(val_check_interval=0.5, num_sanity_val_steps=0)
    assert model.val_runs == [(0, 5), (0, 5)]
    _, model = fit(val_check_interval=3, num_sanity_val_steps=0)
    assert len(model.val_runs) == 3  # after batches 3, 6 and 9: not again at the end (Lightning does the same)


def test_val_check_interval_across_epochs():
    _, model = fit(val_check_interval=15, check_val_every_n_epoch=None, max_epochs=3, num_sanity_val_steps=0)
    assert [e for e, _ in model.val_runs] == [1, 2]  # after total batches 15 and 30


def test_check_val_every_n_epoch():
    _, model = fit(check_val_every_n_epoch=2, max_epochs=4, num_sanity_val_steps=0)
    assert [e for e, _ in model.val_runs] == [1, 3]


def test_val_check_interval_larger_than_epoch_is_an_error():
    with pytest.raises(pl.errors.MisconfigurationException, match="check_val_every_n_epoch=None"):
        fit(val_check_interval=50)


def test_max_steps_stops_mid_epoch():
    trainer, model = fit(max_epochs=5, max_steps=13, num_sanity_val_steps=0)
    assert trainer.global_step == 13 and model.train_batches == 13
    assert trainer.current_epoch == 2  # the cut-short epoch still ends (Lightning counts it too)


def test_on_train_batch_start_minus_one_ends_the_epoch():
    class M(Counting):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 4 else None

    trainer, model = fit(M(), max_epochs=2, num_sanity_val_steps=0)
    assert model.train_batches == 8 and trainer.current_epoch == 2
    assert model.val_runs == []  # cut short before its last batch, so no epoch-end validation (as in Lightning)


def test_should_stop_respects_min_epochs():
    class Stopper(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    trainer, _ = fit(max_epochs=10, min_epochs=3, callbacks=[Stopper()], num_sanity_val_steps=0)
    assert trainer.current_epoch == 3
    trainer, _ = fit(max_epochs=10, callbacks=[Stopper()], num_sanity_val_steps=0)
    assert trainer.current_epoch == 1


def test_should_stop_mid_epoch_respects_min_steps():
    class Stopper(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = True

    trainer, _ = fit(max_epochs=10, min_steps=14, callbacks=[Stopper()], num_sanity_val_steps=0)
    assert (trainer.global_step, trainer.current_epoch) == (14, 2)
    trainer, _ = fit(max_epochs=10, callbacks=[Stopper()], num_sanity_val_steps=0)
    assert (trainer.global_step, trainer.current_epoch) == (1, 1)


def test_max_time_stops_training():
    trainer, model = fit(max_epochs=1000, max_time={"seconds": 0}, num_sanity_val_steps=0)
    assert model.train_batches == 0 and trainer.current_epoch == 0
    trainer, model = fit(max_epochs=1000, max_time={"seconds": 0.3}, num_sanity_val_steps=0)
    assert 0 < trainer.current_epoch < 1000


def test_fast_dev_run():
    trainer, model = fit(fast_dev_run=2, max_epochs=5)
    assert model.train_batches == 2 and model.val_runs == [(0, 2)]
    assert trainer.logger is None and trainer.checkpoint_callback is None


def test_overfit_batches_uses_the_same_batches_unshuffled():
    seen = []

    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0][0, 0].item())
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(overfit_batches=2, max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(M(), make_loader(80, 8, shuffle=True))
    assert len(seen) == 6 and seen[0:2] == seen[2:4] == seen[4:6]


def test_state_during_hooks():
    states = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, *_):
            states.append((trainer.state.fn, trainer.state.stage, trainer.training))

        def on_validation_batch_start(self, trainer, *_):
            states.append((trainer.state.fn, trainer.state.stage, trainer.validating or trainer.sanity_checking))

    fit(callbacks=[Probe()], limit_train_batches=1, limit_val_batches=1)
    assert states == [
        (TrainerFn.FITTING, RunningStage.SANITY_CHECKING, True),
        (TrainerFn.FITTING, RunningStage.TRAINING, True),
        (TrainerFn.FITTING, RunningStage.VALIDATING, True),
    ]


def test_estimated_stepping_batches():
    seen = []

    class M(BoringModel):
        def configure_optimizers(self):
            seen.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    quiet_trainer(max_epochs=3, accumulate_grad_batches=3).fit(M(), make_loader(80, 8))
    assert seen == [12]  # ceil(10 / 3) * 3


def test_accumulation_windows_decide_zero_grad_optimizer_step_and_global_step():
    # 7 batches, 3 per window: [0 1 2] [3 4 5] [6], the epoch's last batch closing a short window
    rule = [accumulation_window(i, 3, i == 6) for i in range(7)]
    assert rule == [(True, False), (False, False), (False, True), (True, False), (False, False), (False, True),
                    (True, True)]
    seen = {"zero": [], "step": [], "global_step": []}

    class M(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            self.batch_idx = batch_idx

        def on_before_zero_grad(self, optimizer):
            seen["zero"].append(self.batch_idx)

        def on_before_optimizer_step(self, optimizer):
            seen["step"].append(self.batch_idx)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen["global_step"].append(self.global_step)

    quiet_trainer(max_epochs=1, accumulate_grad_batches=3).fit(M(), make_loader(56, 8))
    assert seen == {"zero": [0, 3, 6], "step": [2, 5, 6], "global_step": [0, 0, 1, 1, 1, 2, 3]}


def test_current_epoch_and_global_step_seen_by_the_module():
    seen = []

    class M(BoringModel):
        def on_train_epoch_end(self):
            seen.append((self.current_epoch, self.global_step))

    quiet_trainer(max_epochs=2).fit(M(), make_loader(32, 8))
    assert seen == [(0, 4), (1, 8)]


def test_validate_and_test_return_metrics_per_loader_and_keep_train_mode():
    model = BoringModel()
    trainer = quiet_trainer()
    out = trainer.validate(model, make_loader(32, 8), verbose=False)
    assert list(out[0]) == ["val_loss"] and math.isfinite(out[0]["val_loss"])
    assert model.training
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(out[0]["val_loss"])


def test_validate_prints_a_results_table(capsys):
    quiet_trainer().validate(BoringModel(), make_loader(32, 8))
    printed = capsys.readouterr().out
    assert "val_loss" in printed and "DataLoader 0" in printed


def test_frozen_batchnorm_stays_in_eval_after_validation():
    class M(BoringModel):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(32)
            self.bn.eval()

    model = M()
    fit(model, limit_train_batches=1)
    assert model.training and not model.bn.training


def test_inference_mode_flag():
    seen = []

    class M(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    quiet_trainer(inference_mode=False).validate(M(), make_loader(8, 8), verbose=False)
    quiet_trainer(inference_mode=True).validate(M(), make_loader(8, 8), verbose=False)
    assert seen == [(False, False), (True, False)]


def test_validation_inside_fit_runs_under_no_grad_and_may_switch_gradients_on():
    """Meta-learning fine-tunes inside validation_step: in fit (sanity check included) evaluation runs under
    no_grad as in Lightning, so torch.enable_grad() works there; trainer.validate keeps inference_mode."""
    seen, grads = [], []

    class Meta(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append((self.trainer.sanity_checking, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            with torch.enable_grad():
                w = self.layer.weight.detach().clone().requires_grad_(True)
                (g,) = torch.autograd.grad((batch[0] @ w.t()).pow(2).mean(), w)
            grads.append(g)
            self.log("grad_norm", g.norm())

    loader = make_loader(8, 8)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, num_sanity_val_steps=1)
    trainer.fit(Meta(), loader, loader)
    assert seen[0] == (True, False, False) and set(seen[1:]) == {(False, False, False)}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert torch.is_grad_enabled()  # the grad mode fit found is the one it leaves


def test_intro_example_loss_falls():
    """The README's example, on scikit-learn's digits, with the Trainer's defaults."""
    sklearn = pytest.importorskip("sklearn.datasets")
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    losses = []

    class LitModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(8 * 8, 10)

        def forward(self, x):
            return torch.relu(self.l1(x.view(x.size(0), -1)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.02)

    x, y = sklearn.load_digits(return_X_y=True)
    loader = DataLoader(TensorDataset(torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)), batch_size=64,
                        shuffle=True)
    trainer = pl.Trainer(max_epochs=3, enable_progress_bar=False)
    trainer.fit(LitModel(), loader)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first  # ReLU on the logits (as in the original example) limits how low it goes
    ckpts = trainer.checkpoint_callback.best_model_path
    assert ckpts.endswith("epoch=2-step=87.ckpt")


def test_a_default_run_in_a_fresh_directory_is_quiet(capsys, recwarn):
    """Trainer defaults: no warning at all, and output limited to summary, progress and where things went."""
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu")  # fewer steps than log_every_n_steps: epoch logs only
    trainer.fit(BoringModel(), make_loader(64, 8))
    assert [str(w.message) for w in recwarn.list] == []
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("Checkpoints: ") and "Logs: " in out[-1]
    assert sum(line.startswith("Epoch ") for line in out) == 2


def test_train_dataloader_is_requested_once_even_when_configure_optimizers_needs_its_length():
    calls = []

    class M(BoringModel):
        def train_dataloader(self):
            calls.append(1)
            return make_loader(32, 8)

        def configure_optimizers(self):
            assert self.trainer.estimated_stepping_batches == 8
            return super().configure_optimizers()

    quiet_trainer(max_epochs=2).fit(M())
    assert len(calls) == 1


@pytest.mark.parametrize("hook", ["validation_step", "val_dataloader"])
def test_a_step_or_loader_set_to_none_switches_validation_off(hook):
    class WithLoader(Counting):
        def val_dataloader(self):
            return make_loader(16)

    model = WithLoader()
    setattr(model, hook, None)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2)
    trainer.fit(model, make_loader())
    assert model.train_batches == 4
    assert model.val_runs == []
    assert not trainer.enable_validation
    assert "val_loss" not in trainer.callback_metrics


def test_test_step_set_to_none_is_a_clear_error_and_predict_step_none_too():
    model = BoringModel()
    model.test_step = None
    with pytest.raises(MisconfigurationException, match="test_step"):
        quiet_trainer().test(model, make_loader())
    model.predict_step = None
    with pytest.raises(MisconfigurationException, match="predict_step is None"):
        quiet_trainer().predict(model, make_loader())


def test_batch_hooks_set_to_none_are_skipped():
    class Hooked(BoringModel):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            raise AssertionError("switched off, must not run")

        def on_validation_model_eval(self):
            raise AssertionError("switched off, must not run")

    model = Hooked()
    for hook in ("on_train_batch_end", "on_validation_model_eval", "prepare_data", "setup", "configure_model",
                 "teardown"):
        setattr(model, hook, None)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(model, make_loader(), make_loader())
    assert trainer.global_step == 2
    assert "val_loss" in trainer.callback_metrics


class NoBatchIdx(BoringModel):
    """Steps without batch_idx, as Lightning allows (it passes the argument only when the signature has it)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def training_step(self, batch):
        self.seen.append("train")
        return super().training_step(batch, 0)

    def validation_step(self, batch):
        self.seen.append("val")
        return super().validation_step(batch, 0)

    def test_step(self, batch):
        self.seen.append("test")
        return super().test_step(batch, 0)

    def predict_step(self, batch):
        return self(batch[0])


def test_steps_without_batch_idx():
    model = NoBatchIdx()
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, val_check_interval=2)
    trainer.fit(model, make_loader(), make_loader())
    trainer.test(model, make_loader(16))
    preds = trainer.predict(model, make_loader(16))
    assert model.seen == ["train", "train", "val", "test", "test"]
    assert len(preds) == 2 and preds[0].shape == (8, 2)


def test_dataloader_idx_is_passed_by_the_signature_rules():
    class Multi(BoringModel):
        def __init__(self):
            super().__init__()
            self.calls = []

        def validation_step(self, batch, *args):  # *args takes batch_idx and dataloader_idx
            self.calls.append(args)

        def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
            self.calls.append(("end", dataloader_idx))

    model = Multi()
    quiet_trainer().validate(model, [make_loader(8), make_loader(8)], verbose=False)
    assert model.calls == [(0, 0), ("end", 0), (0, 1), ("end", 1)]

    class Missing(BoringModel):
        def validation_step(self, batch, batch_idx):
            pass

    with pytest.raises(pl.errors.MisconfigurationException, match="dataloader_idx=0"):
        quiet_trainer().validate(Missing(), [make_loader(8), make_loader(8)])

    class Required(BoringModel):
        def test_step(self, batch, batch_idx, dataloader_idx):
            pass

    with pytest.raises(pl.errors.MisconfigurationException, match="single test dataloader"):
        quiet_trainer().test(Required(), make_loader(8))


def test_seeded_run_sees_the_batches_plain_pytorch_sees():
    """The sanity check draws nothing from the global RNG, so a seeded run shuffles as plain PyTorch does
    (and as Lightning, which isolates its sanity check)."""
    from torch.utils.data import DataLoader, TensorDataset

    def loaders():
        data = TensorDataset(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(32))
        return DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4, shuffle=True)

    class Recorder(BoringModel):
        def __init__(self):
            super().__init__()
            self.order = []

        def training_step(self, batch, batch_idx):
            self.order.append(batch[1].tolist())
            return self(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self(batch[0]).pow(2).mean())

    pl.seed_everything(7)
    model = Recorder()
    train, val = loaders()
    quiet_trainer(max_epochs=2, num_sanity_val_steps=2).fit(model, train, val)

    pl.seed_everything(7)
    Recorder()  # the same draws for the weights
    train, val = loaders()
    plain = []
    for _ in range(2):
        plain += [y.tolist() for _, y in train]
        for _ in val:  # validation at each epoch's end draws from the RNG, in Lightning and in plain PyTorch
            pass
    assert model.order == plain


def test_second_fit_continues_from_the_trainers_state(tmp_path, caplog):
    """A second trainer.fit(model) on a finished run trains nothing more (Lightning's behaviour); a new Trainer
    with a larger max_epochs and the checkpoint continues; the CSV log gets no duplicate rows."""
    import csv
    import logging

    from fulmen.callbacks import ModelCheckpoint
    from fulmen.loggers import CSVLogger

    model = Counting()
    logger = CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ModelCheckpoint(tmp_path / "ck", save_last=True)],
                         accelerator="cpu")
    with caplog.at_level(logging.INFO, logger="fulmen"):
        trainer.fit(model, make_loader(16), make_loader(16))
        assert (trainer.current_epoch, trainer.global_step, model.train_batches) == (2, 4, 4)
        trainer.fit(model, make_loader(16), make_loader(16))
    assert (trainer.current_epoch, trainer.global_step, model.train_batches) == (2, 4, 4)
    stopped = [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()]
    assert stopped == ["`Trainer.fit` stopped: `max_epochs=2` reached."] * 2
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    steps = [(r["step"], r["epoch"]) for r in rows if r.get("train_loss")]
    assert len(steps) == len(set(steps)) == 4

    caplog.clear()
    more = quiet_trainer(max_epochs=3)
    with caplog.at_level(logging.INFO, logger="fulmen"):
        more.fit(model, make_loader(16), make_loader(16), ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert (more.current_epoch, more.global_step, model.train_batches) == (3, 6, 6)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"Restoring states from the checkpoint path at {tmp_path / 'ck' / 'last.ckpt'}"
    assert messages[-1] == "`Trainer.fit` stopped: `max_epochs=3` reached."


def test_a_missing_ckpt_path_raises_without_announcing_a_restore(caplog, tmp_path):
    import logging

    from fulmen.checkpoint import CheckpointNotFoundError

    trainer = quiet_trainer(max_epochs=1)
    with caplog.at_level(logging.INFO, logger="fulmen"), pytest.raises(CheckpointNotFoundError, match="missing.ckpt"):
        trainer.fit(BoringModel(), make_loader(16), ckpt_path=tmp_path / "missing.ckpt")
    assert not [r.getMessage() for r in caplog.records if "Restoring states" in r.getMessage()]


def test_max_steps_reached_is_said_once_and_other_runs_are_quiet(caplog, capsys):
    import logging

    with caplog.at_level(logging.INFO, logger="fulmen"):
        trainer, _ = fit(max_steps=3, max_epochs=5)
        quiet_trainer().validate(BoringModel(), make_loader(16), verbose=False)
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_steps=3` reached."]
    assert capsys.readouterr().out == ""


class Precise(BoringModel):
    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("acc", torch.tensor(0.123456789012))


def test_results_table_shows_full_precision_as_lightning(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    quiet_trainer().test(Precise(), make_loader(16))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == lines[2] == lines[-1] and set(lines[0]) <= {"─", "-"} and len(lines[0]) == 80
    assert lines[1] == "       Test metric             DataLoader 0"
    assert lines[3] == "           acc              0.12345679104328156"  # the float32 value, every digit


def test_results_table_is_a_rich_table_under_rich_progress_bar(capsys):
    pytest.importorskip("rich")
    from fulmen.callbacks import RichProgressBar

    trainer = quiet_trainer(enable_progress_bar=True, callbacks=[RichProgressBar()])
    trainer.test(Precise(), make_loader(16))
    out = capsys.readouterr().out
    assert "┃        Test metric        ┃       DataLoader 0        ┃" in out
    assert "│            acc            │    0.12345679104328156    │" in out
