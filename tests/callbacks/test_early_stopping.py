"""EarlyStopping stops at the epoch Lightning 2.6 stops at, for each argument (recorded with the same script)."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import EarlyStopping, EarlyStoppingReason
from fulmen.checkpoint import load_checkpoint
from fulmen.errors import MisconfigurationException

VAL = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.94, 0.96, 0.97, 0.98, float("nan"), 1.0]


class Scripted(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.l(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(VAL[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(es, **trainer_kwargs):
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)  # 2 steps per epoch
    trainer = pl.Trainer(max_epochs=len(VAL), logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[es], **trainer_kwargs)
    trainer.fit(Scripted(), data, data)
    return trainer


# case: (EarlyStopping kwargs, Trainer kwargs, what Lightning 2.6 ended with)
CASES = {
    "p3": ({}, {}, {"best": 0.9, "epoch": 5, "reason": 3, "step": 10, "stopped": 4, "wait": 3}),
    "p1": (dict(patience=1), {}, {"best": 0.9, "epoch": 3, "reason": 3, "step": 6, "stopped": 2, "wait": 1}),
    "delta": (dict(patience=2, min_delta=0.05), {}, {"best": 0.9, "epoch": 4, "reason": 3, "step": 8, "stopped": 3, "wait": 2}),
    "max": (dict(mode="max", patience=2), {}, {"best": 1.0, "epoch": 3, "reason": 3, "step": 6, "stopped": 2, "wait": 2}),
    "min_epochs": (dict(patience=1), dict(min_epochs=5), {"best": 0.9, "epoch": 5, "reason": 3, "step": 10, "stopped": 4, "wait": 3}),
    "min_steps": (dict(patience=1), dict(min_steps=12), {"best": 0.9, "epoch": 6, "reason": 3, "step": 12, "stopped": 5, "wait": 4}),
    "stop_thr": (dict(stopping_threshold=0.92, patience=100), {}, {"best": 1.0, "epoch": 2, "reason": 1, "step": 4, "stopped": 1, "wait": 0}),
    "div_thr": (dict(divergence_threshold=0.96, patience=100), {}, {"best": float("inf"), "epoch": 1, "reason": 2, "step": 2, "stopped": 0, "wait": 0}),
    "nan": (dict(patience=100), {}, {"best": 0.9, "epoch": 11, "reason": 4, "step": 22, "stopped": 10, "wait": 8}),
    "nan_nocheck": (dict(patience=100, check_finite=False), {}, {"best": 0.9, "epoch": 12, "reason": 0, "step": 24, "stopped": 0, "wait": 10}),
    "every2": (dict(patience=1), dict(check_val_every_n_epoch=2), {"best": 0.9, "epoch": 4, "reason": 3, "step": 8, "stopped": 3, "wait": 1}),
    "vci": (dict(patience=2), dict(val_check_interval=1), {"best": 0.9, "epoch": 4, "reason": 3, "step": 8, "stopped": 3, "wait": 2}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stops_where_lightning_stops(case):
    kwargs, trainer_kwargs, expected = CASES[case]
    es = EarlyStopping(monitor="val_loss", **kwargs)
    trainer = _fit(es, **trainer_kwargs)
    got = dict(epoch=trainer.current_epoch, stopped=es.stopped_epoch, wait=es.wait_count,
               best=round(float(es.best_score), 4), reason=es.stopping_reason.value, step=trainer.global_step)
    assert got == expected
    assert (es.stopping_reason_message is not None) == (expected["reason"] != 0)


def test_missing_metric_strict_and_not_strict():
    # Lightning's wording and type (RuntimeError) first, then fulmen's hint
    with pytest.raises(RuntimeError, match=r"^Early stopping conditioned on metric `nope` which is not available\. Pass "
                       r"in or modify your `EarlyStopping` callback to use any of the following: `val_loss`.*strict=False"
                       ) as err:
        _fit(EarlyStopping(monitor="nope"))
    assert isinstance(err.value, MisconfigurationException)
    es = EarlyStopping(monitor="nope", strict=False)
    assert _fit(es).current_epoch == len(VAL) and es.stopping_reason == EarlyStoppingReason.NOT_STOPPED


def test_check_on_train_epoch_end_uses_training_metrics():
    class TrainMetric(Scripted):
        def training_step(self, batch, batch_idx):
            self.log("train_metric", torch.tensor(1.0))  # never improves after the first epoch
            return super().training_step(batch, batch_idx)

    es = EarlyStopping(monitor="train_metric", patience=2, check_on_train_epoch_end=True)
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=[es], limit_val_batches=0)
    trainer.fit(TrainMetric(), data)
    assert trainer.current_epoch == 3 and es.stopped_epoch == 2


def test_state_is_checkpointed(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=5)
    trainer = _fit(es, max_steps=6)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    state = load_checkpoint(tmp_path / "a.ckpt")["callbacks"]["EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"]
    fresh = EarlyStopping(monitor="val_loss", patience=5)
    fresh.load_state_dict(state)
    assert (fresh.wait_count, float(fresh.best_score), fresh.patience) == (1, pytest.approx(0.9), 5)


def test_invalid_mode():
    with pytest.raises(MisconfigurationException, match="^`mode` can be min, max, got lowest.*mode='min' or mode='max'"):
        EarlyStopping(monitor="x", mode="lowest")


def test_a_stop_asked_by_a_mid_epoch_validation_ends_the_epoch_there():
    """val_check_interval=0.25: the second validation is worse, so patience=1 stops the run right after it,
    at batch 4 of 8, with no further batch and no further validation (Lightning 2.6: batches 0-3, 2
    validations, global_step 4, current_epoch 1). fulmen trained one more batch and validated again."""

    class Worse(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(2, 1)
            self.trained, self.validations = [], 0

        def training_step(self, batch, batch_idx):
            self.trained.append(batch_idx)
            return self.l(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float(self.validations))  # 0, then 1, 2, ...: worse every time

        def on_validation_epoch_end(self):
            self.validations += not self.trainer.sanity_checking

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = TensorDataset(torch.randn(16, 2))
    model = Worse()
    trainer = pl.Trainer(max_epochs=3, val_check_interval=0.25, callbacks=[EarlyStopping("val_loss", patience=1)],
                         logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=8))
    assert (model.trained, model.validations, trainer.global_step, trainer.current_epoch) == ([0, 1, 2, 3], 2, 4, 1)
