"""A run stopped anywhere and resumed from its checkpoint ends with the same weights, bit for bit.

The loop keeps all progress in one LoopState and the random states at the epoch's start, so a
mid-epoch resume rebuilds the same shuffled order, skips what was seen, and continues.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fulmen as pl
from helpers import make_loader, quiet_trainer


class Dropout(pl.LightningModule):
    """Consumes randomness every step (dropout), so any RNG slip shows in the weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 16), nn.Dropout(0.5), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


class Interrupt(pl.Callback):
    """Save a checkpoint after `at` optimizer steps, then stop the run as a crash would."""

    def __init__(self, at, path):
        self.at, self.path = at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("killed")


def _fit(model, callbacks=(), ckpt_path=None, epochs=3):
    pl.seed_everything(3)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=list(callbacks))
    trainer.fit(model, make_loader(80, 8, shuffle=True), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("at", [4, 10, 17])  # mid-epoch, exactly at an epoch's end, mid second epoch
def test_resume_anywhere_is_bit_for_bit(tmp_path, at):
    torch.manual_seed(0)
    straight = Dropout()
    reference = {k: v.clone() for k, v in straight.state_dict().items()}
    _fit(straight)

    interrupted = Dropout()
    interrupted.load_state_dict(reference)
    ckpt = tmp_path / "crash.ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        _fit(interrupted, [Interrupt(at, ckpt)])

    resumed = Dropout()
    trainer = _fit(resumed, ckpt_path=ckpt)
    assert trainer.global_step == 30 and trainer.current_epoch == 3
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


# --- ckpt_path="last" (issue 13, item 1) ---------------------------------------------------------
import os
import time

from fulmen.callbacks import ModelCheckpoint
from fulmen.errors import MisconfigurationException


def _fit_with_checkpoints(tmp_path, model, callbacks=(), ckpt_path=None, **kwargs):
    pl.seed_everything(3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=3, save_top_k=-1, save_last=True)
    trainer = quiet_trainer(max_epochs=3, callbacks=[ckpt, *callbacks], enable_checkpointing=True, **kwargs)
    trainer.fit(model, make_loader(80, 8, shuffle=True), ckpt_path=ckpt_path)
    return trainer


class Crash(pl.Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def test_last_on_a_fresh_run_starts_from_scratch_with_one_line(tmp_path, caplog):
    trainer = _fit_with_checkpoints(tmp_path, Dropout(), ckpt_path="last")
    assert trainer.global_step == 30
    out = caplog.text  # an info line: on the "fulmen" logger
    assert out.count('ckpt_path="last": no checkpoint of this run was found') == 1


def test_last_after_a_crash_resumes_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    straight = Dropout()
    reference = {k: v.clone() for k, v in straight.state_dict().items()}
    _fit(straight)

    crashed = Dropout()
    crashed.load_state_dict(reference)
    with pytest.raises(RuntimeError, match="killed"):
        _fit_with_checkpoints(tmp_path, crashed, [Crash(at=14)])  # last save at step 12: two steps are redone
    resumed = Dropout()
    trainer = _fit_with_checkpoints(tmp_path, resumed, ckpt_path="last")
    assert os.path.basename(trainer.ckpt_path) in ("epoch=1-step=12.ckpt", "last.ckpt")
    assert trainer.global_step == 30
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _write(path, step, saved_at, **extra):
    from fulmen.checkpoint import save_checkpoint

    save_checkpoint({"state_dict": {}, "optimizer_states": [], "global_step": step, "fulmen_saved_at": saved_at,
                     **extra}, path)


def test_last_ranks_by_what_is_inside_not_by_name(tmp_path):
    from fulmen.trainer.resume import last_candidates

    d = tmp_path / "ckpts"
    d.mkdir()
    now = time.time()
    _write(d / "zzz-epoch=99.ckpt", 5, now - 100)
    _write(d / "aaa.ckpt", 9, now)
    _write(d / "weights.ckpt", 50, now + 1)
    (d / "weights.ckpt").unlink()  # a weights-only file cannot continue a fit
    from fulmen.checkpoint import save_checkpoint

    save_checkpoint({"state_dict": {}, "global_step": 50, "fulmen_saved_at": now + 1}, d / "weights.ckpt")
    trainer = quiet_trainer(callbacks=[ModelCheckpoint(dirpath=d)], enable_checkpointing=True)
    assert [os.path.basename(p) for p in last_candidates(trainer)] == ["aaa.ckpt", "zzz-epoch=99.ckpt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_last_skips_a_damaged_file_naming_it(tmp_path, damage):
    torch.manual_seed(0)
    model = Dropout()
    with pytest.raises(RuntimeError, match="killed"):
        _fit_with_checkpoints(tmp_path, model, [Crash(at=14)])
    newest = tmp_path / "ckpts" / "epoch=1-step=12.ckpt"
    (tmp_path / "ckpts" / "last.ckpt").unlink()
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x04
    else:
        data = b""
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"skips a damaged checkpoint.*epoch=1-step=12\.ckpt") as record:
        trainer = _fit_with_checkpoints(tmp_path, Dropout(), ckpt_path="last")
    assert os.path.basename(trainer.ckpt_path) == "epoch=0-step=9.ckpt"
    assert sum("damaged" in str(w.message) for w in record) == 1
    assert trainer.global_step == 30


def test_last_continues_the_logger_version_of_the_interrupted_run(tmp_path):
    from fulmen.loggers import CSVLogger

    def fit(ckpt_path=None, callbacks=()):
        pl.seed_everything(3)
        trainer = pl.Trainer(max_epochs=2, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[ModelCheckpoint(every_n_train_steps=4), *callbacks])
        trainer.fit(Dropout(), make_loader(80, 8, shuffle=True), ckpt_path=ckpt_path)
        return trainer

    with pytest.raises(RuntimeError):
        fit(callbacks=[Crash(at=6)])
    trainer = fit(ckpt_path="last")
    assert trainer.logger.version == 0 and "version_0" in trainer.ckpt_path
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0"]


def test_best_and_hpc_keep_lightnings_meanings(tmp_path):
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    with pytest.raises(MisconfigurationException, match="hpc_ckpt"):
        trainer.fit(Dropout(), make_loader(16, 8), ckpt_path="hpc")
    first = _fit_with_checkpoints(tmp_path, Dropout())
    first.save_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")
    trainer = quiet_trainer(max_epochs=4, default_root_dir=tmp_path)
    trainer.fit(Dropout(), make_loader(80, 8, shuffle=True), ckpt_path="hpc")
    assert trainer.ckpt_path.endswith("hpc_ckpt_1.ckpt") and trainer.global_step == 40


# --- epoch metrics and the CSV log survive a mid-epoch resume (issue 13, item 5) -------------------
import csv


class Logs(pl.LightningModule):
    """Logs epoch values with every reduction, uneven batch sizes and a torchmetrics Metric."""

    def __init__(self):
        super().__init__()
        import torchmetrics

        self.layer = nn.Linear(32, 2)
        self.mean_metric = torchmetrics.MeanMetric()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.layer(x), y)
        v = x[:, 0].mean()
        self.log("loss", loss, on_epoch=True)  # batch-size weighted mean; the last batch is smaller
        self.log("v_sum", v, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("v_max", v, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("v_min", float(v), on_step=False, on_epoch=True, reduce_fx="min")
        self.log("v_median", v, on_step=False, on_epoch=True, reduce_fx=torch.median)
        self.mean_metric.update(x[:, 1])
        self.log("metric", self.mean_metric, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_logged(tmp_path, callbacks=(), ckpt_path=None):
    from fulmen.loggers import CSVLogger

    pl.seed_everything(3)
    trainer = quiet_trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=2,
                            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=4), *callbacks],
                            enable_checkpointing=True)
    trainer.fit(Logs(), make_loader(76, 8, shuffle=True), ckpt_path=ckpt_path)  # 10 batches, the last of 4
    return trainer


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_epoch_values_and_csv_rows_after_a_mid_epoch_resume_equal_the_uninterrupted_run(tmp_path):
    straight = _fit_logged(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="killed"):
        _fit_logged(tmp_path / "cut", [Crash(at=7)])  # saved at step 4: 3 steps (and 1 CSV row) logged after it
    resumed = _fit_logged(tmp_path / "cut", ckpt_path="last")
    assert resumed.ckpt_path.endswith("epoch=0-step=4.ckpt")
    epoch_keys = ["loss_epoch", "v_sum", "v_max", "v_min", "v_median", "metric"]
    for key in epoch_keys:
        assert torch.equal(straight.callback_metrics[key], resumed.callback_metrics[key]), key
    rows_straight = _csv(tmp_path / "straight" / "run" / "version_0" / "metrics.csv")
    rows_resumed = _csv(tmp_path / "cut" / "run" / "version_0" / "metrics.csv")
    assert [r["step"] for r in rows_resumed] == [r["step"] for r in rows_straight]  # none missing, none twice
    assert rows_resumed == rows_straight  # the first epoch's means (logged after the resume) included


def test_a_checkpoint_without_slot_settings_still_resumes_its_epoch_values(tmp_path):
    """Checkpoints written before the slots' settings were saved: each slot picks its values up when it is logged
    again (a mid-epoch resume logs every slot again). The settings are plain values: weights_only=True opens it."""
    straight = _fit_logged(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="killed"):
        _fit_logged(tmp_path / "cut", [Crash(at=7)])
    path = tmp_path / "cut" / "ckpts" / "epoch=0-step=4.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["loops"]["fulmen"]["epoch_metrics"]
    assert {key[1] for key, state in saved.items() if "settings" in state} == {"loss", "v_sum", "v_max", "v_min",
                                                                               "v_median", "metric"}
    for state in saved.values():
        del state["settings"], state["step"]
    torch.save(checkpoint, path)
    resumed = _fit_logged(tmp_path / "cut", ckpt_path=path)
    for key in ["loss_epoch", "v_sum", "v_max", "v_min", "v_median", "metric"]:
        assert torch.equal(straight.callback_metrics[key], resumed.callback_metrics[key]), key


def test_a_directory_checkpoint_is_loaded_by_the_strategy(tmp_path):
    """Sharded checkpoints are directories: the path goes to the strategy's load_checkpoint as it is."""
    from fulmen.checkpoint import load_checkpoint
    from fulmen.strategies import SingleDeviceStrategy

    class DirectoryStrategy(SingleDeviceStrategy):
        def load_checkpoint(self, filepath, weights_only=True):
            self.loaded = filepath
            return load_checkpoint(os.path.join(filepath, "whole.ckpt"))

    first = _fit(Dropout(), epochs=1)
    (tmp_path / "sharded.ckpt").mkdir()
    first.save_checkpoint(tmp_path / "sharded.ckpt" / "whole.ckpt")
    strategy = DirectoryStrategy("cpu")
    trainer = quiet_trainer(max_epochs=2, strategy=strategy)
    trainer.fit(Dropout(), make_loader(80, 8, shuffle=True), ckpt_path=tmp_path / "sharded.ckpt")
    assert strategy.loaded == str(tmp_path / "sharded.ckpt") and trainer.global_step == 20


# The program a user writes first (resume_program.py's `Logged`: validation with the sanity check, a shuffled
# loader with 2 workers, step and epoch values logged to the progress bar and through a torchmetrics Metric, a CSV
# logger, a checkpoint every 4 steps), 8 batches and 4 steps per epoch: its checkpoints fall on each epoch's last
# batch. Resumed from one in a new process, nothing is left to log before the epoch ends: the restored slots
# must show and log their values by themselves.
LAST_BATCH_RESUMES = {"last": ("epoch=3-step=16.ckpt", 16), "middle": ("epoch=1-step=8.ckpt", 8)}


@pytest.fixture(scope="module")
def last_batch_runs(tmp_path_factory):
    from test_resume_workers import copy_run, launch

    out = tmp_path_factory.mktemp("resume_last_batch")
    launch(out, ["full:2:0:auto:1::logged"])
    for name in LAST_BATCH_RESUMES:
        copy_run(out, "full", name)
    launch(out, [f"{name}:2:0:auto:1:{ckpt}:logged" for name, (ckpt, _) in LAST_BATCH_RESUMES.items()])
    return out


@pytest.mark.parametrize("resumed", list(LAST_BATCH_RESUMES))
def test_a_resume_from_an_epochs_last_batch_reports_the_epoch_as_the_uninterrupted_run(last_batch_runs, resumed):
    import json

    out, step = last_batch_runs, LAST_BATCH_RESUMES[resumed][1]
    full = json.loads((out / "full" / "final.json").read_text())
    # the values a resume from the fit's last batch must bring back without logging them again
    assert {"train_loss_step", "train_loss_epoch", "train_acc_step", "train_acc_epoch"} <= full.keys()
    assert json.loads((out / resumed / "final.json").read_text()) == full
    assert json.loads((out / resumed / "final_bar.json").read_text()) == json.loads(
        (out / "full" / "final_bar.json").read_text())
    want = torch.load(out / "full" / "final.pt")
    got = torch.load(out / resumed / "final.pt")
    assert all(torch.equal(want[k], got[k]) for k in want)
    # a resume from an explicit path logs to a new version (as Lightning): it holds the rows from the checkpoint on,
    # the validation due after the saved batch and the epoch's row (its means over all 8 batches) first
    full_rows = _csv(out / "full" / "lightning_logs" / "version_0" / "metrics.csv")
    rows = _csv(out / resumed / "lightning_logs" / "version_1" / "metrics.csv")
    assert rows == [r for r in full_rows if int(r["step"]) >= step - 1]
    assert rows[1]["train_loss_epoch"] and rows[1]["train_acc_epoch"] and rows[1]["step"] == str(step - 1)
