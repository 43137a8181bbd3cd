"""fulmen.core: Lightning's core paths hold fulmen's classes, and core.saving reads and writes hparams files."""

import argparse

import pytest


def test_core_paths_are_fulmens_classes():
    import fulmen
    from fulmen.core import LightningDataModule, LightningModule
    from fulmen.core.datamodule import LightningDataModule as DM
    from fulmen.core.hooks import DataHooks
    from fulmen.core.mixins import HyperparametersMixin
    from fulmen.core.module import LightningModule as LM
    from fulmen.core.optimizer import LightningOptimizer

    assert LightningModule is LM is fulmen.LightningModule and LightningDataModule is DM is fulmen.LightningDataModule
    assert issubclass(LightningModule, (DataHooks, HyperparametersMixin)) and issubclass(DM, DataHooks)
    assert LightningOptimizer.__name__ == "LightningOptimizer"


def test_save_hparams_to_yaml_round_trips(tmp_path):
    from fulmen.core.saving import load_hparams_from_yaml, save_hparams_to_yaml

    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, argparse.Namespace(lr=0.1, layers=[1, 2], name="x", nested={"a": 1}))
    assert load_hparams_from_yaml(path) == {"lr": 0.1, "layers": [1, 2], "name": "x", "nested": {"a": 1}}
    save_hparams_to_yaml(path, {"lr": 0.2})  # replaces the file whole
    assert load_hparams_from_yaml(path) == {"lr": 0.2}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_hparams_to_yaml(tmp_path / "missing" / "h.yaml", {"a": 1})
