"""TensorBoardLogger, read back with TensorBoard's own event reader."""

import pickle

import pytest
import torch
import yaml

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from fulmen.loggers import TensorBoardLogger  # noqa: E402


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(acc: EventAccumulator) -> dict:
    """The hparams logged in the session-start summary, as name -> value."""
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in info.hparams.items()}


def test_scalars_and_layout(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    assert logger.log_dir == str(tmp_path / "tb" / "version_0")
    assert logger.root_dir == str(tmp_path / "tb") and logger.save_dir == str(tmp_path)
    for step in range(3):
        logger.log_metrics({"train_loss": 1.0 / (step + 1), "lr": torch.tensor(0.1)}, step=step)
    logger.log_metrics({"val_loss": 0.3}, step=2)
    logger.finalize("success")

    acc = _read(logger.log_dir)
    assert sorted(acc.Tags()["scalars"]) == ["lr", "train_loss", "val_loss"]
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("train_loss")] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("val_loss")] == [(2, 0.3)]
    assert yaml.safe_load((tmp_path / "tb" / "version_0" / "hparams.yaml").read_text()) == {}
    assert TensorBoardLogger(tmp_path, name="tb").version == 1


def test_hparams_with_default_hp_metric(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.01, "opt": {"name": "adam", "betas": (0.9, 0.99)}, "layers": 3, "bn": True})
    logger.log_metrics({"hp_metric": 0.8}, step=5)
    logger.finalize("success")

    acc = _read(logger.log_dir)
    assert _hparams(acc) == {"lr": 0.01, "opt/name": "adam", "opt/betas": "(0.9, 0.99)", "layers": 3.0, "bn": True}
    assert [(e.step, e.value) for e in acc.Scalars("hp_metric")] == [(0, -1.0), (5, pytest.approx(0.8))]
    saved = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert saved == {"lr": 0.01, "opt": {"name": "adam", "betas": [0.9, 0.99]}, "layers": 3, "bn": True}


def test_hparams_with_metrics_and_no_default(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False, version="named", sub_dir="train")
    assert logger.log_dir == str(tmp_path / "lightning_logs" / "named" / "train")
    logger.log_hyperparams({"lr": 0.1}, metrics={"acc": 0.5})
    logger.finalize("success")
    acc = _read(logger.log_dir)
    assert "hp_metric" not in acc.Tags()["scalars"]
    assert [(e.step, e.value) for e in acc.Scalars("acc")] == [(0, 0.5)]


def test_prefix_and_logging_after_finalize(tmp_path):
    logger = TensorBoardLogger(tmp_path, prefix="fold0")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    logger.log_metrics({"loss": 2.0}, step=1)  # fit() then test(): the writer reopens
    logger.finalize("success")
    steps = sorted((e.step, e.value) for e in _read(logger.log_dir).Scalars("fold0-loss"))
    assert steps == [(0, 1.0), (1, 2.0)]


def test_bad_metric_value_names_the_metric(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="'bad'"):
        logger.log_metrics({"bad": "not a number"}, step=0)


def test_log_graph(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    model.example_input_array = torch.zeros(1, 4)
    TensorBoardLogger(tmp_path, version=0).log_graph(model)  # log_graph=False: nothing written
    assert not (tmp_path / "lightning_logs").exists()

    logger = TensorBoardLogger(tmp_path, log_graph=True, version=1)
    logger.log_graph(model)
    logger.finalize("success")
    assert _read(logger.log_dir).Graph() is not None

    bare = TensorBoardLogger(tmp_path, log_graph=True, version=2)
    with pytest.warns(UserWarning, match="example_input_array"):
        bare.log_graph(torch.nn.Linear(4, 2))


def test_pickles_without_the_writer(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone.log_dir == logger.log_dir and clone._experiment is None
    logger.finalize("success")


def test_scalars_and_hparams_are_written_without_tensorboards_summary_api(tmp_path):
    """The default logger must stay cheap: torch.utils.tensorboard costs ~0.5 s to import, so scalars and hparams
    are written with TensorBoard's protos only; `experiment` (images, histograms) still loads it on first use."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fulmen.loggers import TensorBoardLogger\n"
        f"lg = TensorBoardLogger({str(tmp_path)!r}, name='tb')\n"
        "lg.log_hyperparams({'lr': 0.1, 'opt': 'adam', 'bn': True}, {'val_loss': 0})\n"
        "for step in range(3): lg.log_metrics({'loss': 1.0 / (step + 1)}, step)\n"
        "lg.finalize('success')\n"
        "print('torch.utils.tensorboard' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    acc = _read(tmp_path / "tb" / "version_0")
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert _hparams(acc) == {"lr": 0.1, "opt": "adam", "bn": True}
