"""Each of the other Lightning callbacks has its effect: values logged, weights changed, files written."""

import os
import sys
import types
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import (BackboneFinetuning, BasePredictionWriter, Callback, DeviceStatsMonitor,
                              EarlyStopping, EMAWeightAveraging, GradientAccumulationScheduler, LambdaCallback,
                              LearningRateMonitor, ModelCheckpoint, ModelPruning, OnExceptionCheckpoint,
                              StochasticWeightAveraging, ThroughputMonitor, Timer)
from fulmen.checkpoint import load_checkpoint
from fulmen.errors import MisconfigurationException, MissingDependencyError
from fulmen.loggers import Logger


class Recorder(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    name, version = "rec", 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


class Two(pl.LightningModule):
    def __init__(self, kind="plain"):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1)
        self.kind = kind

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        if self.kind == "sched":
            opt = torch.optim.Adam(self.parameters(), lr=0.1, weight_decay=0.01)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}
        if self.kind == "stepsched":
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "my_lr"}}
        if self.kind == "groups":
            return torch.optim.SGD([{"params": self.backbone.parameters()}, {"params": self.head.parameters(), "lr": 0.5}],
                                   lr=0.1, momentum=0.9)
        if self.kind == "head_only":
            return torch.optim.SGD(self.head.parameters(), lr=0.1)
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n=4, bs=2):
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=bs)


def _trainer(callbacks, epochs=2, **kw):
    kw = {"logger": False, "enable_checkpointing": False, **kw}
    return pl.Trainer(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kw)


# LearningRateMonitor: (module kind, monitor kwargs, what pytorch-lightning 2.6 logged: [(step, {name: value})])
LR_CASES = [
    ("sched", {}, [(0, {"lr-Adam": 0.1}), (2, {"lr-Adam": 0.05})]),
    ("sched", dict(logging_interval="step"), [(0, {"lr-Adam": 0.1}), (1, {"lr-Adam": 0.1}), (2, {"lr-Adam": 0.05}),
                                              (3, {"lr-Adam": 0.05})]),
    ("stepsched", dict(log_momentum=True), [(s, {"my_lr": 0.1 * 0.5 ** s, "my_lr-momentum": 0.9}) for s in range(4)]),
    ("stepsched", dict(logging_interval="epoch"), [(0, {"my_lr": 0.1}), (2, {"my_lr": 0.025})]),
]


@pytest.mark.parametrize("kind, kwargs, expected", LR_CASES)
def test_lr_monitor_logs_what_lightning_logs(kind, kwargs, expected):
    rec = Recorder()
    _trainer([LearningRateMonitor(**kwargs)], logger=rec, log_every_n_steps=1).fit(Two(kind), _loader())
    got = [(s, {k: pytest.approx(v) for k, v in m.items()}) for s, m in rec.rows if any(k.startswith(("lr", "my")) for k in m)]
    assert got == expected


def test_lr_monitor_param_groups_and_errors():
    rec = Recorder()
    _trainer([LearningRateMonitor(log_momentum=True, log_weight_decay=True)], logger=rec, epochs=1,
             log_every_n_steps=1).fit(Two("groups"), _loader())
    assert rec.rows[0] == (0, {"lr-SGD/pg1": 0.1, "lr-SGD/pg1-momentum": 0.9, "lr-SGD/pg1-weight_decay": 0.0,
                               "lr-SGD/pg2": 0.5, "lr-SGD/pg2-momentum": 0.9, "lr-SGD/pg2-weight_decay": 0.0})
    with pytest.raises(MisconfigurationException, match="logger=False"):
        _trainer([LearningRateMonitor()]).fit(Two(), _loader())


def test_lr_monitor_keeps_the_last_momentum_and_weight_decay_values():
    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    assert monitor.last_momentum_values == {} and monitor.last_weight_decay_values == {}
    _trainer([monitor], logger=Recorder(), epochs=1, log_every_n_steps=1).fit(Two("sched"), _loader())
    # as Lightning 2.6: Adam's momentum is betas[0]; keys are the logged names
    assert monitor.last_momentum_values == {"lr-Adam-momentum": 0.9}
    assert monitor.last_weight_decay_values == {"lr-Adam-weight_decay": 0.01}
    plain = LearningRateMonitor()
    _trainer([plain], logger=Recorder(), epochs=1).fit(Two("sched"), _loader())
    assert plain.last_momentum_values == {"lr-Adam-momentum": None}  # named at train start, never logged


def test_timer_stops_and_measures(monkeypatch):
    import fulmen.callbacks.timer as timer_mod

    clock = iter(range(0, 10_000))  # one second per call
    monkeypatch.setattr(timer_mod.time, "monotonic", lambda: float(next(clock)))
    timer = Timer(duration=timedelta(seconds=3), verbose=False)
    trainer = _trainer([timer], epochs=10)
    trainer.fit(Two(), _loader())
    assert trainer.global_step == 3 and trainer.current_epoch == 2  # stopped in epoch 1, after its 1st batch
    assert timer.time_elapsed("train") >= 3 and timer.time_remaining() <= 0
    state = timer.state_dict()
    resumed = Timer(duration="00:00:00:03")
    resumed.load_state_dict(state)
    assert resumed.time_elapsed("train") == state["time_elapsed"]["train"]
    with pytest.raises(MisconfigurationException, match="DD:HH:MM:SS"):
        Timer(duration="3 hours")


def test_lambda_callback_calls_functions():
    seen = []
    cb = LambdaCallback(on_train_epoch_end=lambda t, m: seen.append(("epoch", t.current_epoch)),
                        setup=lambda t, m, stage: seen.append(("setup", stage)))
    _trainer([cb]).fit(Two(), _loader())
    assert seen == [("setup", "fit"), ("epoch", 0), ("epoch", 1)]
    with pytest.raises(MisconfigurationException, match="on_train_epoch_ends"):
        LambdaCallback(on_train_epoch_ends=print)


def test_gradient_accumulation_schedule_changes_steps():
    trainer = _trainer([GradientAccumulationScheduler({1: 2, 2: 4})], epochs=3)
    trainer.fit(Two(), _loader(8))  # 4 batches per epoch: 4 + 2 + 1 optimizer steps
    assert trainer.global_step == 7 and trainer.accumulate_grad_batches == 4
    with pytest.raises(MisconfigurationException, match="keep only the scheduler"):
        _trainer([GradientAccumulationScheduler({1: 2})], accumulate_grad_batches=2).fit(Two(), _loader())
    with pytest.raises(MisconfigurationException, match=">= 1"):
        GradientAccumulationScheduler({1: 0})


def test_backbone_finetuning_unfreezes_with_its_own_rate(tmp_path):
    ft = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 2.0)
    model = Two("head_only")
    start = model.backbone.weight.detach().clone()
    seen = []
    rec = LambdaCallback(on_train_epoch_end=lambda t, m: seen.append(
        (m.backbone.weight.requires_grad, [g["lr"] for g in t.optimizers[0].param_groups])))
    trainer = _trainer([ft, rec, ModelCheckpoint(dirpath=tmp_path, save_last=True)], epochs=3, enable_checkpointing=None)
    trainer.fit(model, _loader())
    assert seen == [(False, [0.1]), (True, [0.1, pytest.approx(0.01)]), (True, [0.1, pytest.approx(0.02)])]
    assert not torch.equal(start, model.backbone.weight)
    # resuming rebuilds the backbone's parameter group before the optimizer state is loaded into it
    ft2 = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 2.0)
    trainer2 = _trainer([ft2], epochs=4)
    trainer2.fit(Two("head_only"), _loader(), ckpt_path=os.path.join(tmp_path, "last.ckpt"))
    assert [g["lr"] for g in trainer2.optimizers[0].param_groups] == [0.1, pytest.approx(0.04)]
    with pytest.raises(MisconfigurationException, match="backbone"):
        class NoBackbone(Two):
            def __init__(self):
                super().__init__()
                del self.backbone
                self.net = torch.nn.Linear(2, 1)

            def forward(self, x):
                return self.net(x)

        _trainer([BackboneFinetuning()]).fit(NoBackbone(), _loader())


def test_freeze_before_training_runs_before_configure_optimizers(recwarn):
    """The frozen part is not in the optimizer from the start (the published pattern filters on requires_grad)."""

    class Filtered(Two):
        def configure_optimizers(self):
            self.trainable_at_configure = [n for n, p in self.named_parameters() if p.requires_grad]
            return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)

    ft = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    model = Filtered()
    start = model.backbone.weight.detach().clone()
    after_epoch0 = []
    rec = LambdaCallback(on_train_epoch_end=lambda t, m: after_epoch0.append(m.backbone.weight.detach().clone()))
    _trainer([ft, rec], epochs=2).fit(model, _loader())
    assert model.trainable_at_configure == ["head.weight", "head.bias"]
    assert torch.equal(after_epoch0[0], start)  # epoch 0 left the backbone alone
    assert not torch.equal(after_epoch0[1], start)  # unfrozen and added at epoch 1
    assert not [w for w in recwarn if "already in the optimizer" in str(w.message)]


def test_swa_ends_with_the_average_of_epoch_start_weights():
    snapshots = []
    rec = LambdaCallback(on_train_epoch_start=lambda t, m: snapshots.append(
        [p.detach().clone() for p in m.parameters()]))
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    model = Two()
    trainer = _trainer([rec, swa], epochs=4)
    trainer.fit(model, _loader())
    # averaging from epoch index 1 (the 2nd epoch) to the last: snapshots taken at the starts of epochs 1, 2, 3
    expected = [torch.stack([s[i] for s in snapshots[1:4]]).mean(0) for i in range(len(snapshots[0]))]
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "SWALR"
    assert trainer.optimizers[0].param_groups[0]["lr"] < 0.1


def test_ema_weight_averaging_matches_manual_ema(tmp_path):
    decay = 0.5
    live = []
    rec = LambdaCallback(on_train_batch_end=lambda t, m, o, b, i: live.append(
        [p.detach().clone() for p in m.parameters()]))
    model = Two()
    ema = EMAWeightAveraging(decay=decay)
    trainer = _trainer([rec, ema, ModelCheckpoint(dirpath=tmp_path)], epochs=1, enable_checkpointing=None)
    trainer.fit(model, _loader(6))
    expected = live[0]
    for snap in live[1:]:
        expected = [decay * e + (1 - decay) * s for e, s in zip(expected, snap)]
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)
    ckpt = load_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert torch.allclose(ckpt["state_dict"]["head.weight"], expected[2], atol=1e-6)  # the average is saved
    assert torch.equal(ckpt["current_model_state"]["head.weight"], live[-1][2])  # and the live weights beside it


def test_on_exception_checkpoint_written_and_resumable(tmp_path):
    class Boom(Two):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    trainer = _trainer([OnExceptionCheckpoint(tmp_path)], epochs=3)
    with pytest.raises(SystemExit) as info:  # Ctrl-C ends fit with SystemExit(1), as in Lightning
        trainer.fit(Boom(), _loader())
    assert info.value.code == 1 and trainer.interrupted
    path = tmp_path / "on_exception.ckpt"
    assert load_checkpoint(path)["global_step"] == 3
    trainer = _trainer([OnExceptionCheckpoint(tmp_path)], epochs=3)
    trainer.fit(Two(), _loader(), ckpt_path=path)
    assert trainer.global_step == 6 and not path.exists()  # a clean run removes the stale file


def test_throughput_monitor_logs_rates():
    rec = Recorder()
    tm = ThroughputMonitor(batch_size_fn=lambda b: b[0].size(0), length_fn=lambda b: b[0].numel(), window_size=2)
    _trainer([tm], epochs=1, logger=rec, log_every_n_steps=1).fit(Two(), _loader(6))
    steps = [s for s, _ in rec.rows]
    assert steps == [0, 1, 2]
    first, last = rec.rows[0][1], rec.rows[-1][1]
    assert first == {"train/time": pytest.approx(first["train/time"]), "train/batches": 1, "train/samples": 2,
                     "train/items": 4}
    assert last["train/batches"] == 3 and last["train/samples"] == 6 and last["train/samples_per_sec"] > 0
    assert last["train/items_per_sec"] == pytest.approx(2 * last["train/samples_per_sec"])


def test_device_stats_monitor(monkeypatch):
    with pytest.raises(MissingDependencyError, match="psutil"):
        monkeypatch.setitem(sys.modules, "psutil", None)
        _trainer([DeviceStatsMonitor()], logger=Recorder()).fit(Two(), _loader())
    fake = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(percent=40.0), cpu_percent=lambda: 12.5,
                                 swap_memory=lambda: types.SimpleNamespace(percent=1.0))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    rec = Recorder()
    _trainer([DeviceStatsMonitor()], logger=rec, epochs=1, log_every_n_steps=1).fit(Two(), _loader())
    keys = {k for _, m in rec.rows for k in m}
    assert {"DeviceStatsMonitor.on_train_batch_start/cpu_percent", "DeviceStatsMonitor.on_train_batch_end/cpu_vm_percent",
            "DeviceStatsMonitor.on_train_batch_end/cpu_swap_percent"} <= keys
    with pytest.raises(MisconfigurationException, match="logger=False"):
        _trainer([DeviceStatsMonitor()]).fit(Two(), _loader())


def test_prediction_writer_gets_batch_indices(tmp_path):
    class Writer(BasePredictionWriter):
        def __init__(self, interval):
            super().__init__(interval)
            self.batches, self.epoch = [], None

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            self.batches.append((batch_indices, prediction.shape[0], dataloader_idx))

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
            self.epoch = (len(predictions), batch_indices)

    ds = TensorDataset(torch.randn(5, 2))
    shuffled = DataLoader(ds, batch_size=2, shuffle=True)
    w = Writer("batch_and_epoch")
    _trainer([w]).predict(Two(), shuffled, return_predictions=False)
    order = [i for idx, _, _ in w.batches for i in idx]
    assert sorted(order) == [0, 1, 2, 3, 4] and [n for _, n, _ in w.batches] == [2, 2, 1]
    assert w.epoch == (3, [[idx for idx, _, _ in w.batches]])
    assert type(shuffled.batch_sampler).__name__ == "BatchSampler"  # left as it was
    w = Writer("epoch")
    _trainer([w]).predict(Two(), [_loader(), _loader(2)])
    assert w.batches == [] and w.epoch == (2, [[[0, 1], [2, 3]], [[0, 1]]])
    with pytest.raises(MisconfigurationException, match="write_interval"):
        Writer("step")


def test_model_pruning_sparsity_lottery_and_permanent(tmp_path):
    model = Two()
    initial = model.head.weight.detach().clone()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(model.head, "weight"), (model.backbone, "weight")],
                           amount=0.5, use_global_unstructured=True)
    trainer = _trainer([pruning, ModelCheckpoint(dirpath=tmp_path)], epochs=1, enable_checkpointing=None)
    trainer.fit(model, _loader())
    weights = torch.cat([model.head.weight.flatten(), model.backbone.weight.flatten()])
    assert int((weights == 0).sum()) == 3  # half of the 6 weights
    kept = model.head.weight != 0
    assert torch.equal(model.head.weight[kept], initial[kept])  # lottery ticket: survivors back at their start
    assert not hasattr(model.head, "weight_mask")  # made permanent at the end
    ckpt = load_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert set(ckpt["state_dict"]) == set(Two().state_dict())  # loads into an unpruned model
    layerwise = ModelPruning("random_structured", pruning_dim=0, amount=0.5, use_global_unstructured=False,
                             parameter_names=["weight"], make_pruning_permanent=False,
                             use_lottery_ticket_hypothesis=False)
    model = Two()
    _trainer([layerwise], epochs=1).fit(model, _loader())
    assert int((model.backbone.weight.abs().sum(1) == 0).sum()) == 1 and hasattr(model.backbone, "weight_mask")
    with pytest.raises(MisconfigurationException, match="unstructured"):
        ModelPruning("ln_structured", pruning_norm=1, pruning_dim=0)


def test_configure_callbacks_replace_and_order():
    class Model(Two):
        def configure_callbacks(self):
            return [EarlyStopping("x", strict=False), ModelCheckpoint(monitor=None), LambdaCallback()]

    passed_es = EarlyStopping("y")
    trainer = _trainer([ModelCheckpoint(), passed_es, Timer()], epochs=1, enable_checkpointing=None)
    trainer.fit(Model(), _loader())
    kinds = [type(cb).__name__ for cb in trainer.callbacks]
    assert passed_es not in trainer.callbacks and kinds.count("ModelCheckpoint") == 1
    assert kinds[-1] == "ModelCheckpoint" and "Timer" in kinds and trainer.early_stopping_callback.monitor == "x"


def test_callback_hooks_state_and_exception():
    calls = []

    class Every(Callback):
        def __init__(self):
            self.count = 0

        def setup(self, trainer, pl_module, stage):
            calls.append(f"setup:{stage}")

        def teardown(self, trainer, pl_module, stage):
            calls.append(f"teardown:{stage}")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.count += 1

        def on_exception(self, trainer, pl_module, exception):
            calls.append(f"exception:{type(exception).__name__}")

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["every"] = self.count

    cb = Every()
    trainer = _trainer([cb], epochs=1)
    trainer.fit(Two(), _loader())
    assert calls == ["setup:fit", "teardown:fit"] and cb.count == 2

    class Bad(Two):
        def training_step(self, batch, batch_idx):
            raise ValueError("bad")

    with pytest.raises(ValueError):
        _trainer([cb]).fit(Bad(), _loader())
    assert calls[-1] == "exception:ValueError"


def test_fast_dev_run_writes_no_checkpoint_even_with_save_last(tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import fulmen as pl
    from fulmen.callbacks import ModelCheckpoint

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(fast_dev_run=2, enable_progress_bar=False,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)])
    trainer.fit(M(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2))
    assert trainer.global_step == 2
    assert not (tmp_path / "ckpts").exists()  # as in Lightning: fast_dev_run is a smoke test, nothing is kept


def test_misuse_warnings_lightning_gives(tmp_path):
    """LearningRateMonitor(log_momentum=True) with an optimizer without momentum, and an accumulation schedule with
    overridden optimizer hooks, warn with Lightning's words (scripts filter on them)."""
    from fulmen.callbacks import GradientAccumulationScheduler, LearningRateMonitor
    from fulmen.loggers import CSVLogger

    class Plain(Two):
        def configure_optimizers(self):
            return torch.optim.Adagrad(self.parameters(), lr=0.1)  # neither momentum nor betas

    with pytest.warns(UserWarning, match="log_momentum=True, but some optimizers do not have momentum"):
        _trainer([LearningRateMonitor(log_momentum=True)], epochs=1, logger=CSVLogger(tmp_path)).fit(Plain(), _loader())

    class OwnStep(Two):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step(closure=optimizer_closure)

    with pytest.warns(UserWarning, match=r"overriding `LightningModule.optimizer_\{step,zero_grad\}`.*optimizer_step"):
        _trainer([GradientAccumulationScheduler({1: 2})], epochs=1).fit(OwnStep(), _loader())
