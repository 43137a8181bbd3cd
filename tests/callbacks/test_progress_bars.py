"""Progress bars: a handful of lines when output is not a terminal, metrics read only on redraw."""

import io
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import ProgressBar, TQDMProgressBar
from fulmen.errors import MisconfigurationException


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data(n=200):
    return DataLoader(TensorDataset(torch.randn(n, 4)), batch_size=1)


class CountingBar(TQDMProgressBar):
    reads = 0

    def get_metrics(self, trainer, pl_module):
        CountingBar.reads += 1
        return super().get_metrics(trainer, pl_module)


def test_default_bar_off_terminal_prints_a_line_per_epoch(capsys, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from fulmen.callbacks.progress import tqdm_progress as progress

    # a frozen clock: what the bar reads and prints must not depend on how fast this machine is
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    CountingBar.reads = 0
    trainer = pl.Trainer(max_epochs=3, default_root_dir=tmp_path, callbacks=[CountingBar()],
                         enable_model_summary=False, limit_val_batches=20)
    trainer.fit(Model(), data(), data())
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 4, out  # three epochs and where the outputs went, not 600 redraws
    for epoch, line in enumerate(lines[:3]):
        assert line.startswith(f"Epoch {epoch}: 100% 200/200 [")
        assert "it/s]" in line and "v_num=0" in line and "train_loss=" in line
    assert "val_loss=" in lines[1]  # the epoch line shows the last validation too
    logs = tmp_path / "lightning_logs" / "version_0"
    assert lines[3] == f"Checkpoints: {logs / 'checkpoints'}  Logs: {logs}"
    # 600 training batches and 60 validation batches, but the metrics were read only a few times
    assert CountingBar.reads < 20


def test_stand_alone_test_run_output(capsys):
    trainer = pl.Trainer(logger=False, enable_model_summary=False)
    trainer.test(Model(), data(50), verbose=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Testing: 100% 50/50 [")


def test_no_outputs_line_without_logger_or_checkpointing(capsys):
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Model(), data(10))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Epoch 0: 100% 10/10") and "v_num" not in lines[0]


def test_terminal_bar_draws_with_tqdm(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    bar = TQDMProgressBar(refresh_rate=5)
    bar._tty = True  # pretend stdout is a terminal
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[bar])
    trainer.fit(Model(), data(20), data(5))
    text = out.getvalue()
    assert "Epoch 1: 100%" in text and "20/20" in text and "train_loss=" in text
    assert "Validation" in text and "Sanity Checking" in text
    # closed at the end of training, but still readable, as in Lightning
    assert bar.train_progress_bar.disable and (bar.train_progress_bar.total, bar.train_progress_bar.n) == (20, 20)


def test_refresh_rate_zero_and_disable_draw_nothing(capsys):
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[TQDMProgressBar(refresh_rate=0)])
    trainer.fit(Model(), data(10))
    assert capsys.readouterr().out == ""
    assert trainer.progress_bar_callback.is_disabled


def test_bar_api_and_errors():
    with pytest.raises(MisconfigurationException, match="refresh_rate"):
        TQDMProgressBar(refresh_rate=-1)
    bar = TQDMProgressBar()
    assert isinstance(bar, ProgressBar) and bar.refresh_rate == 1 and bar.is_enabled
    bar.disable()
    assert bar.is_disabled
    with pytest.raises(MisconfigurationException, match="not attached"):
        bar.total_train_batches
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False)
    assert trainer.progress_bar_callback is None


def test_rich_bar(capsys, tmp_path):
    pytest.importorskip("rich")
    from fulmen.callbacks import RichProgressBar

    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, enable_model_summary=False,
                         callbacks=[RichProgressBar()])
    trainer.fit(Model(), data(30), data(5))
    out = capsys.readouterr().out
    assert "Epoch 1" in out and "30/30" in out and "train_loss:" in out and "val_loss:" in out
    assert out.count("\n") < 10
    assert out.strip().splitlines()[-1].startswith("Checkpoints: ")


def test_tqdm_class_pads_numbers_like_lightnings():
    from fulmen.callbacks.progress.tqdm_progress import Tqdm, convert_inf

    assert [Tqdm.format_num(x) for x in (1.0, 0.5, 3, "0.1", 1e-9, "abc")] == ["1.000", "0.500", "3", "0.100",
                                                                              "1e-9", "abc"]
    assert convert_inf(float("inf")) is None and convert_inf(float("nan")) is None and convert_inf(7) == 7
    from tqdm.auto import tqdm

    assert issubclass(Tqdm, tqdm)


def test_init_tqdm_overrides_shape_the_bars_on_and_off_a_terminal(monkeypatch):
    from fulmen.callbacks.progress.tqdm_progress import Tqdm

    made = []

    class Custom(TQDMProgressBar):
        def init_train_tqdm(self):
            bar = super().init_train_tqdm()
            bar.custom = True
            made.append("train")
            return bar

        def init_validation_tqdm(self):
            bar = super().init_validation_tqdm()
            bar.disable = True  # how users hide the validation bar
            made.append("val")
            return bar

    seen = {}

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["train"] = trainer.progress_bar_callback.train_progress_bar

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen["val"] = trainer.progress_bar_callback.val_progress_bar

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # not a terminal: only the customised bars become tqdm bars
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[Custom(), Look()])
    trainer.fit(Model(), data(12), data(6))
    assert made == ["train", "val"]
    assert isinstance(seen["train"], Tqdm) and seen["train"].custom and seen["train"].total == 12
    assert isinstance(seen["val"], Tqdm) and seen["val"].disable
    text = out.getvalue()
    assert "Epoch 0: 100%" in text and "Validation: 100%" not in text and "6/6" not in text  # val bar disabled


def test_default_bars_are_tqdm_on_a_terminal_with_lightnings_positions(monkeypatch):
    from fulmen.callbacks.progress.tqdm_progress import Tqdm

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    bar = TQDMProgressBar(process_position=1)
    bar._tty = True
    bars = {}

    class Look(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            bars["train"], bars["val"] = bar.train_progress_bar, bar.val_progress_bar

    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
               num_sanity_val_steps=0, callbacks=[bar, Look()]).fit(Model(), data(4), data(2))
    assert isinstance(bars["train"], Tqdm) and bars["train"].pos in (1, -1)
    assert isinstance(bars["val"], Tqdm) and abs(bars["val"].pos) == 2 and not bars["val"].leave


def test_rich_bar_exposes_its_progress_while_running():
    pytest.importorskip("rich")
    from rich.progress import Progress

    from fulmen.callbacks import RichProgressBar

    bar, seen = RichProgressBar(), []

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(bar.progress)

    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
               callbacks=[bar, Look()]).fit(Model(), data(3))
    assert seen and isinstance(seen[0], Progress)


def test_bars_are_readable_from_callbacks_while_each_stage_runs_and_after_it():
    # what Lightning's users read: `.total`, `.n`, `.leave` of each stage's bar, also off a terminal
    bar, seen = TQDMProgressBar(), []

    def look(b):
        return None if b is None else (b.total, b.n, b.leave)

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(("train", look(bar.train_progress_bar)))

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(("sanity" if trainer.sanity_checking else "val", look(bar.val_progress_bar)))

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(("test", look(bar.test_progress_bar)))

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(("predict", look(bar.predict_progress_bar)))

    class Predicts(Model):
        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

    trainer = pl.Trainer(max_epochs=1, limit_val_batches=2, num_sanity_val_steps=1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[bar, Look()])
    model = Predicts()
    trainer.fit(model, data(3), data(4))
    after_fit = look(bar.train_progress_bar), look(bar.val_progress_bar)
    trainer.test(model, data(2), verbose=False)
    trainer.predict(model, data(2))
    assert seen == [("sanity", (1, 1, False)),
                    ("train", (3, 1, True)), ("train", (3, 2, True)), ("train", (3, 3, True)),
                    ("val", (2, 1, False)), ("val", (2, 2, False)),  # nested under the training bar
                    ("test", (2, 1, True)), ("test", (2, 2, True)), ("predict", (2, 1, True)), ("predict", (2, 2, True))]
    assert after_fit == ((3, 3, True), (2, 2, False))  # closed bars stay readable
    assert bar.test_progress_bar.disable and look(bar.predict_progress_bar) == (2, 2, True)
    assert TQDMProgressBar.BAR_FORMAT.startswith("{l_bar}{bar}|")


def test_custom_bar_reacts_to_a_new_eval_loader_with_the_public_tracker(capsys):
    class PerLoader(TQDMProgressBar):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            if self.has_dataloader_changed(dataloader_idx):
                self.print(f"loader {dataloader_idx}")

        def on_test_start(self, trainer, pl_module):
            self.reset_dataloader_idx_tracker()

    class TwoLoaders(Model):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            pass

    trainer = pl.Trainer(logger=False, enable_model_summary=False, callbacks=[PerLoader()])
    for _ in range(2):
        trainer.test(TwoLoaders(), [data(2), data(3)], verbose=False)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("loader")] == ["loader 0", "loader 1"] * 2


def test_rich_bar_theme_formats_the_metrics_and_its_tasks_are_readable(capsys):
    pytest.importorskip("rich")
    from fulmen.callbacks.progress.rich_progress import RichProgressBar, RichProgressBarTheme

    theme = RichProgressBarTheme(metrics_format=".1e", metrics_text_delimiter=" | ", progress_bar="green")
    bar, seen = RichProgressBar(theme=theme), []

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            task = bar.train_progress_bar
            seen.append((task.total, task.completed))

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append((trainer.sanity_checking, bar.val_progress_bar.total, bar.val_sanity_check_bar is not None))

    class TwoMetrics(Model):
        def training_step(self, batch, batch_idx):
            self.log("a", 1.0, prog_bar=True)
            self.log("b", 250.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=1, num_sanity_val_steps=1, callbacks=[bar, Look()])
    trainer.fit(TwoMetrics(), data(2), data(2))
    assert bar.theme is theme and RichProgressBar().theme == RichProgressBarTheme()
    assert seen == [(True, 1, True), (2, 1), (2, 2), (False, 1, False)]
    assert "a: 1.0e+00 | b: 2.5e+02" in capsys.readouterr().out
    assert bar.train_progress_bar is None  # the tasks live while the stage runs
