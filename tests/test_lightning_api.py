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


# -- public names Lightning users read (issue 21) ------------------------------------------------------------------
def test_hparams_checkpoint_keys_read_the_saved_hyperparameters_as_in_lightning(tmp_path):
    import torch

    import fulmen as pl
    from tests.helpers import BoringModel, make_loader

    class Model(BoringModel):
        def __init__(self, lr=0.1, width=32):
            super().__init__(lr=lr)
            self.save_hyperparameters()

    class Data(pl.LightningDataModule):
        def __init__(self, batch_size=8):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return make_loader(batch_size=self.hparams.batch_size)

    trainer = pl.Trainer(max_steps=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Model(lr=0.05), datamodule=Data(batch_size=16))
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    # Lightning's keys: a script that reads them from the class finds the same entries in fulmen's checkpoints
    assert (Model.CHECKPOINT_HYPER_PARAMS_KEY, Model.CHECKPOINT_HYPER_PARAMS_NAME,
            Model.CHECKPOINT_HYPER_PARAMS_TYPE) == ("hyper_parameters", "hparams_name", "hparams_type")
    assert dict(ckpt[Model.CHECKPOINT_HYPER_PARAMS_KEY]) == {"lr": 0.05, "width": 32}
    assert ckpt[Model.CHECKPOINT_HYPER_PARAMS_NAME] == "kwargs"
    assert Data.CHECKPOINT_HYPER_PARAMS_KEY == "datamodule_hyper_parameters"
    assert dict(ckpt[Data.CHECKPOINT_HYPER_PARAMS_KEY]) == {"batch_size": 16}
    assert ckpt[Data.CHECKPOINT_HYPER_PARAMS_NAME] == "kwargs" and Data.name is None


def test_strict_loading_false_lets_fit_resume_from_a_checkpoint_without_some_weights(tmp_path):
    import pytest
    import torch
    from torch import nn

    from tests.helpers import BoringModel, make_loader, quiet_trainer

    trainer = quiet_trainer(max_steps=2, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(BoringModel(), make_loader())
    path = trainer.checkpoint_callback.best_model_path

    class WithHead(BoringModel):  # a new head the old checkpoint does not have
        def __init__(self, strict):
            super().__init__()
            self.head = nn.Linear(2, 2)
            if not strict:
                self.strict_loading = False

        def configure_optimizers(self):  # the head is frozen: the optimizer state matches the checkpoint's
            return torch.optim.SGD(self.layer.parameters(), lr=self.lr)

    assert WithHead(strict=True).strict_loading is True
    with pytest.raises(RuntimeError, match="head"):
        quiet_trainer(max_steps=4).fit(WithHead(strict=True), make_loader(), ckpt_path=path)
    model = WithHead(strict=False)
    head = model.head.weight.detach().clone()
    resumed = quiet_trainer(max_steps=4)
    resumed.fit(model, make_loader(), ckpt_path=path)
    assert resumed.global_step == 4 and model.strict_loading is False
    assert torch.equal(model.head.weight, head)  # not in the checkpoint, and not trained (outside the loss)


def test_toggled_optimizer_freezes_the_other_optimizers_parameters_inside_the_block_only():
    import pytest
    import torch
    from torch import nn

    import fulmen as pl
    from tests.helpers import make_loader, quiet_trainer

    seen = []

    class Gan(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.g, self.d = nn.Linear(32, 32), nn.Linear(32, 1)

        def training_step(self, batch, batch_idx):
            opt_g, opt_d = self.optimizers()
            with self.toggled_optimizer(opt_g):
                seen.append((self.g.weight.requires_grad, self.d.weight.requires_grad))
                loss = self.d(self.g(batch[0])).mean()
                self.manual_backward(loss)
                opt_g.step()
                opt_g.zero_grad()
            seen.append((self.g.weight.requires_grad, self.d.weight.requires_grad))
            if batch_idx == 1:
                with pytest.raises(ZeroDivisionError), self.toggled_optimizer(opt_d):
                    seen.append((self.g.weight.requires_grad, self.d.weight.requires_grad))
                    1 / 0
                seen.append((self.g.weight.requires_grad, self.d.weight.requires_grad))

        def configure_optimizers(self):
            return torch.optim.SGD(self.g.parameters(), lr=0.1), torch.optim.SGD(self.d.parameters(), lr=0.1)

    quiet_trainer(max_steps=2).fit(Gan(), make_loader())
    assert seen == [(True, False), (True, True), (True, False), (True, True), (False, True), (True, True)]


def test_strategy_on_exception_is_called_with_the_error_after_the_callbacks_and_the_datamodule():
    import pytest

    import fulmen as pl
    from fulmen.strategies import SingleDeviceStrategy
    from tests.helpers import BoringModel, make_loader, quiet_trainer

    calls = []

    class Careful(SingleDeviceStrategy):
        def on_exception(self, exception):
            calls.append(("strategy", str(exception)))

    class Note(pl.Callback):
        def on_exception(self, trainer, pl_module, exception):
            calls.append(("callback", str(exception)))

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return make_loader()

        def on_exception(self, exception):
            calls.append(("datamodule", str(exception)))

    class Broken(BoringModel):
        def training_step(self, batch, batch_idx):
            raise ValueError("bad batch")

    trainer = quiet_trainer(max_steps=1, strategy=Careful("cpu"), callbacks=[Note()])
    with pytest.raises(ValueError, match="bad batch"):
        trainer.fit(Broken(), datamodule=Data())
    assert calls == [("callback", "bad batch"), ("datamodule", "bad batch"), ("strategy", "bad batch")]
    assert trainer.interrupted


def test_trainer_evaluating_and_profiler_local_rank():
    from fulmen.profilers import SimpleProfiler
    from tests.helpers import BoringModel, make_loader, quiet_trainer

    seen = []

    class Look(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(("train", self.trainer.evaluating))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(("sanity" if self.trainer.sanity_checking else "val", self.trainer.evaluating))

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(("test", self.trainer.evaluating))

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(("predict", self.trainer.evaluating))

    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, limit_test_batches=1,
                            limit_predict_batches=1,
                            num_sanity_val_steps=1, profiler=SimpleProfiler())
    model = Look()
    trainer.fit(model, make_loader(), make_loader())
    trainer.test(model, make_loader(), verbose=False)
    trainer.predict(model, make_loader())
    assert seen == [("sanity", True), ("train", False), ("val", True), ("test", True), ("predict", False)]
    assert trainer.profiler.local_rank == 0 and not trainer.evaluating


def test_advanced_profiler_dump_stats_writes_each_actions_pstats_where_lightning_does(tmp_path):
    import pstats

    import pytest

    from fulmen.errors import MisconfigurationException
    from fulmen.profilers import AdvancedProfiler
    from tests.helpers import BoringModel, make_loader, quiet_trainer

    profiler = AdvancedProfiler(dirpath=tmp_path / "prof", filename="perf", dump_stats=True)
    quiet_trainer(max_steps=2, profiler=profiler).fit(BoringModel(), make_loader())
    path = tmp_path / "prof" / "fit-perf-[LightningModule]BoringModel.training_step.prof"
    assert path.is_file() and (tmp_path / "prof" / "fit-perf.txt").is_file()
    stats = pstats.Stats(str(path)).stats
    assert sum(calls for (_, _, fn), (calls, *_) in stats.items() if fn == "training_step") == 2

    alone = AdvancedProfiler(dump_stats=True)  # no folder and no Trainer to give one
    with alone.profile("step"):
        sum(range(10))
    with pytest.raises(MisconfigurationException, match="dirpath="):
        alone.summary()


def test_has_len_all_ranks_at_lightnings_path():
    import pytest
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from fulmen.errors import EmptyLoaderError
    from fulmen.strategies import SingleDeviceStrategy
    from fulmen.utilities.data import has_len_all_ranks
    from tests.helpers import make_loader

    one = SingleDeviceStrategy("cpu")
    assert has_len_all_ranks(make_loader(n=64, batch_size=8), one) is True

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    assert has_len_all_ranks(DataLoader(Stream()), one) is False
    with pytest.warns(UserWarning, match="no batches on any process"):
        assert has_len_all_ranks([], one) is True

    class FourRanks(SingleDeviceStrategy):  # the other processes hold 4 batches, this one none
        def reduce(self, tensor, group=None, reduce_op="mean"):
            return tensor + 4

    with pytest.raises(EmptyLoaderError, match="allow_zero_length_dataloader_with_multiple_devices") as err:
        has_len_all_ranks([], FourRanks("cpu"))
    assert isinstance(err.value, RuntimeError)  # Lightning's type
    with pytest.warns(UserWarning, match="no batches on this process"):
        assert has_len_all_ranks([], FourRanks("cpu"), allow_zero_length_dataloader_with_multiple_devices=True)
    assert torch.is_tensor(FourRanks("cpu").reduce(torch.tensor(0)))


# -- Lightning's module paths that fulmen re-exports (issue 21) ----------------------------------------------------
def test_tuner_package_paths_give_the_tuner_and_its_result(tmp_path):
    from fulmen.tuner import Tuner
    from fulmen.tuner.lr_finder import _LRFinder
    from fulmen.tuner.tuning import Tuner as TunerAtLightningsPath
    from tests.helpers import BoringModel, make_loader, quiet_trainer

    assert TunerAtLightningsPath is Tuner
    finder = Tuner(quiet_trainer(max_epochs=1, default_root_dir=tmp_path)).lr_find(
        BoringModel(), make_loader(n=64, batch_size=4), num_training=6, update_attr=False)
    assert isinstance(finder, _LRFinder) and len(finder.results["lr"]) == 6
    assert finder.results["lr"][0] < finder.results["lr"][-1]


def test_loggers_utilities_scan_checkpoints_tags_what_a_logger_uploads(tmp_path):
    import os

    import fulmen as pl
    from fulmen.callbacks import ModelCheckpoint
    from fulmen.loggers.utilities import _scan_checkpoints
    from tests.helpers import BoringModel, make_loader

    class Falling(BoringModel):  # val_loss 3, 2, 1: the newest checkpoint is always the best
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("val_loss", 3.0 - self.current_epoch)

    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Falling(), make_loader(), make_loader())
    found = _scan_checkpoints(ckpt, {})
    tags = {os.path.basename(path): (tag, float(score)) for _, path, score, tag in found}
    assert tags == {"epoch=1-step=4.ckpt": ("best_k", 2.0), "epoch=2-step=6.ckpt": ("best_k", 1.0),
                    "last.ckpt": ("latest", 1.0)}
    assert [t for t, *_ in found] == sorted(t for t, *_ in found)  # oldest first
    logged = {path: mtime for mtime, path, *_ in found}
    assert _scan_checkpoints(ckpt, logged) == []  # nothing new since they were uploaded


def test_launchers_and_overrides_paths_name_fulmens_launchers_and_sampler():
    from torch.utils.data import DistributedSampler

    import fulmen as pl
    from fulmen.overrides.distributed import UnrepeatedDistributedSampler
    from fulmen.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
    from fulmen.strategies.launchers.multiprocessing import _MultiProcessingLauncher as Spawn
    from fulmen.strategies.launchers.subprocess_script import _SubprocessScriptLauncher as Script

    assert Spawn is _MultiProcessingLauncher and Script is _SubprocessScriptLauncher
    spawn = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    script = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert isinstance(spawn.strategy.launcher, _MultiProcessingLauncher)
    assert isinstance(script.strategy.launcher, _SubprocessScriptLauncher)

    # Lightning's results: each sample once over the ranks, no padding, shuffled unless asked not to
    ranks = [UnrepeatedDistributedSampler(list(range(7)), num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]
    assert [list(s) for s in ranks] == [[0, 2, 4, 6], [1, 3, 5]] and [len(s) for s in ranks] == [4, 3]
    shuffled = [UnrepeatedDistributedSampler(list(range(7)), num_replicas=2, rank=r) for r in (0, 1)]
    assert shuffled[0].shuffle and sorted(list(shuffled[0]) + list(shuffled[1])) == list(range(7))
    assert isinstance(ranks[0], DistributedSampler)


# -- exception types, warnings and logger names Lightning's users rely on (issue 21) ----------------------------------
def test_info_records_carry_lightnings_logger_names_under_fulmen(tmp_path, caplog):
    import logging

    import fulmen as pl
    from fulmen.callbacks import EarlyStopping
    from tests.helpers import BoringModel, make_loader

    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[EarlyStopping("val_loss", verbose=True)])
    model = BoringModel()
    with caplog.at_level(logging.INFO, logger="fulmen"):
        trainer.fit(model, make_loader(), make_loader())
        trainer.test(model, make_loader(), ckpt_path="best", verbose=False)
    names = {(r.name, r.getMessage().split(" ")[0]) for r in caplog.records}
    assert ("fulmen.utilities.rank_zero", "Restoring") in names  # rank_zero_info, as Lightning's module logger
    assert ("fulmen.callbacks.early_stopping", "val_loss") in names  # "val_loss improved to ..."
    assert all(r.name.startswith("fulmen.") for r in caplog.records)  # so logging.getLogger("fulmen") governs all

    caplog.clear()
    fulmen_logger = logging.getLogger("fulmen")
    level = fulmen_logger.level
    fulmen_logger.setLevel(logging.WARNING)  # what a user writes to silence them
    try:
        trainer.test(model, make_loader(), ckpt_path="best", verbose=False)
    finally:
        fulmen_logger.setLevel(level)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]


def test_wrong_model_arguments_raise_a_type_error_as_in_lightning():
    import pytest
    from torch import nn

    from fulmen.errors import ArgumentTypeError, MisconfigurationException
    from tests.helpers import make_loader, quiet_trainer

    with pytest.raises(TypeError, match="LightningModule") as err:
        quiet_trainer(max_steps=1).fit(nn.Linear(32, 2), make_loader())
    assert isinstance(err.value, ArgumentTypeError) and isinstance(err.value, MisconfigurationException)
    for stage in ("validate", "test", "predict"):
        with pytest.raises(TypeError, match=f"trainer.{stage}\\(model"):
            getattr(quiet_trainer(), stage)()


def test_two_progress_bars_are_refused_as_in_lightning():
    import pytest

    import fulmen as pl
    from fulmen.callbacks import TQDMProgressBar
    from fulmen.errors import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="2 progress bars"):
        pl.Trainer(logger=False, callbacks=[TQDMProgressBar(), TQDMProgressBar(refresh_rate=5)])


def test_a_shuffled_evaluation_loader_warns_and_an_ordered_one_does_not(recwarn):
    import warnings

    import pytest
    from torch.utils.data import DataLoader

    from fulmen.utilities.warnings import PossibleUserWarning
    from tests.helpers import BoringModel, make_loader, quiet_trainer

    ordered = make_loader()
    shuffled = DataLoader(ordered.dataset, batch_size=8, shuffle=True)
    with pytest.warns(PossibleUserWarning, match="shuffle=False"):
        quiet_trainer().validate(BoringModel(), shuffled, verbose=False)
    with pytest.warns(PossibleUserWarning, match="test DataLoader"):
        quiet_trainer().test(BoringModel(), shuffled, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quiet_trainer().validate(BoringModel(), ordered, verbose=False)
    assert set(result[0]) == {"val_loss"}


def test_self_log_outside_a_run_warns_and_records_nothing():
    import pytest
    import torch

    from tests.helpers import BoringModel, make_loader

    model = BoringModel()
    batch = next(iter(make_loader()))
    with pytest.warns(UserWarning, match="'train_loss'.*not attached to a Trainer"):
        loss = model.training_step(batch, 0)
    assert torch.is_tensor(loss) and model._trainer is None


def test_finder_callbacks_list_their_modes_as_lightning_does():
    import pytest

    from fulmen.callbacks import BatchSizeFinder, LearningRateFinder
    from fulmen.errors import MisconfigurationException

    assert set(BatchSizeFinder.SUPPORTED_MODES) == {"power", "binsearch"}
    assert set(LearningRateFinder.SUPPORTED_MODES) == {"linear", "exponential"}
    for mode in BatchSizeFinder.SUPPORTED_MODES:
        assert BatchSizeFinder(mode=mode)._mode == mode
    for mode in LearningRateFinder.SUPPORTED_MODES:
        assert LearningRateFinder(mode=mode)._mode == mode
    with pytest.raises(MisconfigurationException, match="'exponential' or 'linear'"):
        LearningRateFinder(mode="cosine")


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
