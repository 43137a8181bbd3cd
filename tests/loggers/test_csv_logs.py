"""CSVLogger: the file layout Lightning users and tools expect."""

import argparse

import fsspec
import pytest
import yaml

from fulmen.loggers import CSVLogger
from fulmen.loggers.csv_logs import ExperimentWriter


def test_layout_and_widened_header_match_lightning(tmp_path):
    logger = CSVLogger(tmp_path, name="exp")
    assert (logger.name, logger.version) == ("exp", 0)
    assert logger.save_dir == str(tmp_path)
    assert logger.root_dir == str(tmp_path / "exp")
    assert logger.log_dir == str(tmp_path / "exp" / "version_0")
    assert not (tmp_path / "exp").exists()  # nothing is created until something is logged

    logger.log_metrics({"train_loss": 1.0, "epoch": 0}, step=0)
    logger.log_metrics({"train_loss": 0.5}, step=1)
    logger.save()
    logger.log_metrics({"val_loss": 0.7, "epoch": 0}, step=1)  # new key: the file is rewritten wider
    logger.log_metrics({"x": 2}, step=1)
    logger.finalize("success")

    # byte for byte what Lightning 2.x's CSVLogger writes for the same calls (csv module's \r\n included)
    expected = "epoch,step,train_loss,val_loss,x\r\n0,0,1.0,,\r\n,1,0.5,,\r\n0,1,,0.7,\r\n,1,,,2\r\n"
    assert (tmp_path / "exp" / "version_0" / "metrics.csv").read_bytes().decode() == expected
    assert not list((tmp_path / "exp" / "version_0").glob("*.tmp"))


def test_appends_when_header_fits(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_metrics({"a": 1.0}, step=0)
    assert not (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").exists()
    logger.log_metrics({"a": 2.0}, step=1)  # (step + 1) % 2 == 0: flushed
    logger.log_metrics({"a": 3.0}, step=2)
    logger.save()
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines() == [
        "a,step", "1.0,0", "2.0,1", "3.0,2"
    ]


def test_hparams_yaml(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(argparse.Namespace(lr=0.1, nested={"a": 1, "b": [1, 2]}, none=None))
    logger.log_hyperparams({"batch_size": 32, "shape": (3, 4), "obj": object()})
    text = (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    # primitives and containers are written exactly as Lightning writes them ...
    assert text.startswith("batch_size: 32\nlr: 0.1\nnested:\n  a: 1\n  b:\n  - 1\n  - 2\nnone: null\nobj: <object")
    # ... other objects as plain strings, so that a safe loader reads the file back
    loaded = yaml.safe_load(text)
    assert loaded["shape"] == [3, 4] and loaded["obj"].startswith("<object object")


def test_version_increments_and_string_versions(tmp_path):
    for expected in range(3):
        logger = CSVLogger(tmp_path, name="exp")
        assert logger.version == expected
        logger.log_metrics({"a": 1}, step=0)
        logger.save()
    (tmp_path / "exp" / "version_10").mkdir()
    (tmp_path / "exp" / "version_x").mkdir()  # not a version folder
    (tmp_path / "exp" / "version_11").write_text("a file, not a folder")
    assert CSVLogger(tmp_path, name="exp").version == 11

    named = CSVLogger(tmp_path, name="exp", version="baseline")
    assert named.log_dir == str(tmp_path / "exp" / "baseline")
    assert CSVLogger(tmp_path, name="exp", version=7).log_dir == str(tmp_path / "exp" / "version_7")
    assert CSVLogger(tmp_path, name=None).log_dir == str(tmp_path / "version_0")


def test_prefix_and_default_step(tmp_path):
    logger = CSVLogger(tmp_path, prefix="fold1")
    logger.log_metrics({"loss": 1.0})
    logger.log_metrics({"loss": 2.0})
    logger.save()
    logger.log_metrics({"loss": 3.0})
    logger.save()
    lines = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert lines == ["fold1-loss,step", "1.0,0", "2.0,1", "3.0,2"]


def test_tensor_values_are_written_as_numbers(tmp_path):
    torch = pytest.importorskip("torch")
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": torch.tensor(0.25)}, step=3)
    logger.save()
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[1] == "0.25,3"


def test_existing_log_dir_warns_and_is_replaced(tmp_path):
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"old": 1}, step=0)
    first.save()
    with pytest.warns(UserWarning, match="exists and is not empty"):
        second = CSVLogger(tmp_path, version=0)
        second.log_metrics({"new": 2}, step=0)
    second.save()
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines() == ["new,step", "2,0"]


def test_memory_filesystem():
    fs = fsspec.filesystem("memory")
    root = "memory://fulmen-csv-test"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    logger = CSVLogger(root, name="exp")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"b": 2.0}, step=1)
    logger.save()
    logger.log_metrics({"c": 3.0}, step=2)
    logger.finalize("success")
    assert logger.log_dir == f"{root}/exp/version_0"
    assert fs.cat(f"{root}/exp/version_0/metrics.csv").decode().splitlines() == [
        "a,b,c,step", "1.0,,,0", ",2.0,,1", ",,3.0,2"
    ]
    assert yaml.safe_load(fs.cat(f"{root}/exp/version_0/hparams.yaml")) == {"lr": 0.1}
    assert CSVLogger(root, name="exp").version == 1
    fs.rm(root, recursive=True)


def test_experiment_is_the_writer(tmp_path):
    logger = CSVLogger(tmp_path)
    assert isinstance(logger.experiment, ExperimentWriter)
    assert logger.experiment.metrics_file_path == str(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    assert (tmp_path / "lightning_logs" / "version_0").is_dir()
