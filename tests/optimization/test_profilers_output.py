"""Each profiler's output, and that profiler=None wraps nothing."""

import json
import os
import re

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


def test_simple_profiler_times_hooks_and_actions_and_prints_a_table(caplog):
    model = Validated()
    trainer = quiet_trainer(max_epochs=2, profiler="simple", callbacks=[Spy()], limit_val_batches=2)
    assert isinstance(trainer.profiler, SimpleProfiler)
    trainer.fit(model, loader(), loader())
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fulmen"))  # logged, as Lightning
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
    assert text.startswith("FIT Profiler Report")
    assert "Profile stats for: run_training_batch" in text
    assert "Profile stats for: [LightningModule]Regressor.training_step" in text
    assert "function calls" in text and "cumulative" in text and "mse_loss" in text


def test_pytorch_profiler_writes_a_chrome_trace(tmp_path, caplog):
    trainer = quiet_trainer(max_steps=2, profiler="pytorch", default_root_dir=tmp_path)
    trainer.fit(Regressor(), loader())
    prof = trainer.profiler
    # Lightning's name: {stage}-{action of the last step}.{time_ns}.pt.trace.json
    assert isinstance(prof, PyTorchProfiler)
    assert re.fullmatch(r"fit-\[LightningModule\]Regressor\.training_step\.\d+\.pt\.trace\.json",
                        os.path.basename(prof.trace_path))
    with open(prof.trace_path) as f:
        trace = json.load(f)
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"[pl][profile]run_training_batch", "[pl][profile][LightningModule]Regressor.training_step",
            "aten::addmm"} <= names
    out = caplog.text  # the report is logged on the "fulmen" logger, as Lightning logs its own
    assert out.index("FIT Profiler Report") < out.index("Profile stats for: records") < out.index("Self CPU")


def test_pytorch_profiler_takes_lightnings_arguments(tmp_path):
    prof = PyTorchProfiler(dirpath=tmp_path, filename="prof", group_by_input_shapes=True, emit_nvtx=False,
                           export_to_chrome=True, row_limit=5, sort_by_key="cpu_time", record_module_names=True,
                           table_kwargs={"max_name_column_width": 30}, record_shapes=True)
    quiet_trainer(max_steps=3, profiler=prof).fit(Regressor(), loader())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f for f in files if f.endswith(".txt")] == ["fit-prof.txt"]
    traces = [f for f in files if f.endswith(".pt.trace.json")]
    assert len(traces) == 1 and traces[0].startswith("fit-prof-") and "training_step" in traces[0]
    report = (tmp_path / "fit-prof.txt").read_text()
    assert report.startswith("FIT Profiler Report") and "Profile stats for: records" in report
    assert "Input Shapes" in report  # grouped by input shapes
    table_rows = [ln for ln in report.splitlines() if ln.startswith(("aten::", "[pl]", "Optimizer"))]
    assert 0 < len(table_rows) <= 5  # row_limit
    events = prof.function_events
    names = {e.name for e in events}
    assert any(n.startswith("[pl][module]torch.nn.modules.linear.Linear: ") for n in names)  # module names
    assert "aten::addmm" in names
    with open(tmp_path / traces[0]) as f:
        assert "aten::addmm" in {e.get("name") for e in json.load(f)["traceEvents"]}


def test_pytorch_profiler_without_chrome_or_module_names(tmp_path):
    prof = PyTorchProfiler(dirpath=tmp_path, filename="p", export_to_chrome=False, record_module_names=False)
    quiet_trainer(max_steps=2, profiler=prof).fit(Regressor(), loader())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".json")]
    assert not any(e.name.startswith("[pl][module]") for e in prof.function_events)


def test_pytorch_profiler_schedule_records_only_the_active_steps(tmp_path):
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=2, repeat=1)
    prof = PyTorchProfiler(dirpath=tmp_path, filename="s", schedule=schedule, export_to_chrome=False)
    quiet_trainer(max_steps=8, profiler=prof).fit(Regressor(), loader())
    steps = [e for e in prof.function_events if e.name == "[pl][profile][LightningModule]Regressor.training_step"]
    assert len(steps) == 2


def test_pytorch_profiler_rejects_bad_arguments_with_lightnings_words():
    with pytest.raises(MisconfigurationException, match="Found sort_by_key: cpu. Should be within"):
        PyTorchProfiler(sort_by_key="cpu")
    with pytest.raises(KeyError, match="Found invalid table_kwargs key: sort_by. This is already a positional"):
        PyTorchProfiler(table_kwargs={"sort_by": "cpu_time"})
    with pytest.raises(KeyError, match="Found invalid table_kwargs key: colour"):
        PyTorchProfiler(table_kwargs={"colour": 1})
    with pytest.raises(MisconfigurationException, match="Schedule should be a callable"):
        PyTorchProfiler(schedule=3)


def test_profiler_submodules_hold_the_classes():
    from fulmen.profilers import advanced, base, profiler, pytorch, simple

    assert simple.SimpleProfiler is SimpleProfiler and advanced.AdvancedProfiler is AdvancedProfiler
    assert pytorch.PyTorchProfiler is PyTorchProfiler and base.PassThroughProfiler is PassThroughProfiler
    assert issubclass(SimpleProfiler, profiler.Profiler)


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
