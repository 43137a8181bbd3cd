"""LightningCLI and the ``fulmen`` command, run against ``cli_example_pkg`` as a user's package.

The command line is run as real subprocesses (the console script and ``python -m fulmen``); the
extension points are checked in-process, where they are cheap. Subprocesses that do not depend on
each other run in parallel to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("jsonargparse")

from fulmen import errors as pl_errors  # noqa: E402
from fulmen.callbacks import Callback, EarlyStopping  # noqa: E402
from fulmen.loggers import CSVLogger  # noqa: E402
from fulmen.cli import (  # noqa: E402
    ConfigExistsError,
    LightningCLI,
    LRSchedulerCallable,
    OptimizerCallable,
    ReduceLROnPlateau,
    SaveConfigCallback,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import cli_example_pkg as pkg  # noqa: E402

FULMEN = [str(Path(sys.executable).with_name("fulmen"))]
if not Path(FULMEN[0]).exists():  # not installed as a script: the module entry point is the same code
    FULMEN = [sys.executable, "-m", "fulmen"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
MODEL_DATA = ["--model", "cli_example_pkg.BoringModel", "--data", "cli_example_pkg.RandomData"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]


def fulmen(*runs: list[str], cwd: Path, ok: bool = True) -> list[subprocess.CompletedProcess]:
    """Run several ``fulmen`` command lines at once and wait for all of them."""
    procs = [subprocess.Popen(FULMEN + [str(a) for a in argv], cwd=cwd, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in runs]
    done = [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]
    for result in done:
        if ok:
            assert result.returncode == 0, result.stderr
    return done


def result(root: Path, stage: str) -> dict:
    return json.loads((root / f"result_{stage}.json").read_text())


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's


# -- the command line, as subprocesses ----------------------------------------------------------------

def test_every_subcommand_and_resume(tmp_path):
    root = tmp_path / "run"
    fulmen(["fit", *MODEL_DATA, *QUIET, "--trainer.default_root_dir", root, "--model.hidden", 6,
            "--seed_everything", 5], cwd=tmp_path)
    fit = result(root, "fit")
    log_dir = Path(fit["log_dir"])
    cli_keys = {"_instantiator": "fulmen.cli.instantiate_module"}  # what Lightning's CLI records too
    assert fit["global_step"] == 3 and fit["datamodule"] == "RandomData"
    assert fit["hparams"] == {"hidden": 6, "lr": 0.1, "_class_path": "cli_example_pkg.BoringModel", **cli_keys}
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 5 and saved["model"]["init_args"]["hidden"] == 6
    [ckpt] = (log_dir / "checkpoints").glob("*.ckpt")

    reuse = ["--config", log_dir / "config.yaml", "--ckpt_path", ckpt]
    fulmen(["validate", *reuse, "--trainer.default_root_dir", tmp_path / "val"],
           ["test", *reuse, "--trainer.default_root_dir", tmp_path / "test"],
           ["predict", *reuse, "--trainer.default_root_dir", tmp_path / "pred"],
           ["fit", *reuse, "--trainer.max_epochs", 2, "--trainer.default_root_dir", tmp_path / "resumed"],
           cwd=tmp_path)
    val, test, pred = result(tmp_path / "val", "validate"), result(tmp_path / "test", "test"), result(tmp_path / "pred", "predict")
    for stage in (val, test, pred):
        assert stage["weights"] == fit["weights"]  # the checkpoint was loaded
    # the data are the same for val and test loaders, so the metrics agree exactly
    assert val["metrics"]["val_loss"] == pytest.approx(test["metrics"]["test_loss"])
    assert val["metrics"]["val_loss"] == pytest.approx(fit["metrics"]["val_loss"])
    assert pred["predictions"] == 12  # 3 batches of 4
    resumed = result(tmp_path / "resumed", "fit")
    assert resumed["global_step"] == 6 and resumed["weights"] != fit["weights"]


def test_print_config_round_trip_subclass_mode_and_optimizer(tmp_path):
    wide = ["fit", "--model=cli_example_pkg.WideModel", "--model.init_args.hidden", 5, "--data",
            "cli_example_pkg.RandomData", *QUIET, "--optimizer", "AdamW", "--optimizer.lr", 0.01,
            "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", 2, "--seed_everything", 11]
    direct, printed = fulmen([*wide, "--trainer.default_root_dir", tmp_path / "direct"],
                             [*wide, "--trainer.default_root_dir", tmp_path / "elsewhere", "--print_config"],
                             cwd=tmp_path)
    run = result(tmp_path / "direct", "fit")
    assert run["hparams"] == {"hidden": 5, "dropout": 0.0, "lr": 0.1, "_class_path": "cli_example_pkg.WideModel",
                              "_instantiator": "fulmen.cli.instantiate_module"}
    assert (run["optimizer"], run["optimizer_lr"], run["scheduler"]) == ("AdamW", 0.01, "StepLR")
    config = yaml.safe_load(printed.stdout)
    assert config["model"]["class_path"] == "cli_example_pkg.WideModel" and config["seed_everything"] == 11
    assert not (tmp_path / "elsewhere").exists()  # --print_config prints and stops

    (tmp_path / "printed.yaml").write_text(printed.stdout)
    (tmp_path / "later.yaml").write_text(f"trainer:\n  default_root_dir: {tmp_path / 'again'}\n")
    fulmen(["fit", "--config", tmp_path / "printed.yaml", "--config", tmp_path / "later.yaml"], cwd=tmp_path)
    again = result(tmp_path / "again", "fit")  # the later file's default_root_dir won
    assert again["weights"] == run["weights"] and again["metrics"] == run["metrics"]


BAD_INPUT = {
    "unknown flag": (["fit", *MODEL_DATA, "--trainer.max_epohcs", "3"], ["unknown option", "--trainer.max_epohcs"]),
    "wrong type": (["fit", *MODEL_DATA, "--trainer.max_epochs", "abc"], ["--trainer.max_epochs expects an integer", "'abc'"]),
    "wrong type in a class": (["fit", *MODEL_DATA, "--model.hidden", "wide"], ["--model.init_args.hidden expects an integer"]),
    "missing required": (["fit", "--data", "cli_example_pkg.RandomData"], ["--model is required"]),
    "missing scheduler arg": (["fit", *MODEL_DATA, "--optimizer", "SGD", "--optimizer.lr", "0.1", "--lr_scheduler", "StepLR"],
                              ["StepLR needs --lr_scheduler.init_args.step_size"]),
    "no such module": (["fit", "--model", "no_such_pkg.Model"], ["--model", "no_such_pkg", "importable"]),
    "no such class": (["fit", "--model", "cli_example_pkg.Nope"], ["--model", "'Nope'"]),
    "not a module": (["fit", "--model", "cli_example_pkg.RandomData"], ["not a LightningModule"]),
    "unknown optimizer": (["fit", *MODEL_DATA, "--optimizer", "NoSuchOpt"], ["--optimizer", "'NoSuchOpt'"]),
    "yaml syntax": (["fit", *MODEL_DATA, "--config", "bad.yaml"], ["bad.yaml, line 3, column 2", "not valid YAML"]),
    "unknown key in yaml": (["fit", *MODEL_DATA, "--config", "typo.yaml"], ["trainer.max_epocs", "Did you mean `--trainer.max_epochs`?"]),
    "no config file": (["fit", *MODEL_DATA, "--config", "none.yaml"], ["--config", "none.yaml"]),
    "bad trainer value": (["fit", *MODEL_DATA, "--trainer.max_epochs", "-5"], ["max_epochs=-5"]),
    "unknown command": (["fitt"], ["unknown command 'fitt'", "fulmen fit"]),
}


def test_bad_input_exits_2_with_one_paragraph(tmp_path):
    (tmp_path / "bad.yaml").write_text("trainer:\n  max_epochs: 1\n model: [\n")
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_epocs: 1\n")
    # one real process (`python -m fulmen`) for the exit status of the process itself ...
    real = subprocess.run([sys.executable, "-m", "fulmen", "fit", *MODEL_DATA, "--trainer.max_epochs", "abc"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert real.returncode == 2 and "Traceback" not in real.stderr
    assert real.stderr.startswith("fulmen fit: error: --trainer.max_epochs expects an integer")
    # ... and one process for all the cases through the same entry point (each import costs seconds)
    driver = textwrap.dedent("""
        import contextlib, io, json, sys
        import fulmen
        from fulmen.__main__ import main
        out = {"jsonargparse imported by `import fulmen`": "jsonargparse" in sys.modules}
        for name, argv in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                out[name] = [main(argv), err.getvalue()]
        print(json.dumps(out))
    """)
    cases = {name: argv for name, (argv, _) in BAD_INPUT.items()}
    proc = subprocess.run([sys.executable, "-c", driver, json.dumps(cases)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got.pop("jsonargparse imported by `import fulmen`") is False
    for name, (_, expected) in BAD_INPUT.items():
        status, message = got[name]
        assert status == 2, (name, message)
        assert message.count("\n") == 1 and "Traceback" not in message, (name, message)  # one paragraph
        for part in expected:
            assert part in message, (name, message)


def test_help_and_plot_work_without_the_extra_which_fit_names(tmp_path):
    blocked = textwrap.dedent("""
        import sys
        sys.modules["jsonargparse"] = None  # as if the `cli` extra were not installed
        from fulmen.__main__ import main
        try:
            import fulmen.cli
        except ImportError as err:
            print("import error:", err)
        print("help status", main(["--help"]))
        print("fit status", main(["fit", "--model", "cli_example_pkg.BoringModel"]))
        print("plot usage status", main(["plot"]))
    """)
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    for command in ("fit", "validate", "test", "predict", "plot"):  # one line each
        assert sum(line.startswith(f"  {command} ") for line in lines) == 1, proc.stdout
    assert "help status 0" in lines
    assert "import error:" in proc.stdout and "pip install 'fulmen[cli]'" in proc.stdout
    assert "fit status 1" in lines and "pip install 'fulmen[cli]'" in proc.stderr
    assert "plot usage status 2" in lines  # the other commands work without the extra
    assert "Traceback" not in proc.stderr


# -- the Python API, in-process ------------------------------------------------------------------------

FAST = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
        "logger": False}


def test_run_false_builds_model_data_trainer_from_list_or_dict():
    cli = LightningCLI(pkg.BoringModel, pkg.RandomData, run=False, args=[
        "--model.hidden", "7", "--data.batch_size", "2", "--trainer.max_epochs", "2", "--seed_everything", "3"])
    assert isinstance(cli.model, pkg.BoringModel) and cli.model.net[0].out_features == 7
    assert isinstance(cli.datamodule, pkg.RandomData) and cli.datamodule.hparams.batch_size == 2
    assert cli.trainer.max_epochs == 2 and cli.config.seed_everything == 3
    assert os.environ["PL_GLOBAL_SEED"] == "3"
    cli = LightningCLI(pkg.BoringModel, run=False, seed_everything_default=False,
                       args={"model": {"lr": 0.5}, "trainer": {"max_steps": 4}})
    assert cli.model.hparams.lr == 0.5 and cli.trainer.max_steps == 4 and cli.datamodule is None
    assert cli.config.seed_everything is False
    cli = LightningCLI(pkg.BoringModel, run=False, args=[
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "logs", "--trainer.logger.name", "cli",
        "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val_loss"])
    assert isinstance(cli.trainer.logger, CSVLogger) and cli.trainer.logger.root_dir == os.path.join("logs", "cli")
    [stopper] = [cb for cb in cli.trainer.callbacks if isinstance(cb, EarlyStopping)]
    assert stopper.monitor == "val_loss"


class WithCallables(pkg.BoringModel):
    # at module level: jsonargparse resolves the (postponed) annotations from the module's globals
    def __init__(self, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: LRSchedulerCallable = torch.optim.lr_scheduler.ConstantLR):
        super().__init__()
        self.optimizer, self.scheduler = optimizer, scheduler

    def configure_optimizers(self):
        opt = self.optimizer(self.parameters())
        return {"optimizer": opt, "lr_scheduler": self.scheduler(opt)}


def test_optimizer_callable_hints_take_a_class_and_its_arguments_from_the_command_line():
    cli = LightningCLI(WithCallables, run=False, args=[
        "--model.optimizer", "SGD", "--model.optimizer.lr", "0.25", "--model.scheduler", "StepLR",
        "--model.scheduler.step_size", "3"])
    config = cli.model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD) and config["optimizer"].param_groups[0]["lr"] == 0.25
    assert isinstance(config["lr_scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"].step_size == 3
    default = LightningCLI(WithCallables, run=False, args=[]).model.configure_optimizers()
    assert isinstance(default["optimizer"], torch.optim.Adam)


def test_optimizer_and_scheduler_replace_configure_optimizers():
    with pytest.warns(UserWarning, match="configure_optimizers` is replaced by the --optimizer"):
        cli = LightningCLI(pkg.BoringModel, run=False, args=[
            "--optimizer", "AdamW", "--optimizer.lr", "3e-4", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "10"])
    [opt], [sched] = cli.model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 3e-4
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.step_size == 10
    with pytest.warns(UserWarning):
        plateau = LightningCLI(pkg.BoringModel, run=False, args=[
            "--optimizer", "SGD", "--optimizer.lr", "0.1", "--lr_scheduler", "fulmen.cli.ReduceLROnPlateau",
            "--lr_scheduler.monitor", "val_loss"]).model.configure_optimizers()
    assert isinstance(plateau["lr_scheduler"]["scheduler"], ReduceLROnPlateau)
    assert plateau["lr_scheduler"]["monitor"] == "val_loss"
    own = LightningCLI(pkg.BoringModel, run=False, args=["--model.lr", "0.2"]).model.configure_optimizers()
    assert isinstance(own, torch.optim.SGD) and own.param_groups[0]["lr"] == 0.2  # no --optimizer: the model's own


class Recorder(Callback):
    """A callback the CLI adds from its own argument group."""

    def __init__(self, tag: str = "none") -> None:
        self.tag = tag


class HookedCLI(LightningCLI):
    calls: list[str] = []

    def add_arguments_to_parser(self, parser):
        parser.add_argument("--notes", default="none")
        parser.add_lightning_class_args(Recorder, "recorder")
        parser.link_arguments("data.batch_size", "model.hidden")

    def before_instantiate_classes(self):
        self.calls.append("before_instantiate_classes")

    def before_fit(self):
        self.calls.append("before_fit")

    def after_fit(self):
        self.calls.append(f"after_fit step={self.trainer.global_step}")


def test_extension_points_and_saved_config(tmp_path):
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("data:\n  num_batches: 2\n")
    extra_callback = Recorder("from trainer_defaults")
    cli = HookedCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults={**FAST, "callbacks": extra_callback},
                    parser_kwargs={"fit": {"default_config_files": [str(defaults)]}},
                    save_config_kwargs={"config_filename": "run.yaml"},
                    args=["fit", "--data.batch_size", "3", "--notes", "hello", "--recorder.tag", "cli",
                          "--trainer.default_root_dir", str(tmp_path)])
    assert HookedCLI.calls == ["before_instantiate_classes", "before_fit", "after_fit step=2"]
    assert cli.model.net[0].out_features == 3  # linked from data.batch_size
    assert cli.config.fit.notes == "hello"
    tags = [cb.tag for cb in cli.trainer.callbacks if isinstance(cb, Recorder)]
    assert tags == ["cli", "from trainer_defaults"]
    assert any(isinstance(cb, SaveConfigCallback) for cb in cli.trainer.callbacks)
    saved = yaml.safe_load((tmp_path / "run.yaml").read_text())  # logger=False: log_dir is default_root_dir
    assert saved["data"]["num_batches"] == 2 and saved["notes"] == "hello" and saved["recorder"]["tag"] == "cli"


def test_existing_config_is_not_overwritten_unless_asked(tmp_path):
    args = ["fit", "--trainer.default_root_dir", str(tmp_path)]
    LightningCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults=FAST, args=args)
    first = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigExistsError, match="overwrite"):
        LightningCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults=FAST, args=[*args, "--model.hidden", "9"])
    assert (tmp_path / "config.yaml").read_text() == first
    LightningCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults=FAST, save_config_kwargs={"overwrite": True},
                 args=[*args, "--model.hidden", "9"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == 9


def test_no_seed_given_seeds_0_as_lightning_and_the_saved_config_repeats_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    first = LightningCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults=FAST,
                         args=["fit", "--trainer.default_root_dir", str(tmp_path / "a")])
    saved = tmp_path / "a" / "config.yaml"
    seed = yaml.safe_load(saved.read_text())["seed_everything"]
    assert seed == 0 and not isinstance(seed, bool)
    monkeypatch.setenv("PL_GLOBAL_SEED", "23")  # as Lightning: the variable is the seed when none is given
    assert LightningCLI(pkg.BoringModel, run=False, args=[]).config.seed_everything == 23
    torch.manual_seed(seed + 1)  # whatever the state now, the config alone decides the run
    again = LightningCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults=FAST,
                         args=["fit", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "b")])
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_builtin_callbacks_by_short_name_and_their_arguments_parse_as_in_lightning():
    from datetime import timedelta

    cli = LightningCLI(pkg.BoringModel, pkg.RandomData, run=False, save_config_callback=None, args=[
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=link",
        "--trainer.callbacks.every_n_epochs=2", "--trainer.callbacks.monitor=val_loss", "--trainer.callbacks.mode=max",
        "--trainer.callbacks+=LearningRateMonitor", "--trainer.callbacks.logging_interval=step",
        "--trainer.callbacks.log_momentum=true",
        "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val_loss", "--trainer.callbacks.patience=3",
        "--trainer.val_check_interval=00:00:10:00"])
    by_type = {type(cb).__name__: cb for cb in cli.trainer.callbacks}
    ckpt = cli.trainer.checkpoint_callback
    assert ckpt.save_last == "link" and ckpt._every_n_epochs == 2 and (ckpt.monitor, ckpt.mode) == ("val_loss", "max")
    lr = by_type["LearningRateMonitor"]
    assert lr.logging_interval == "step" and lr.log_momentum is True
    assert by_type["EarlyStopping"].patience == 3
    assert cli.trainer._val_check_seconds == timedelta(minutes=10).total_seconds()


def test_limit_flags_parse_as_lightning_parses_them():
    """Lightning's Trainer types limit_*_batches as float | int, so its CLI reads "1" as 1.0 (every batch) and "3"
    as 3.0, which the Trainer takes as 3 batches; fulmen's reads them the same way."""
    cli = LightningCLI(pkg.BoringModel, run=False, save_config_callback=None, args=[
        "--trainer.limit_val_batches=1", "--trainer.limit_train_batches=3", "--trainer.limit_test_batches=0.5"])
    assert cli.config.trainer.limit_val_batches == 1.0 and isinstance(cli.config.trainer.limit_val_batches, float)
    assert cli.trainer.limit_val_batches == 1.0 and isinstance(cli.trainer.limit_val_batches, float)
    assert cli.trainer.limit_train_batches == 3 and isinstance(cli.trainer.limit_train_batches, int)
    assert cli.trainer.limit_test_batches == 0.5


def test_cli_checkpoints_rebuild_their_model_with_load_from_checkpoint(tmp_path):
    """As Lightning's: hyper_parameters hold the resolved config and "_instantiator", so a model with a nested
    class argument comes back from load_from_checkpoint without the command line."""
    LightningCLI(pkg.WithEncoder, pkg.RandomData, trainer_defaults=FAST, args=[
        "fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_checkpointing", "true",
        "--model.encoder", "torch.nn.Linear",
        "--model.encoder.in_features", "3", "--model.encoder.out_features", "5", "--model.lr", "0.05"])
    (ckpt,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(ckpt)["hyper_parameters"]  # a plain torch.load reads it too
    assert saved["_instantiator"] == "fulmen.cli.instantiate_module" and saved["lr"] == 0.05
    assert saved["encoder"]["class_path"] == "torch.nn.Linear" and saved["encoder"]["init_args"]["out_features"] == 5
    model = pkg.WithEncoder.load_from_checkpoint(ckpt)
    assert isinstance(model.net[0], torch.nn.Linear) and model.net[0].out_features == 5 and model.hparams.lr == 0.05
    evil = torch.load(ckpt)
    evil["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(pl_errors.CheckpointError, match="not a LightningCLI instantiator"):
        pkg.WithEncoder.load_from_checkpoint(tmp_path / "evil.ckpt")


def test_yaml_with_lightning_2_6_model_registry_runs_and_the_saved_config_keeps_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"trainer:\n  model_registry: my-model\n  default_root_dir: {tmp_path}\n")
    with pytest.warns(UserWarning, match="model_registry='my-model'"):
        cli = LightningCLI(pkg.BoringModel, pkg.RandomData, trainer_defaults=FAST, args=["fit", "--config", str(config)])
    assert cli.trainer.model_registry == "my-model" and cli.trainer.global_step > 0
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["model_registry"] == "my-model"
