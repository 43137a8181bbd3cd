"""MLFlowLogger against a local file store, read back with MlflowClient."""

import argparse
import os

import pytest
import yaml

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from fulmen.errors import MisconfigurationException  # noqa: E402
from fulmen.loggers import MLFlowLogger  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the logger opts in to MLflow's file store by setting this; undo it after each test
    saved = os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    yield
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    if saved is not None:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = saved


def _checkpoint_callback(tmp_path, save_top_k=1):
    best, last = tmp_path / "epoch=1.ckpt", tmp_path / "last.ckpt"
    best.write_bytes(b"best weights")
    last.write_bytes(b"last weights")
    return argparse.Namespace(
        best_model_path=str(best), last_model_path=str(last), best_k_models={str(best): 0.25},
        best_model_score=0.25, current_score=0.5, monitor="val_loss", mode="min", save_top_k=save_top_k,
    )


def test_params_metrics_and_status(tmp_path):
    logger = MLFlowLogger(experiment_name="exp", run_name="first", save_dir=str(tmp_path / "mlruns"),
                          tags={"team": "a"}, prefix="p")
    assert logger.save_dir == str(tmp_path / "mlruns")
    with pytest.warns(UserWarning, match="truncated"):
        logger.log_hyperparams({"lr": 0.1, "model": {"layers": 2}, "long": "x" * 7000})
    for step in range(3):
        with pytest.warns(UserWarning, match="logged as 'p-bad key'"):
            logger.log_metrics({"loss": 1.0 / (step + 1), "bad key!": 1.0}, step=step)
    with pytest.warns(UserWarning, match="string"):
        logger.log_metrics({"note": "text"}, step=3)
    logger.finalize("success")

    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == logger.name == logger.experiment_id
    assert logger.version == logger.run_id
    assert run.data.tags["mlflow.runName"] == "first" and run.data.tags["team"] == "a"
    assert run.data.params["lr"] == "0.1" and run.data.params["model/layers"] == "2"
    assert 0 < len(run.data.params["long"]) < 7000  # truncated to MLflow's limit
    history = client.get_metric_history(logger.run_id, "p-loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert [m.step for m in client.get_metric_history(logger.run_id, "p-bad key")] == [0, 1, 2]
    assert client.get_experiment_by_name("exp").experiment_id == logger.experiment_id


@pytest.mark.parametrize(("status", "expected"), [("failed", "FAILED"), ("interrupted", "KILLED")])
def test_finalize_status(tmp_path, status, expected):
    logger = MLFlowLogger(save_dir=str(tmp_path))
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize(status)
    assert MlflowClient(f"file:{tmp_path}").get_run(logger.run_id).info.status == expected


def test_lazy_run_and_resume_by_id(tmp_path):
    logger = MLFlowLogger(save_dir=str(tmp_path))
    logger.finalize("success")  # never used: no run created, nothing written
    assert not tmp_path.joinpath("0").exists() and logger._client is None

    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    again = MLFlowLogger(save_dir=str(tmp_path), run_id=logger.run_id)
    again.log_metrics({"a": 2.0}, step=1)
    again.finalize("success")
    history = MlflowClient(f"file:{tmp_path}").get_metric_history(logger.run_id, "a")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 2.0)]
    assert again.experiment_id == logger.experiment_id


def test_log_model_true_uploads_at_the_end(tmp_path):
    logger = MLFlowLogger(save_dir=str(tmp_path / "mlruns"), log_model=True)
    callback = _checkpoint_callback(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.after_save_checkpoint(callback)
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    assert client.list_artifacts(logger.run_id) == []
    logger.finalize("success")

    folders = sorted(a.path for a in client.list_artifacts(logger.run_id))
    assert folders == ["epoch=1", "last"]
    files = sorted(a.path for a in client.list_artifacts(logger.run_id, "epoch=1"))
    assert files == ["epoch=1/aliases.txt", "epoch=1/epoch=1.ckpt", "epoch=1/metadata.yaml"]
    local = client.download_artifacts(logger.run_id, "epoch=1", str(tmp_path / "download"))
    metadata = yaml.safe_load(open(os.path.join(local, "metadata.yaml")))
    assert metadata["score"] == 0.25 and metadata["original_filename"] == "epoch=1.ckpt"
    assert metadata["Namespace"]["monitor"] == "val_loss"
    assert open(os.path.join(local, "aliases.txt")).read() == "['latest', 'best']"
    assert open(os.path.join(local, "epoch=1.ckpt"), "rb").read() == b"best weights"


def test_log_model_all_uploads_at_each_save(tmp_path):
    logger = MLFlowLogger(save_dir=str(tmp_path / "mlruns"), log_model="all", checkpoint_path_prefix="ckpt/")
    logger.after_save_checkpoint(_checkpoint_callback(tmp_path))
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    assert sorted(a.path for a in client.list_artifacts(logger.run_id, "ckpt")) == ["ckpt/epoch=1", "ckpt/last"]
    logger.finalize("success")


def test_bad_log_model():
    with pytest.raises(MisconfigurationException, match="log_model"):
        MLFlowLogger(log_model="best")
