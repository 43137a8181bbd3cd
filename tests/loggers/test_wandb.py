"""WandbLogger in offline mode: the run files on disk hold what was logged. Never touches the network."""

import argparse
import json
import struct
import time

import pytest

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from fulmen.errors import MisconfigurationException  # noqa: E402
from fulmen.loggers import WandbLogger  # noqa: E402


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    for key, value in {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "_config"), "WANDB_CACHE_DIR": str(tmp_path / "_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "_data"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield
    if wandb.run is not None:  # a failed test must not leave a run (and its service) behind
        wandb.finish()


def _records(run_file):
    """Protobuf records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of checksummed chunks)."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, chunk, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a chunk header: the block is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
        elif kind == 0:
            break
    return records


def _settled_records(run_file, timeout=60.0):
    """The file's records once wandb's service has stopped appending to it.

    ``finish()`` returns when the service has the run's data, and the service (a separate process)
    may still be writing the file; on a loaded machine a read right away sees part of it.
    """
    deadline, last = time.monotonic() + timeout, None
    while True:
        size = run_file.stat().st_size
        if size == last or time.monotonic() > deadline:
            return _records(run_file)
        last = size
        time.sleep(0.5)


def _history(run_file):
    rows = []
    for record in _settled_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in items})
    return rows


def _config(run_file):
    config = {}
    for record in _settled_records(run_file):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config.update({item.key: json.loads(item.value_json) for item in updates})
    return config


def _run_files(save_dir):
    return sorted(save_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_run_holds_metrics_and_config(tmp_path):
    logger = WandbLogger(name="first", project="proj", save_dir=tmp_path, offline=True, prefix="fold0")
    assert logger.name == "proj" and logger.version is None and logger.save_dir == str(tmp_path)
    assert wandb.run is None  # nothing started until first use
    logger.log_hyperparams(argparse.Namespace(lr=0.1, model={"layers": 2}, fn=len))
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    run_id = logger.version
    assert run_id == logger.experiment.id
    logger.finalize("success")
    assert wandb.run is None  # finished: no run or service left behind

    (run_file,) = _run_files(tmp_path)
    assert run_file.name == f"run-{run_id}.wandb"
    history = _history(run_file)
    assert [(row["trainer/global_step"], round(row["fold0-loss"], 4)) for row in history] == [
        (0, 1.0), (1, 0.5), (2, 0.3333)
    ]
    config = _config(run_file)
    assert config["lr"] == 0.1 and config["model"] == {"layers": 2} and config["fn"] == "len"


def test_logging_after_finalize_resumes_the_same_run(tmp_path):
    logger = WandbLogger(save_dir=tmp_path, offline=True, version="fixedid1")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    logger.log_metrics({"a": 2.0}, step=1)  # e.g. trainer.test() after trainer.fit()
    logger.finalize("failed")
    logger.finalize("failed")  # idempotent
    files = _run_files(tmp_path)
    assert [f.name for f in files] == ["run-fixedid1.wandb"] * 2
    assert sorted(row["a"] for f in files for row in _history(f)) == [1.0, 2.0]


def test_log_model_all_stores_checkpoints_offline(tmp_path):
    ckpt = tmp_path / "epoch=0.ckpt"
    ckpt.write_bytes(b"weights")
    callback = argparse.Namespace(best_model_path=str(ckpt), last_model_path="", best_k_models={str(ckpt): 0.5},
                                  best_model_score=0.5, monitor="val_loss", save_top_k=1)
    logger = WandbLogger(save_dir=tmp_path, offline=True, log_model="all")
    logger.after_save_checkpoint(callback)
    logger.after_save_checkpoint(callback)  # unchanged file: not uploaded twice
    logger.finalize("success")
    artifacts = [r.artifact for r in _settled_records(_run_files(tmp_path)[0]) if r.WhichOneof("record_type") == "artifact"]
    assert len(artifacts) == 1
    assert artifacts[0].name == f"model-{logger.version}" and artifacts[0].type == "model"
    assert sorted(artifacts[0].aliases) == ["best", "latest"]
    assert [entry.path for entry in artifacts[0].manifest.contents] == ["model.ckpt"]


def test_user_run_is_not_finished_by_the_logger(tmp_path):
    run = wandb.init(dir=str(tmp_path), mode="offline", project="own")
    logger = WandbLogger(experiment=run)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert wandb.run is run
    run.finish()


def test_bad_log_model():
    with pytest.raises(MisconfigurationException, match="log_model"):
        WandbLogger(log_model="best")
