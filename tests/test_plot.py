"""fulmen.plot: a CSVLogger run rendered to a PNG, and the command line's answers to bad input."""

import subprocess
import sys
import textwrap

import pytest

from fulmen.errors import FulmenError
from fulmen.loggers import CSVLogger
from fulmen.plot import _group, main, plot_run

pytest.importorskip("matplotlib")


@pytest.fixture
def run_dir(tmp_path):
    """A run as the trainer would log it: step-level train metrics, epoch-level train and val metrics."""
    logger = CSVLogger(tmp_path, name="exp")
    step = 0
    for epoch in range(4):
        for _ in range(25):
            logger.log_metrics({"train_loss_step": 2.0 / (step + 1), "train/acc": step / 100, "epoch": epoch}, step)
            step += 1
        logger.log_metrics({"val_loss": 1.5 / (epoch + 1), "val/acc": 0.2 * epoch, "epoch": epoch}, step - 1)
        logger.log_metrics({"train_loss_epoch": 1.8 / (epoch + 1), "epoch": epoch}, step - 1)
    logger.finalize("success")
    return tmp_path / "exp" / "version_0"


def test_families_share_axes():
    names = ["train_loss_step", "train_loss_epoch", "val_loss", "train/acc", "val/acc", "lr-Adam", "loss_step"]
    assert list(_group(dict.fromkeys(names)).items()) == [
        ("loss", ["loss_step", "train_loss_epoch", "train_loss_step", "val_loss"]),
        ("acc", ["train/acc", "val/acc"]),
        ("lr-Adam", ["lr-Adam"]),
    ]


def test_plot_run_writes_a_png(run_dir):
    import matplotlib.image

    out = plot_run(run_dir)
    assert out == run_dir / "metrics.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    height, width = matplotlib.image.imread(out).shape[:2]
    assert (width, height) == (1100, 380)  # two families ("acc", "loss") side by side at 100 dpi


def test_plot_run_custom_output_and_csv_path(run_dir, tmp_path):
    out = plot_run(run_dir / "metrics.csv", tmp_path / "plots" / "run.png")
    assert out == tmp_path / "plots" / "run.png" and out.stat().st_size > 10_000


def test_plot_run_errors(tmp_path):
    with pytest.raises(FulmenError, match="No such run directory"):
        plot_run(tmp_path / "missing")
    with pytest.raises(FulmenError, match="No metrics.csv"):
        plot_run(tmp_path)


def test_cli_success(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "-o", str(tmp_path / "out.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out.png")
    assert (tmp_path / "out.png").exists()


@pytest.mark.parametrize("content", [None, "", "step,loss\r\n", "step,note\r\n0,hello\r\n"])
def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys, content):
    run = tmp_path / "run"
    if content is not None:
        run.mkdir()
        (run / "metrics.csv").write_text(content)
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fulmen plot: ") and "Traceback" not in err
    assert not (run / "metrics.png").exists()


def test_cli_no_directory_and_usage(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2  # a folder without metrics.csv
    assert "No metrics.csv" in capsys.readouterr().err
    assert main([]) == 2  # argparse: usage error
    assert main(["--help"]) == 0


def test_cli_without_matplotlib(run_dir):
    code = f"""
        import sys
        sys.modules["matplotlib"] = None
        from fulmen.plot import main
        sys.exit(main([{str(run_dir)!r}]))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "pip install 'fulmen[plot]'" in result.stderr and "Traceback" not in result.stderr


def test_plot_reads_the_default_loggers_tensorboard_run(tmp_path):
    """A run made with Trainer's default logger (TensorBoard when installed) plots like a CSV run."""
    pytest.importorskip("tensorboard")
    import torch

    import fulmen as pl
    from fulmen.plot import _read_tensorboard
    from helpers import BoringModel, make_loader

    class Logs(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.tensor(float(self.current_epoch)))

    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Logs(), make_loader(32), make_loader(16))
    run = tmp_path / "lightning_logs" / "version_0"
    assert not (run / "metrics.csv").exists()
    series = _read_tensorboard(sorted(run.glob("events.out.tfevents.*")))
    assert series["val_loss"] == ([3.0, 7.0], [0.0, 1.0])  # x: the trainer's step, as in metrics.csv
    assert series["train_loss"][0] == [1.0, 3.0, 5.0, 7.0] and "hp_metric" not in series and "epoch" not in series
    assert main([str(run)]) == 0 and (run / "metrics.png").stat().st_size > 10_000
