"""Each profiler's output, and that profiler=None wraps nothing."""

import json

import pytest
import torch

import fulmen as pl
from _optim_helpers import Regressor, assert_same_weights, loader, quiet_trainer
from fulmen.errors import MisconfigurationException
from fulmen.profilers import AdvancedProfiler, PassThroughProfiler, PyTorchProfiler, SimpleProfiler


class Spy(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        with trainer.profiler.profile("user_action"):
            pass


class Validated(Regressor):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))


def _rows(text):
    """{action: (mean, calls, total)} from the simple profiler's table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Action", "Total"):
            out[cells[0]] = (float(cells[1]), int(cells[2]), float(cells[3]))
    return out


def test_simple_profiler_times_hooks_and_actions_and_prints_a_table(capsys):
    model = Validated()
    trainer = quiet_trainer(max_epochs=2, profiler="simple", callbacks=[Spy()], limit_val_batches=2)
    assert isinstance(trainer.profiler, SimpleProfiler)
    trainer.fit(model, loader(), loader())
    text = capsys.readouterr().out
    assert "FIT Profiler Report" in text and "Mean duration (s)" in text
    rows = _rows(text)
    assert rows["run_training_epoch"][1] == 2
    assert rows["run_training_batch"][1] == 16
    assert rows["train_dataloader_next"][1] == 16  # the loop knows the length: no fetch past the end
    assert rows["[LightningModule]Validated.training_step"][1] == 16
    assert rows["[LightningModule]Validated.validation_step"][1] == 4
    assert rows["[Strategy]SingleDeviceStrategy.backward"][1] == 16
    assert rows["[Strategy]SingleDeviceStrategy.optimizer_step"][1] == 16
    assert rows["[Callback]Spy.on_train_batch_end"][1] == 16
    assert rows["user_action"][1] == 16
    assert rows["run_validation"][1] == 2
    assert rows["run_training_epoch"][2] >= rows["run_training_batch"][2] > 0
    # unwrapped after the run: the instances are as before
    assert "training_step" not in model.__dict__ and "backward" not in trainer.strategy.__dict__


def test_profiling_does_not_change_the_numbers():
    profiled, plain = Regressor(), Regressor()
    quiet_trainer(max_epochs=1, profiler="simple").fit(profiled, loader())
    quiet_trainer(max_epochs=1).fit(plain, loader())
    assert_same_weights(profiled.net, plain.net)


def test_simple_profiler_writes_to_a_file(tmp_path, capsys):
    trainer = quiet_trainer(max_steps=2, profiler=SimpleProfiler(dirpath=tmp_path, filename="perf"))
    trainer.fit(Regressor(), loader())
    text = (tmp_path / "fit-perf.txt").read_text()
    assert "run_training_batch" in text and capsys.readouterr().out == ""


def test_advanced_profiler_reports_cprofile_stats_per_action(tmp_path):
    trainer = quiet_trainer(max_steps=3, profiler=AdvancedProfiler(dirpath=tmp_path, filename="adv",
                                                                     line_count_restriction=10))
    trainer.fit(Regressor(), loader())
    text = (tmp_path / "fit-adv.txt").read_text()
    assert "Profile stats for: run_training_batch" in text
    assert "Profile stats for: [LightningModule]Regressor.training_step" in text
    assert "function calls" in text and "cumulative" in text and "mse_loss" in text


def test_pytorch_profiler_writes_a_chrome_trace(tmp_path, capsys):
    trainer = quiet_trainer(max_steps=2, profiler="pytorch", default_root_dir=tmp_path)
    trainer.fit(Regressor(), loader())
    prof = trainer.profiler
    assert isinstance(prof, PyTorchProfiler) and prof.trace_path.endswith("pytorch-fit.pt.trace.json")
    with open(prof.trace_path) as f:
        trace = json.load(f)
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"run_training_batch", "[LightningModule]Regressor.training_step", "aten::addmm"} <= names
    assert "Self CPU" in capsys.readouterr().out  # torch's operator table


def test_no_profiler_wraps_nothing():
    model = Regressor()
    trainer = quiet_trainer(max_steps=1)
    assert isinstance(trainer.profiler, PassThroughProfiler)
    seen = {}

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["module"] = dict(module.__dict__)
            seen["strategy"] = dict(trainer.strategy.__dict__)

    trainer.callbacks.append(Look())
    trainer.fit(model, loader())
    assert "training_step" not in seen["module"] and "backward" not in seen["strategy"]
    with trainer.profiler.profile("anything"):  # user code may still call it
        pass


def test_unknown_profiler_name():
    with pytest.raises(MisconfigurationException, match="profiler='fast'.*'simple'"):
        quiet_trainer(profiler="fast")
