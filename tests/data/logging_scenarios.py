"""Logging scenarios run identically under PyTorch Lightning and fulmen.

``run(pl, scenario, root)`` returns what ``callback_metrics``, ``logged_metrics`` and
``progress_bar_metrics`` held at each hook, the ``validate``/``test`` results and the metrics.csv rows.
``python tests/data/logging_scenarios.py`` (with pytorch_lightning installed) records Lightning's
answers into ``logging_lightning.json``, which tests/trainer/test_logging_views.py compares against.
"""
import json
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SCENARIOS = ("basic", "multi", "accum", "tm", "sanity")


def run(pl, scen, d):
    OUT = []

    def r(v):
        if isinstance(v, torch.Tensor): v = v.item()
        return round(float(v), 4)
    def snap(t):
        return {"cb": {k: r(v) for k, v in sorted(t.callback_metrics.items())},
                "log": {k: r(v) for k, v in sorted(t.logged_metrics.items())},
                "bar": {k: r(v) for k, v in sorted(t.progress_bar_metrics.items())}}
    class CB(pl.Callback):
        def on_train_batch_end(self, t, m, o, b, i): OUT.append(("train_batch_end", t.current_epoch, i, snap(t)))
        def on_train_epoch_end(self, t, m): OUT.append(("train_epoch_end", t.current_epoch, snap(t)))
        def on_validation_batch_end(self, t, m, o, b, i, dl=0): OUT.append(("val_batch_end", t.current_epoch, i, dl, snap(t)))
        def on_validation_epoch_end(self, t, m): OUT.append(("val_epoch_end", t.current_epoch, snap(t)))
        def on_validation_end(self, t, m): OUT.append(("val_end", t.current_epoch, snap(t)))
        def on_test_epoch_end(self, t, m): OUT.append(("test_epoch_end", snap(t)))
        def on_test_end(self, t, m): OUT.append(("test_end", snap(t)))
        def on_train_end(self, t, m): OUT.append(("train_end", snap(t)))
        def on_fit_end(self, t, m): OUT.append(("fit_end", snap(t)))
        def on_sanity_check_end(self, t, m): OUT.append(("sanity_end", snap(t)))
        def on_train_start(self, t, m): OUT.append(("train_start", snap(t)))
        def on_train_epoch_start(self, t, m): OUT.append(("train_epoch_start", t.current_epoch, snap(t)))
        def on_validation_start(self, t, m): OUT.append(("val_start", t.current_epoch, snap(t)))

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__(); self.l = nn.Linear(2, 1)
            if scen == "tm":
                import torchmetrics
                self.tacc = torchmetrics.MeanMetric(); self.vacc = torchmetrics.SumMetric(); self.tsum = torchmetrics.MaxMetric()
        def training_step(self, b, i):
            loss = (self.l(b[0]) * 0).sum() + 1.0 + i
            s = scen
            if s in ("basic", "multi"):
                self.log("a", float(i) + self.current_epoch * 10, prog_bar=True)
                self.log("b", float(i), on_step=True, on_epoch=True, prog_bar=True)
                self.log("c", float(i), on_step=False, on_epoch=True, reduce_fx="sum")
                self.log("d", float(i), on_epoch=True, reduce_fx="max", logger=False)
                self.log("e", torch.tensor(float(i)), on_step=False, on_epoch=True, reduce_fx="min", prog_bar=True)
            if s == "tm":
                self.tacc(float(i) * 2)
                self.log("tacc", self.tacc, on_step=True, on_epoch=True, prog_bar=True)
                self.tsum.update(float(i))
                self.log("tmax", self.tsum)
            if s == "accum":
                self.log("a", float(i), on_step=True, on_epoch=True)
            return loss
        def on_train_epoch_end(self):
            if scen == "basic":
                self.log("te", float(self.current_epoch) + 0.5, prog_bar=True)
        def validation_step(self, b, i, dataloader_idx=0):
            dl = dataloader_idx
            if scen in ("basic", "accum"):
                self.log("v", float(i))
                self.log("w", float(i) * 2, on_step=True, prog_bar=True)
            if scen == "sanity":
                self.log("sv", float(i), prog_bar=True, on_step=True)
            if scen == "tm":
                self.vacc(float(i) + 1)
                self.log("vacc", self.vacc, prog_bar=True)
            if scen == "multi":
                self.log("v", float(i) + 100 * dl)
                if dl == 0: self.log("shared", float(i), add_dataloader_idx=False, on_step=True)
        def on_train_start(self):
            if scen == "sanity": self.log("ts0", 5.0, prog_bar=True)
        def on_validation_start(self):
            if scen == "sanity": self.log("vs0", 6.0, prog_bar=True)
        def on_validation_epoch_end(self):
            if scen == "basic":
                self.log("ve", 7.0 + self.current_epoch, prog_bar=True)
        def test_step(self, b, i, dataloader_idx=0):
            self.log("t", float(i))
            self.log("ts", float(i), on_step=True, reduce_fx="sum")
        def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.0)
    kw = dict(max_epochs=2, limit_train_batches=4, limit_val_batches=3, num_sanity_val_steps=0, log_every_n_steps=2)
    if scen == "sanity": kw.update(num_sanity_val_steps=2, max_epochs=1)
    if scen == "accum": kw.update(accumulate_grad_batches=2, log_every_n_steps=1, max_epochs=1)
    t = pl.Trainer(callbacks=[CB()], enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   logger=pl.loggers.CSVLogger(d), **kw)
    ds = TensorDataset(torch.randn(10, 2))  # batch size 3 -> 3,3,3,1
    dl = DataLoader(ds, batch_size=3)
    val = [dl, DataLoader(ds, batch_size=2)] if scen == "multi" else dl
    t.fit(M(), dl, val)
    OUT.append(("after_fit", snap(t)))
    res = t.test(M(), dl, verbose=False)
    OUT.append(("test_ret", [{k: r(v) for k, v in x.items()} for x in res]))
    OUT.append(("after_test", snap(t)))
    if scen in ("sanity", "tm"):
        res = t.validate(M(), dl, verbose=False)
        OUT.append(("val_ret", [{k: r(v) for k, v in x.items()} for x in res]))
        OUT.append(("after_validate", snap(t)))
    for root, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            if f == "metrics.csv":
                OUT.append(("csv", os.path.relpath(os.path.join(root, f), d), open(os.path.join(root, f)).read().splitlines()))
    return OUT


if __name__ == "__main__":
    import tempfile

    import pytorch_lightning

    recorded = {s: run(pytorch_lightning, s, tempfile.mkdtemp()) for s in SCENARIOS}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "logging_lightning.json"), "w") as f:
        json.dump(recorded, f, indent=0)
