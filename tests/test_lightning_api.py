"""The table of Lightning's public paths and names (``fulmen._lightning_api``) holds for fulmen itself:
every name marked supported imports from the same path under ``fulmen``, every omission is absent and
explained, and the table covers the paths published Lightning code imports from."""

import importlib
import subprocess
import sys

from fulmen._lightning_api import FABRIC_API, FABRIC_OMITTED, LIGHTNING_API, OMITTED, fabric_rows, fulmen_path, omission, rows


def _resolves(module: str, name: str | None = None) -> bool:
    try:
        mod = importlib.import_module(fulmen_path(module))
    except ImportError:
        return False
    return name is None or hasattr(mod, name)


def test_every_supported_lightning_name_imports_from_the_same_path_under_fulmen():
    missing = [f"{fulmen_path(m)}.{n}" for m, names in LIGHTNING_API.items() for n in names
               if omission(m, n) is None and not _resolves(m, n)]
    assert not missing, f"listed as supported but not importable: {missing}"


def test_every_omission_is_absent_explained_and_names_a_real_lightning_path():
    now_present, stale = [], []
    for key, reason in OMITTED.items():
        module, _, name = key.partition(":")
        assert reason and reason.endswith((".", ")")), key
        if name:
            if name not in LIGHTNING_API.get(module, ()):
                stale.append(key)
            elif _resolves(module, name):
                now_present.append(key)
        else:
            if not any(m == module or m.startswith(module + ".") for m in LIGHTNING_API):
                stale.append(key)
            elif _resolves(module):
                now_present.append(key)
    assert not stale, f"OMITTED names paths Lightning does not have: {stale}"
    assert not now_present, f"fulmen has these now: remove them from OMITTED in fulmen/_lightning_api.py: {now_present}"


def test_the_paths_published_code_imports_are_supported():
    # the imports that failed in published Lightning programs (issue 10 item 1, issue 15 item 1)
    wanted = {
        "": ["cli_lightning_logo", "LightningModule", "Trainer"],
        "core": ["LightningModule", "LightningDataModule"],
        "core.hooks": ["DataHooks"],
        "demos": ["BoringModel", "BoringDataModule", "DemoModel", "Transformer", "WikiText2"],
        "demos.boring_classes": ["RandomDataset", "RandomIterableDataset", "BoringModel"],
        "demos.mnist_datamodule": ["MNIST", "MNISTDataModule"],
        "profilers": ["PyTorchProfiler", "SimpleProfiler", "AdvancedProfiler", "Profiler"],
        "profilers.pytorch": ["PyTorchProfiler"], "profilers.simple": ["SimpleProfiler"],
        "profilers.advanced": ["AdvancedProfiler"], "profilers.profiler": ["Profiler"],
        "utilities": ["CombinedLoader", "GradClipAlgorithmType", "is_picklable", "grad_norm", "rank_zero_only"],
        "utilities.rank_zero": ["rank_zero_only", "rank_zero_info", "rank_zero_warn"],
        "utilities.imports": ["_TORCHVISION_AVAILABLE"],
        "utilities.model_helpers": ["is_overridden", "get_torchvision_model"],
        "utilities.types": ["STEP_OUTPUT", "OptimizerLRScheduler", "LRSchedulerConfig"],
        "utilities.seed": ["isolate_rng"], "utilities.memory": ["garbage_collection_cuda"],
        "utilities.grads": ["grad_norm"], "utilities.model_summary": ["ModelSummary", "summarize"],
        "utilities.combined_loader": ["CombinedLoader"], "utilities.data": ["extract_batch_size"],
        "utilities.warnings": ["PossibleUserWarning"], "utilities.exceptions": ["MisconfigurationException"],
        "trainer.states": ["TrainerFn", "RunningStage", "TrainerStatus", "TrainerState"],
        "callbacks.progress": ["TQDMProgressBar", "RichProgressBar", "ProgressBar"],
        "callbacks.progress.tqdm_progress": ["Tqdm", "TQDMProgressBar"],
        "loggers.csv_logs": ["CSVLogger"], "loggers.tensorboard": ["TensorBoardLogger"],
        "loggers.mlflow": ["MLFlowLogger"], "loggers.wandb": ["WandbLogger"],
        "loggers.logger": ["DummyLogger", "DummyExperiment", "Logger"],
        "plugins": ["MixedPrecision", "HalfPrecision", "DoublePrecision", "Precision", "CheckpointIO",
                    "TorchCheckpointIO"],
        "plugins.precision": ["MixedPrecision"], "plugins.io": ["TorchCheckpointIO"],
        "plugins.environments": ["SLURMEnvironment", "TorchElasticEnvironment", "ClusterEnvironment"],
        "strategies": ["DDPStrategy", "SingleDeviceStrategy"], "strategies.ddp": ["DDPStrategy"],
        "cli": ["LightningCLI", "OptimizerCallable", "LRSchedulerCallable"],
    }
    for module, names in wanted.items():
        for name in names:
            assert name in LIGHTNING_API[module], (module, name)
            assert omission(module, name) is None, (module, name)
            assert _resolves(module, name), (module, name)


def test_rows_give_the_docs_one_entry_per_lightning_name():
    table = list(rows())
    assert len(table) == sum(len(v) for v in LIGHTNING_API.values())
    by_path = {r["lightning"]: r for r in table}
    assert by_path["lightning.pytorch.utilities.exceptions.MisconfigurationException"] == {
        "lightning": "lightning.pytorch.utilities.exceptions.MisconfigurationException",
        "fulmen": "fulmen.utilities.exceptions.MisconfigurationException", "note": ""}
    loop = by_path["lightning.pytorch.loops.fit_loop.RestartStage"]
    assert loop["fulmen"] is None and "hooks and callbacks" in loop["note"]
    assert by_path["lightning.pytorch.Trainer"]["fulmen"] == "fulmen.Trainer"


def test_import_fulmen_loads_none_of_the_lightning_path_modules():
    code = ("import sys, fulmen; bad = [m for m in sys.modules if m.startswith(('fulmen.demos', 'fulmen.core', "
            "'fulmen.plugins', 'fulmen.profilers', 'fulmen.utilities.model_summary', 'fulmen.callbacks.progress', "
            "'torchvision', 'onnx', 'rich', 'jsonargparse'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_lightning_logo_prints_the_logo_as_lightnings_examples_expect(capsys):
    from fulmen import cli_lightning_logo

    cli_lightning_logo()
    out = capsys.readouterr().out
    assert out.count("\n") >= 5 and "|_|" in out


def test_states_module_holds_the_trainers_state_types():
    from fulmen.demos import BoringModel
    from fulmen.trainer.states import RunningStage, TrainerFn, TrainerState, TrainerStatus

    seen = []

    class Look(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append((self.trainer.state.fn, self.trainer.state.stage))
            return super().training_step(batch, batch_idx)

    trainer = __import__("fulmen").Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                                           enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Look())
    assert seen == [(TrainerFn.FITTING, RunningStage.TRAINING)] and seen[0][0] == "fit"
    assert isinstance(trainer.state, TrainerState) and trainer.state.status == TrainerStatus.FINISHED


def test_lightning_fabrics_names_import_from_fulmen_fabric_or_are_explained():
    missing, now_present = [], []
    for module, names in FABRIC_API.items():
        path = ".".join(p for p in ("fabric", module) if p)
        for name in names:
            (now_present if f"{module}:{name}" in FABRIC_OMITTED else missing).append(f"{path}.{name}") \
                if _resolves(path, name) == (f"{module}:{name}" in FABRIC_OMITTED) else None
    assert not missing, f"listed as supported but not importable: {missing}"
    assert not now_present, f"fulmen has these now: remove them from FABRIC_OMITTED: {now_present}"
    assert all(key.partition(":")[2] in FABRIC_API[key.partition(":")[0]] for key in FABRIC_OMITTED)
    by_path = {r["lightning"]: r for r in fabric_rows()}
    assert by_path["lightning.fabric.Fabric"]["fulmen"] == "fulmen.fabric.Fabric"
    assert by_path["lightning.fabric.strategies.XLAStrategy"]["fulmen"] is None
