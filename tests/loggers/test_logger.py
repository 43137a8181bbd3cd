"""The logger base class, shared helpers, lazy imports and missing-extra errors."""

import argparse
import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from fulmen.errors import MissingDependencyError
from fulmen.loggers import DummyLogger, Logger
from fulmen.loggers.logger import (
    _add_prefix,
    _checkpoints_to_upload,
    _convert_params,
    _flatten_dict,
    _sanitize_params,
)
from fulmen.saving import _yaml_safe


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_loads_no_optional_backend():
    result = _run(
        """
        import sys
        import fulmen.loggers
        heavy = ["tensorboard", "torch.utils.tensorboard", "mlflow", "wandb", "matplotlib", "yaml"]
        print(sorted(m for m in heavy if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "logger", "call", "extra"),
    [
        ("tensorboard", "TensorBoardLogger", "TensorBoardLogger('unused')", "tensorboard"),
        ("mlflow", "MLFlowLogger", "MLFlowLogger()", "mlflow"),
        ("wandb", "WandbLogger", "WandbLogger()", "wandb"),
    ],
)
def test_missing_backend_names_the_extra(module, logger, call, extra):
    result = _run(
        f"""
        import sys
        sys.modules[{module!r}] = None  # what an uninstalled package looks like to import
        from fulmen.errors import MissingDependencyError
        from fulmen.loggers import {logger}
        try:
            {call}
        except MissingDependencyError as err:
            print(err)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install 'fulmen[{extra}]'" in result.stdout
    assert logger in result.stdout and f"`{module}`" in result.stdout


def test_missing_backend_with_monkeypatch(monkeypatch, tmp_path):
    from fulmen.loggers import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingDependencyError, match="fulmen\\[tensorboard\\]"):
        TensorBoardLogger(tmp_path)


def test_logger_needs_name_version_and_log_methods():
    with pytest.raises(TypeError):
        Logger()

    class Minimal(Logger):
        name, version = "m", 0

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    logger = Minimal()
    assert logger.group_separator == "/"
    assert logger.root_dir is logger.log_dir is logger.save_dir is logger.experiment is None
    logger.log_graph(torch.nn.Linear(1, 1))
    logger.after_save_checkpoint(object())
    logger.finalize("success")


def test_dummy_logger_accepts_anything():
    logger = DummyLogger()
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_hyperparams({"lr": 1})
    logger.experiment.add_scalar("x", 1)
    logger.log_image("k", [])
    assert logger[0] is logger


def test_dummy_experiment_and_lightnings_log_hyperparams_signatures(tmp_path):
    from fulmen.loggers import CSVLogger
    from fulmen.loggers.logger import DummyExperiment

    experiment = DummyLogger().experiment
    assert isinstance(experiment, DummyExperiment) and experiment["any"] is experiment
    experiment["key"] = 1
    assert experiment.nop(1, a=2) is None and experiment.add_histogram("h", [1]) is None
    DummyLogger().log_hyperparams()  # Lightning's DummyLogger takes any arguments, none included
    DummyLogger().log_metrics()
    csv = CSVLogger(tmp_path, name="n", version=0)
    csv.log_hyperparams()  # `params` is optional in Lightning's CSVLogger
    csv.log_hyperparams({"lr": 0.1})
    csv.save()
    assert yaml.safe_load((tmp_path / "n" / "version_0" / "hparams.yaml").read_text()) == {"lr": 0.1}


def test_convert_and_flatten():
    @dataclasses.dataclass
    class Opt:
        lr: float = 0.1

    assert _convert_params(None) == {}
    assert _convert_params(argparse.Namespace(a=1)) == {"a": 1}
    params = {"a": {"b": 1, "c": {"d": 2}}, "ns": argparse.Namespace(x=1), "opt": Opt(), "empty": {}, 5: "k"}
    assert _flatten_dict(params) == {"a/b": 1, "a/c/d": 2, "ns/x": 1, "opt/lr": 0.1, "empty": {}, "5": "k"}
    assert _flatten_dict({"a": {"b": 1}}, delimiter=".") == {"a.b": 1}


def test_sanitize_params():
    clean = _sanitize_params(
        {"i": 1, "f": 0.5, "b": True, "s": "x", "t0": torch.tensor(3.0), "t": torch.tensor([1, 2]),
         "l": [1, 2], "none": None, "fn": len, "cls": torch.nn.Linear}
    )
    assert clean == {"i": 1, "f": 0.5, "b": True, "s": "x", "t0": 3.0, "t": "tensor([1, 2])",
                     "l": "[1, 2]", "none": "None", "fn": "len", "cls": "Linear"}


def test_add_prefix():
    assert _add_prefix({"a": 1}, "", "-") == {"a": 1}
    assert _add_prefix({"a": 1}, "pre", "-") == {"pre-a": 1}


def test_yaml_safe_round_trips_through_safe_load():
    value = {"t": (1, 2), "ns": argparse.Namespace(x=1), "obj": object(), "ten": torch.tensor([1.0, 2.0]),
             "s": torch.tensor(2), "nested": {"a": [None, True]}}
    loaded = yaml.safe_load(yaml.safe_dump(_yaml_safe(value)))
    assert loaded["t"] == [1, 2] and loaded["ns"] == {"x": 1} and loaded["ten"] == [1.0, 2.0] and loaded["s"] == 2
    assert loaded["obj"].startswith("<object object") and loaded["nested"] == {"a": [None, True]}


def test_checkpoints_to_upload(tmp_path):
    best, other = tmp_path / "best.ckpt", tmp_path / "other.ckpt"
    best.write_text("b")
    other.write_text("o")
    callback = argparse.Namespace(
        best_model_path=str(best), last_model_path=str(other), best_k_models={str(best): torch.tensor(0.1)},
        best_model_score=torch.tensor(0.1), current_score=torch.tensor(0.3),
    )
    found = _checkpoints_to_upload(callback, {})
    assert sorted((p, round(s, 4), is_best) for _, p, s, is_best in found) == [
        (str(best), 0.1, True),
        (str(other), 0.3, False),
    ]
    uploaded = {p: t for t, p, _, _ in found}
    assert _checkpoints_to_upload(callback, uploaded) == []


def test_other_ranks_log_nothing(tmp_path, monkeypatch):
    import fulmen.loggers.logger as logger_module
    from fulmen.loggers import CSVLogger

    monkeypatch.setattr(logger_module, "_global_rank", lambda: 1)
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1.0}, step=0)
    logger.experiment.log_metrics({"b": 2.0})  # user code calling the backend directly is ignored too
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []
