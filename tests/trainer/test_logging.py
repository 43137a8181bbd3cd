"""self.log: reductions, keys, torchmetrics, errors, and no device sync per step.

Expected values are Lightning 2.6's for the same calls (observed with pytorch_lightning).
"""

import csv
import glob
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.errors import MisconfigurationException


def loader(n=10, batch_size=3):  # batches of 3, 3, 3, 1
    return DataLoader(TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1)), batch_size=batch_size)


class LogModel(pl.LightningModule):
    """Calls ``log_fn(self, batch, batch_idx)`` in training_step (or in ``hook``)."""

    def __init__(self, log_fn=None, val_fn=None):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.log_fn, self.val_fn = log_fn, val_fn

    def training_step(self, batch, batch_idx):
        if self.log_fn:
            self.log_fn(self, batch, batch_idx)
        return self.layer(batch[0]).sum() * 0.0

    def validation_step(self, batch, batch_idx):
        if self.val_fn:
            self.val_fn(self, batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(model, val=False, **kw):
    kw = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
          "logger": False, **kw}
    trainer = pl.Trainer(**kw)
    trainer.fit(model, loader(), loader() if val else None)
    return trainer


def floats(d):
    return {k: round(float(v), 4) for k, v in d.items()}


# (self.log keyword arguments, expected callback_metrics after one epoch). The value logged at batch i
# is i (batch sizes 3, 3, 3, 1), so the weighted mean is (0*3 + 1*3 + 2*3 + 3*1) / 10 = 1.2.
AGGREGATION = [
    ({}, {"x": 3.0}),
    ({"on_epoch": True}, {"x": 1.2, "x_step": 3.0, "x_epoch": 1.2}),
    ({"on_step": False, "on_epoch": True}, {"x": 1.2}),
    ({"on_step": False, "on_epoch": True, "reduce_fx": "sum"}, {"x": 6.0}),
    ({"on_step": False, "on_epoch": True, "reduce_fx": "max"}, {"x": 3.0}),
    ({"on_step": False, "on_epoch": True, "reduce_fx": "min"}, {"x": 0.0}),
    ({"on_step": False, "on_epoch": True, "reduce_fx": torch.sum}, {"x": 6.0}),
    ({"on_step": False, "on_epoch": True, "reduce_fx": "avg"}, {"x": 1.2}),
    ({"on_step": False, "on_epoch": True, "batch_size": 1}, {"x": 1.5}),  # plain mean when every batch counts 1
    ({"on_step": False, "on_epoch": True, "reduce_fx": torch.median}, {"x": 1.0}),  # fulmen: any callable
]


@pytest.mark.parametrize("kwargs, expected", AGGREGATION)
def test_training_reductions(kwargs, expected):
    trainer = fit(LogModel(lambda m, b, i: m.log("x", float(i), **kwargs)))
    assert floats(trainer.callback_metrics) == expected


def test_value_kinds_and_defaults_in_validation():
    def val(m, batch, i):
        m.log("num", i)  # int -> float tensor
        m.log("t0", torch.tensor(float(i)))
        m.log("t1", torch.tensor([float(i)]))  # one element, any shape
        m.log_dict({"d1": float(i), "d2": 2.0 * i}, prog_bar=True)

    trainer = fit(LogModel(val_fn=val), val=True, num_sanity_val_steps=0)
    assert floats(trainer.callback_metrics) == {"num": 1.2, "t0": 1.2, "t1": 1.2, "d1": 1.2, "d2": 2.4}
    assert trainer.progress_bar_metrics == pytest.approx({"d1": 1.2, "d2": 2.4})
    assert all(isinstance(v, float) for v in trainer.progress_bar_metrics.values())
    assert all(v.dtype == torch.float32 for v in trainer.callback_metrics.values())


def test_step_and_epoch_rows_in_metrics_csv(tmp_path):
    def log(m, b, i):
        m.log("loss", float(i), on_step=True, on_epoch=True)

    trainer = fit(LogModel(log), max_epochs=2, log_every_n_steps=2, logger=pl.loggers.CSVLogger(tmp_path))
    [path] = glob.glob(str(tmp_path / "lightning_logs" / "version_0" / "metrics.csv"))
    rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(open(path))]
    # Lightning 2.6 writes exactly these rows for this run
    assert rows == [
        {"epoch": "0", "loss_step": "1.0", "step": "1"},
        {"epoch": "0", "loss_step": "3.0", "step": "3"},
        {"epoch": "0", "loss_epoch": "1.2000000476837158", "step": "3"},
        {"epoch": "1", "loss_step": "1.0", "step": "5"},
        {"epoch": "1", "loss_step": "3.0", "step": "7"},
        {"epoch": "1", "loss_epoch": "1.2000000476837158", "step": "7"},
    ]
    assert floats(trainer.logged_metrics) == {"loss_step": 3.0, "loss_epoch": 1.2}  # no "epoch" key here


def test_torchmetrics_compute_and_reset_per_epoch():
    torchmetrics = pytest.importorskip("torchmetrics")

    class Counting(torchmetrics.SumMetric):
        computes = resets = 0

        def compute(self):
            Counting.computes += 1
            return super().compute()

        def reset(self):
            Counting.resets += 1
            super().reset()

    class M(LogModel):
        def __init__(self):
            super().__init__()
            self.total = Counting()

        def training_step(self, batch, batch_idx):
            self.total(float(batch_idx))  # forward: updates and caches the batch value
            self.log("total", self.total, on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

    model = M()
    epochs = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epochs.append(floats(trainer.callback_metrics))

    trainer = fit(model, max_epochs=2, callbacks=[Watch()])
    # each epoch's sum is 0+1+2+3, so the state was reset between the epochs
    assert epochs == [{"total": 6.0, "total_step": 3.0, "total_epoch": 6.0}] * 2
    assert Counting.resets >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() right after a reset
        assert float(model.total.compute()) == 0.0  # reset after the last epoch too
    assert floats(trainer.callback_metrics)["total_epoch"] == 6.0


def test_manual_optimization_can_log_after_backward_and_step():
    class Manual(LogModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = self.layer(batch[0]).sum()
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
            self.log("after_step", float(batch_idx), prog_bar=True)

    trainer = fit(Manual())
    assert floats(trainer.callback_metrics) == {"after_step": 3.0}


def test_multiple_val_dataloaders_get_suffixes():
    class M(LogModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("v", float(dataloader_idx * 10 + batch_idx))

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(M(), loader(), [loader(), loader(4, 2)])
    assert floats(trainer.callback_metrics) == {"v/dataloader_idx_0": 1.2, "v/dataloader_idx_1": 10.5}
    results = trainer.validate(M(), [loader(), loader(4, 2)], verbose=False)
    assert [floats(r) for r in results] == [{"v/dataloader_idx_0": 1.2}, {"v/dataloader_idx_1": 10.5}]


@pytest.mark.parametrize("log_fn, match", [
    (lambda m, b, i: m.log("x", torch.ones(2)), "shape \\(2,\\)"),
    (lambda m, b, i: m.log("x", "high"), "got a str"),
    (lambda m, b, i: m.log("x", {"a": 1.0}), "log_dict"),
    (lambda m, b, i: m.log("x", 1.0, prog_bar=i == 1), "twice in `training_step` with different arguments"),
    (lambda m, b, i: m.log("x", 1.0, reduce_fx="median"), "reduce_fx='median'"),
    (lambda m, b, i: m.log("x", 1.0, on_step=False, on_epoch=False), "would record nothing"),
    (lambda m, b, i: m.log("x/dataloader_idx_0", 1.0), "add_dataloader_idx=False"),
])
def test_misuse_in_training_step_is_a_clear_error(log_fn, match):
    with pytest.raises(MisconfigurationException, match=match):
        fit(LogModel(log_fn))


def test_logging_in_hooks_that_do_not_allow_it():
    class InFitStart(LogModel):
        def on_fit_start(self):
            self.log("x", 1.0)

    with pytest.raises(MisconfigurationException, match="cannot be called in `on_fit_start`"):
        fit(InFitStart())

    class StepInEpochHook(LogModel):
        def on_train_epoch_end(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(MisconfigurationException, match="once per epoch"):
        fit(StepInEpochHook())

    class InPredict(LogModel):
        def predict_step(self, batch, batch_idx):
            self.log("x", 1.0)

    trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match="outside a hook"):
        trainer.predict(InPredict(), loader())


def test_batch_size_that_cannot_be_inferred():
    class NoTensors(LogModel):
        def validation_step(self, batch, batch_idx):
            self.log("v", 1.0)

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(MisconfigurationException, match="batch_size="):
        trainer.validate(NoTensors(), DataLoader(["a", "b"], batch_size=1))


def test_logger_true_without_logger_warns():
    with pytest.warns(UserWarning, match="no logger"):
        fit(LogModel(lambda m, b, i: m.log("x", 1.0, logger=True)))


def test_no_device_sync_per_step(monkeypatch):
    """Logging every step converts nothing to Python numbers until the loggers are due."""
    calls = []
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counting_item(self):
        calls.append(1)
        return item(self)

    def counting_tolist(self):
        calls.append(1)
        return tolist(self)

    def log(m, b, i):
        m.log("loss", torch.tensor(float(i)), prog_bar=True)
        m.log("acc", torch.tensor(1.0), on_epoch=True)

    class Count(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.before = len(calls)  # (the DataLoader draws its seed with .item())

        def on_train_epoch_end(self, trainer, pl_module):
            self.during_batches = len(calls) - self.before

    count = Count()
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    data = DataLoader(TensorDataset(torch.zeros(120, 1)), batch_size=1)
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, logger=pl.loggers.CSVLogger("logs"), log_every_n_steps=50,
                         callbacks=[count])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(LogModel(log), data)
    # 120 steps: the loggers got step values twice (steps 50 and 100), two tensors each time, as one transfer
    assert count.during_batches == 2


def test_pl_module_log_from_callback_hooks_follows_lightnings_rules():
    """What Lightning 2.6 does with the same callback (values recorded from it): which hooks may log with
    which on_step/on_epoch, and where the values end up."""
    errors = {}
    rows = []

    class Rows(pl.loggers.logger.Logger):
        name, version = "rows", 0

        def log_metrics(self, metrics, step=None):
            rows.append(dict(metrics))

        def log_hyperparams(self, *args, **kwargs):
            pass

    def logs(hook):
        def fn(self, trainer, pl_module, *args, **kwargs):
            if trainer.sanity_checking:
                return
            value = float(trainer.global_step + 1)
            for suffix, kw in (("d", {}), ("se", {"on_step": True, "on_epoch": True}),
                               ("s", {"on_step": True, "on_epoch": False})):
                try:
                    pl_module.log(f"{hook}_{suffix}", value, prog_bar=suffix == "d", **kw)
                except MisconfigurationException:
                    errors.setdefault(hook, set()).add(suffix)
        return fn

    hooks = ["setup", "on_fit_start", "on_train_start", "on_train_batch_end", "on_train_epoch_end",
             "on_validation_batch_end", "on_validation_epoch_end", "on_validation_end", "on_test_epoch_end"]
    CB = type("CB", (pl.Callback,), {h: logs(h) for h in hooks})
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.l(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def test_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = pl.Trainer(max_epochs=2, logger=Rows(), callbacks=[CB()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, accelerator="cpu")
    trainer.fit(M(), loader, loader)
    as_floats = lambda d: {k: round(float(v), 4) for k, v in d.items() if not k.startswith(("epoch", "step"))}  # noqa: E731
    assert errors == {"setup": {"d", "se", "s"}, "on_fit_start": {"d", "se", "s"}, "on_train_start": {"se", "s"},
                      "on_train_epoch_end": {"se", "s"}, "on_validation_epoch_end": {"se", "s"},
                      "on_validation_end": {"d", "se", "s"}}
    assert as_floats(trainer.callback_metrics) == {
        "on_train_start_d": 1.0, "on_train_batch_end_d": 9.0, "on_train_batch_end_s": 9.0,
        "on_train_batch_end_se": 7.5, "on_train_batch_end_se_epoch": 7.5, "on_train_batch_end_se_step": 9.0,
        "on_train_epoch_end_d": 9.0, "on_validation_batch_end_d": 9.0, "on_validation_batch_end_se": 9.0,
        "on_validation_batch_end_se_epoch": 9.0, "on_validation_epoch_end_d": 9.0}
    assert trainer.progress_bar_metrics == {"on_train_start_d": 1.0, "on_train_batch_end_d": 9.0,
                                            "on_train_epoch_end_d": 9.0, "on_validation_batch_end_d": 9.0,
                                            "on_validation_epoch_end_d": 9.0}
    logged = {k for row in rows for k in row}
    assert {"on_train_batch_end_se_step", "on_train_batch_end_se_epoch", "on_validation_batch_end_s",
            "on_validation_batch_end_se_step", "on_validation_epoch_end_d", "on_train_start_d"} <= logged
    assert as_floats(trainer.test(M(), loader, verbose=False)[0]) == {"on_test_epoch_end_d": 9.0}
    assert errors["on_test_epoch_end"] == {"se", "s"}
