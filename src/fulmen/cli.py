"""``LightningCLI``: a command line and YAML config files for every run, built from type hints.

The arguments come from the ``__init__`` signatures (and docstrings) of the model, the datamodule and
the Trainer, so a new ``__init__`` argument is a new flag with no parser code. Needs the ``cli`` extra
(``pip install 'fulmen[cli]'``, which brings jsonargparse).

Example (``train.py``)::

    from fulmen.cli import LightningCLI
    from my_pkg import LitModel, DigitsData

    if __name__ == "__main__":
        LightningCLI(LitModel, DigitsData)

then::

    python train.py fit --model.lr 0.01 --trainer.max_epochs 5
    python train.py fit --print_config > run.yaml      # every setting, with its default
    python train.py fit --config run.yaml --optimizer AdamW --optimizer.lr 3e-4
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import textwrap
from collections.abc import Iterable
from functools import partial, update_wrapper
from itertools import takewhile
from types import MethodType
from typing import Any, Callable, Union

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

import yaml

import fulmen
import fulmen.callbacks
import fulmen.loggers  # noqa: F401  (so --trainer.logger CSVLogger finds it by name)
from fulmen._utils import is_overridden, rank_zero_warn, seed_everything
from fulmen.callbacks.callback import Callback
from fulmen.datamodule import LightningDataModule
from fulmen.errors import FulmenError, MisconfigurationException, missing_extra
from fulmen.module import LightningModule
from fulmen.saving import _new_jsonargparse, instantiate_module
from fulmen.trainer.trainer import Trainer

try:
    import jsonargparse
    from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, class_from_function
except ImportError:
    raise missing_extra("jsonargparse[signatures]", "cli", "fulmen.cli (LightningCLI and `fulmen fit`)") from None

_NEW_JSONARGPARSE = _new_jsonargparse()
_KEEP_NULLS = {"skip_unset" if _NEW_JSONARGPARSE else "skip_none": False}  # dump keys whose value is None too

__all__ = ["LRSchedulerCallable", "LightningArgumentParser", "LightningCLI", "OptimizerCallable", "ReduceLROnPlateau",
           "SaveConfigCallback", "instantiate_class", "instantiate_module"]

# jsonargparse finds a class given by its short name (`--trainer.callbacks+=ModelCheckpoint`) only among
# subclasses already imported; fulmen.callbacks imports each on first use, so the CLI imports them all
for _name in fulmen.callbacks._WHERE:
    getattr(fulmen.callbacks, _name)

ArgsType = Union[list[str], dict[str, Any], Namespace, None]


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau`` that also names the metric it watches, so a config can choose it.

    Args:
        optimizer: The optimizer whose rate is reduced.
        monitor: The logged metric the scheduler watches.

    Example::

        python train.py fit --lr_scheduler ReduceLROnPlateau --lr_scheduler.monitor val_loss
    """

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerType = Union[type[LRScheduler], type[ReduceLROnPlateau]]

OptimizerCallable = Callable[[Iterable], Optimizer]
"""Type hint for an ``__init__`` argument the command line fills with an optimizer class and its arguments.

Example::

    class Model(fulmen.LightningModule):
        def __init__(self, optimizer: OptimizerCallable = torch.optim.Adam):
            super().__init__()
            self.optimizer = optimizer

        def configure_optimizers(self):
            return self.optimizer(self.parameters())

    # python train.py fit --model.optimizer SGD --model.optimizer.lr 0.1
"""
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau]]
"""Type hint for an ``__init__`` argument the command line fills with a scheduler class and its arguments.

Example::

    class Model(fulmen.LightningModule):
        def __init__(self, scheduler: LRSchedulerCallable = torch.optim.lr_scheduler.ConstantLR):
            super().__init__()
            self.scheduler = scheduler

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            return [optimizer], [self.scheduler(optimizer)]

    # python train.py fit --model.scheduler StepLR --model.scheduler.step_size 10
"""


class LightningArgumentParser(ArgumentParser):
    """jsonargparse's ``ArgumentParser`` that knows fulmen's classes, optimizers and schedulers.

    Its errors are one paragraph naming the flag (or the file and line) and the fix; with
    ``exit_on_error`` (the default) it then exits with status 2.

    Args:
        description: Shown at the top of ``--help``.
        env_prefix: Prefix of environment variables that can set arguments (with ``default_env``).
        default_env: Read argument defaults from environment variables such as ``PL_TRAINER__MAX_EPOCHS``.

    Example::

        class MyCLI(LightningCLI):
            def add_arguments_to_parser(self, parser):
                parser.add_lightning_class_args(EarlyStopping, "early_stopping")
                parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
    """

    def __init__(self, *args: Any, description: str = "fulmen command line tool", env_prefix: str = "PL",
                 default_env: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        self.callback_keys: list[str] = []
        self._optimizers: dict[str, tuple[Any, str]] = {}
        self._lr_schedulers: dict[str, tuple[Any, str]] = {}

    def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> list[str]:
        """Add the ``__init__`` arguments of a Trainer, LightningModule, LightningDataModule or Callback
        (or of a function returning one) under ``--nested_key.*``; return the names added.

        Example::

            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")   # --checkpoint.monitor val_loss
        """
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        bases = (Trainer, LightningModule, LightningDataModule, Callback)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, bases)):
            raise MisconfigurationException(
                f"Cannot add arguments from {lightning_class!r}: pass a subclass of Trainer, LightningModule, "
                "LightningDataModule or Callback, or a function annotated to return one."
            )
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        return self.add_class_arguments(lightning_class, nested_key, fail_untyped=False,
                                        instantiate=not issubclass(lightning_class, Trainer), sub_configs=True)

    def add_optimizer_args(self, optimizer_class: Any = (Optimizer,), nested_key: str = "optimizer",
                           link_to: str = "AUTOMATIC") -> None:
        """Let the command line choose an optimizer: ``--optimizer AdamW --optimizer.lr 3e-4``.

        A tuple of classes accepts any of their subclasses; ``link_to="AUTOMATIC"`` makes LightningCLI
        build it and give it to the model's ``configure_optimizers``; a dotted key instead links the
        chosen class and arguments (as a dict) to that init argument.

        Example::

            parser.add_optimizer_args(torch.optim.Adam, link_to="model.optimizer_init")
        """
        self._check_subclass(optimizer_class, (Optimizer,), "add_optimizer_args", "torch.optim.Optimizer")
        self._add_component(optimizer_class, nested_key, skip={"params"})
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(self, lr_scheduler_class: Any = LRSchedulerTypeTuple, nested_key: str = "lr_scheduler",
                              link_to: str = "AUTOMATIC") -> None:
        """Let the command line choose a learning-rate scheduler: ``--lr_scheduler StepLR --lr_scheduler.step_size 10``.

        Example::

            parser.add_lr_scheduler_args(torch.optim.lr_scheduler.ExponentialLR)
        """
        self._check_subclass(lr_scheduler_class, LRSchedulerTypeTuple, "add_lr_scheduler_args",
                             "torch.optim.lr_scheduler.LRScheduler or ReduceLROnPlateau")
        self._add_component(lr_scheduler_class, nested_key, skip={"optimizer"})
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)

    @staticmethod
    def _check_subclass(given: Any, bases: tuple[type, ...], method: str, what: str) -> None:
        classes = given if isinstance(given, tuple) else (given,)
        if not all(isinstance(c, type) and issubclass(c, bases) for c in classes):
            raise MisconfigurationException(f"{method}({given!r}): pass a subclass of {what}, or a tuple of them.")

    def _add_component(self, class_type: Any, nested_key: str, skip: set[str]) -> None:
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": skip}
        if isinstance(class_type, tuple):
            self.add_subclass_arguments(class_type, nested_key, **kwargs)
        else:
            self.add_class_arguments(class_type, nested_key, sub_configs=True, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        """Report ``message`` as one paragraph (no usage dump, no traceback) and exit with status 2."""
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):  # nested parsers: jsonargparse reads these
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self._chosen_subcommand_parser() or self
        prog = parser.prog.replace(" [options]", "")
        message = _one_paragraph(message, _known_flags(parser))
        sys.stderr.write(f"{prog}: error: {message} Run `{prog} --help` to see every option.\n")
        self.exit(2)

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        self._last_args = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, *rest, **kwargs)

    def _chosen_subcommand_parser(self) -> Any:
        action = getattr(self, "_subcommands_action", None)
        words = [a for a in getattr(self, "_last_args", []) if not a.startswith("-")]
        return action._name_parser_map.get(words[0]) if action is not None and words else None


# -- turning jsonargparse's nested error reports into one paragraph ------------------------------------

_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "a mapping", "list": "a list"}


def _known_flags(parser: Any) -> list[str]:
    parsers = [parser]
    action = getattr(parser, "_subcommands_action", None)
    if action is not None:
        parsers += list(action._name_parser_map.values())
    return [flag for p in parsers for a in p._actions for flag in a.option_strings if flag.startswith("--")]


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches("--" + name.lstrip("-"), known, n=1, cutoff=0.75)
    return f" Did you mean `{close[0]}`?" if close else ""


def _one_paragraph(message: str, known: list[str] = ()) -> str:
    """jsonargparse's (often multi-line, nested) error as one sentence or two naming the flag and the fix."""
    text = str(message).strip()
    simple = re.match(r"(?i)unrecognized arguments: (.+)", text)
    if simple:
        first = simple.group(1).split()[0].split("=")[0]
        return f"unknown option `{first}`.{_did_you_mean(first, known)}"
    simple = re.match(r"Subcommand '\w+' does not accept (?:option|nested key) '([^']+)'", text) or re.match(
        r"(?:Option|Key) '([^']+)' is not accepted", text)
    if simple:
        return (f"unknown option `{simple.group(1)}` (given in a config file or dict); fix or remove it."
                f"{_did_you_mean(simple.group(1), known)}")
    simple = re.match(r"the following arguments are required: (.+)", text) or re.search(
        r'Key "([^"]+)" is required', text)
    if simple:
        flags = ", ".join(f"--{_strip_subcommand(k.strip())}" for k in simple.group(1).split(","))
        return f"{flags} is required but was not given; pass it on the command line or in a --config file."
    if text.startswith("Problems parsing config"):
        where = re.findall(r"line (\d+), column (\d+)", text)
        problem = [ln.strip() for ln in text.splitlines()[1:] if ln.strip() and not ln.strip().startswith("in ")]
        at = f" at line {where[-1][0]}, column {where[-1][1]}" if where else ""
        return f"a config file is not valid YAML{at} ({'; '.join(problem) or 'syntax error'}); fix it and run again."
    return _explain(text, "")


def _strip_subcommand(key: str) -> str:
    head, _, rest = key.partition(".")
    return rest if rest and head in LightningCLI.subcommands() else key


def _explain(text: str, prefix: str) -> str:
    lines = text.strip("\n").splitlines()
    key = re.search(r'Parser key "([^"]+)"', text)
    flag = _strip_subcommand(prefix + key.group(1) if key else prefix.rstrip("."))
    for i, line in enumerate(lines):  # a chosen class failed: explain its own problem
        chosen = re.search(r"Problem with given class_path '([^']+)':", line)
        if chosen:
            depth = len(line) - len(line.lstrip(" -"))  # the class's own problem: the lines indented deeper
            block = takewhile(lambda nxt: not nxt.strip() or len(nxt) - len(nxt.lstrip(" ")) > depth, lines[i + 1:])
            return _explain_class(chosen.group(1), textwrap.dedent("\n".join(block)).strip(), flag)
    given = re.search(r"(?:Got|Given) value: (.+)", text)
    got = f", got {given.group(1).strip()!r}" if given and "NestedArg" not in given.group(1) else ""
    missing_file = re.search(r"File does not exist: '?([^']+)'?", text)
    if missing_file:
        return f"--{flag}: no such file {missing_file.group(1)!r}; check the path."
    not_subclass = re.search(r"does not correspond to a subclass of (\w+)", text)
    if not_subclass and given and not got.startswith(", got 'Namespace"):
        return f"--{flag}: {given.group(1).strip()} is not a {not_subclass.group(1)}; pass a subclass of {not_subclass.group(1)}."
    unknown_class = re.search(r"Expected a dot import path string: (\S+)", text)
    types = [t for t in dict.fromkeys(re.findall(r"Expected a <class '(\w+)'>", text)) if t != "NoneType"]
    scalar = [t for t in types if t in ("int", "float", "bool", "str")]
    if unknown_class and not scalar:
        return (f"--{flag}: no class named {unknown_class.group(1)!r} is known; give its import path "
                "(package.module.ClassName), importable from the current directory or PYTHONPATH.")
    if types:
        return f"--{flag} expects {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}{got}."
    detail = " ".join(ln.strip(" -") for ln in lines if ln.strip(" -") and not ln.strip().startswith("Parser key"))
    return f"--{flag}: {detail}".rstrip(".") + "." if flag else detail


def _explain_class(class_path: str, problem: str, flag: str) -> str:
    name = class_path.rpartition(".")[2]
    inner = problem.splitlines()[0].strip() if problem else ""
    required = re.match(r"the following arguments are required: (.+)", inner)
    if required:
        args = ", ".join(f"--{flag}.init_args.{a.strip()}" for a in required.group(1).split(","))
        return f"{name} needs {args}, which was not given."
    rejected = re.match(r"(?:Option|Key) '([^']+)' is not accepted", inner)
    if rejected:
        return f"--{flag}.init_args.{rejected.group(1)}: {name} has no argument {rejected.group(1)!r}."
    if problem.startswith("Parser key"):
        return _explain(problem, f"{flag}.init_args.")
    return (f"--{flag}: cannot use {class_path!r} ({inner.rstrip('.')}). Give an importable class "
            "(package.module.ClassName), with its package in the current directory or on PYTHONPATH.")


class SaveConfigCallback(Callback):
    """Write the run's full, resolved config to ``trainer.log_dir/config.yaml`` when the run sets up.

    Running that file again (``fit --config config.yaml``) repeats the run. An existing file is never
    replaced unless ``overwrite=True``: the run stops before training instead. Override
    :meth:`save_config` to also send the config somewhere else (e.g. a logger).

    Args:
        parser: The CLI's parser, which writes the config.
        config: The resolved config.
        config_filename: Name of the file in the log directory.
        overwrite: Replace an existing file instead of stopping the run.
        multifile: Write each nested config to its own file, as given on the command line.
        save_to_log_dir: Write the file to the log directory; False leaves it to an overridden ``save_config``.

    Example::

        LightningCLI(LitModel, save_config_kwargs={"overwrite": True})
        LightningCLI(LitModel, save_config_callback=None)   # write no config at all
    """

    def __init__(self, parser: LightningArgumentParser, config: Namespace, config_filename: str = "config.yaml",
                 overwrite: bool = False, multifile: bool = False, save_to_log_dir: bool = True) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and not is_overridden("save_config", self, SaveConfigCallback):
            raise MisconfigurationException(
                "SaveConfigCallback(save_to_log_dir=False) would save nothing; subclass it and implement "
                "`save_config`, or pass `save_config_callback=None` to LightningCLI."
            )

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir
            config_path = os.path.join(log_dir, self.config_filename)
            exists = trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(config_path))
            if exists and not self.overwrite:
                raise ConfigExistsError(
                    f"{config_path} already exists, and SaveConfigCallback will not overwrite a previous run's config. "
                    "Delete that file or log to a new directory (e.g. --trainer.default_root_dir), pass "
                    "LightningCLI(save_config_kwargs={'overwrite': True}) to replace it, or "
                    "LightningCLI(save_config_callback=None) to save no config."
                )
            if trainer.is_global_zero:
                if trainer.logger is not None and getattr(trainer.logger, "log_dir", None) == log_dir:
                    # let the logger create its folder first, so it finds it empty; TensorBoard's light
                    # writer does it without loading the full SummaryWriter
                    light = getattr(trainer.logger, "_event_writer", None)
                    light() if light is not None else trainer.logger.experiment
                os.makedirs(log_dir, exist_ok=True)
                self.parser.save(self.config, config_path, overwrite=self.overwrite, multifile=self.multifile,
                                 **_KEEP_NULLS)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Override to store the config elsewhere as well; runs on rank zero only, so no collectives here.

        Example::

            def save_config(self, trainer, pl_module, stage):
                trainer.logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False)})
        """


class ConfigExistsError(FulmenError, RuntimeError):
    """A run would overwrite the ``config.yaml`` of an earlier run in the same log directory.

    Also a ``RuntimeError``, which is what Lightning raises here.

    Example::

        try:
            LightningCLI(LitModel, args=["fit", "--trainer.logger", "false"])
        except ConfigExistsError:
            LightningCLI(LitModel, args=["fit", "--trainer.logger", "false"], save_config_kwargs={"overwrite": True})
    """


class LightningCLI:
    """Build a command line from the model's, the datamodule's and the Trainer's ``__init__``, then run it.

    Subcommands ``fit``, ``validate``, ``test`` and ``predict`` call the Trainer method of that name.
    Every argument can come from ``--config file.yaml`` (several allowed; later ones win) or a dotted
    flag (``--model.lr 0.01``, ``--trainer.max_epochs 5``). Without ``model_class`` (or with
    ``subclass_mode_model=True``) the model is chosen on the command line: ``--model pkg.mod.Class
    --model.init_args.hidden 64``; the same holds for ``--data``. ``--optimizer`` and ``--lr_scheduler``
    replace the model's ``configure_optimizers``. The resolved config is written to the run's log
    directory as ``config.yaml``.

    With ``run=False`` nothing runs and no subcommand is expected; use ``cli.trainer``, ``cli.model``,
    ``cli.datamodule`` and ``cli.config`` yourself.

    Args:
        model_class: The LightningModule (or a function that returns one). None: chosen with ``--model``.
        datamodule_class: The LightningDataModule (or a function that returns one). None: chosen with ``--data``, or
            none.
        save_config_callback: Callback that writes the resolved config to the log directory; None writes nothing.
        save_config_kwargs: Arguments for ``save_config_callback``, e.g. ``{"overwrite": True}``.
        trainer_class: The Trainer class (or a function that returns one).
        trainer_defaults: Trainer arguments to use when the command line and configs do not set them.
        seed_everything_default: Seed for ``seed_everything``: an int, True (a random seed, saved in the config) or
            False (no seeding).
        parser_kwargs: Arguments for the parser, or a dict of them per subcommand.
        parser_class: The parser class.
        subclass_mode_model: Accept any subclass of ``model_class``, chosen with ``--model``.
        subclass_mode_data: Accept any subclass of ``datamodule_class``, chosen with ``--data``.
        args: Arguments to parse instead of ``sys.argv``: a list of strings, or a dict (a config).
        run: Run the subcommand; False only builds the objects (no subcommand expected).
        auto_configure_optimizers: Add ``--optimizer`` and ``--lr_scheduler``, which replace
            ``configure_optimizers``.
        load_from_checkpoint_support: Read the saved hyperparameters of ``--ckpt_path`` to build the model.

    Example::

        cli = LightningCLI(LitModel, DigitsData, run=False, args=["--model.lr", "0.01"])
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    """

    def __init__(
        self,
        model_class: type[LightningModule] | Callable[..., LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | Callable[..., LightningDataModule] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | None = None,
        parser_class: type[LightningArgumentParser] = LightningArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers
        self.load_from_checkpoint_support = load_from_checkpoint_support
        self.model_class = model_class
        self._model_class = model_class or LightningModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class = datamodule_class
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        names = self.subcommands()
        main_kwargs = {k: v for k, v in self.parser_kwargs.items() if k not in names}
        sub_kwargs = {k: v for k, v in self.parser_kwargs.items() if k in names}
        self.setup_parser(run, main_kwargs, sub_kwargs)
        self.parse_arguments(self.parser, args)
        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._parse_ckpt_path()
        self._set_seed()
        self._add_instantiators()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # -- building the parser ------------------------------------------------------------------------
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Create a parser with ``--config`` (and so ``--print_config``)."""
        kwargs.setdefault("dump_header", [f"fulmen=={fulmen.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="A YAML or JSON config file; may be given several times, later files win.")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        """Create ``self.parser``: with one sub-parser per subcommand, or flat when ``run=False``."""
        self.parser = self.init_parser(**main_kwargs)
        if add_subcommands:
            self._subcommand_method_arguments: dict[str, list[str]] = {}
            self._add_subcommands(self.parser, **subparser_kwargs)
        else:
            self._add_arguments(self.parser)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--seed_everything``."""
        parser.add_argument(
            "--seed_everything", type=Union[bool, int], default=self.seed_everything_default,
            help="An int seeds every random generator before the classes are built; true (the default) uses "
                 "PL_GLOBAL_SEED or 0 (written to the saved config.yaml); false seeds nothing.",
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``trainer``, ``model`` and ``data`` argument groups."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments or links, e.g. ``parser.link_arguments("data.num_classes", "model.num_classes")``."""

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        self.link_optimizers_and_lr_schedulers(parser)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Each subcommand, with the arguments of its Trainer method that are not flags (set by the CLI)."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule"},
        }

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        trainer_class = self.trainer_class if isinstance(self.trainer_class, type) else class_from_function(self.trainer_class)
        for name, skip in self.subcommands().items():
            doc = (getattr(trainer_class, name).__doc__ or "").strip().splitlines()
            description = doc[0] if doc else None
            sub = self.init_parser(**{"description": description, **kwargs.get(name, {})})
            self._add_arguments(sub)
            self._subcommand_method_arguments[name] = sub.add_method_arguments(trainer_class, name, skip=set(skip))
            self._subcommand_parsers[name] = sub
            subcommands.add_subcommand(name, sub, help=description)

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: LightningArgumentParser) -> None:
        """Link each optimizer/scheduler group registered with a ``link_to`` key to that key."""
        for key, (class_type, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to != "AUTOMATIC":  # a chosen subclass links as given; a fixed class gets its class_path added
                compute = None if isinstance(class_type, tuple) else partial(_with_class_path, class_type)
                parser.link_arguments(key, link_to, compute_fn=compute)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` (a list of strings, or a dict / Namespace of values; default ``sys.argv[1:]``) into ``self.config``."""
        if args is not None and len(sys.argv) > 1 and args != sys.argv[1:]:
            rank_zero_warn(
                f"LightningCLI got both args={args!r} and command-line arguments {sys.argv[1:]}; only `args` is used."
            )
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            _check_config_files(parser, sys.argv[1:] if args is None else args)
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """On resume, rebuild the model with the hyperparameters stored in the checkpoint."""
        if not self.load_from_checkpoint_support or not self.subcommand:
            return
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if not ckpt_path or not os.path.isfile(ckpt_path):
            return
        try:
            hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters") or {}
        except Exception:  # not loadable safely: the Trainer reports it when it loads the file
            return
        hparams = {key: value for key, value in hparams.items() if key != "_instantiator"}
        if not hparams:
            return
        if "_class_path" in hparams:  # saved by a subclass-mode run
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        elif self.subclass_mode_model:
            model_cfg = self.config[self.subcommand].get("model")
            class_path = getattr(model_cfg, "class_path", None)
            if class_path is None:
                return
            hparams = {"class_path": class_path, "init_args": hparams}
        self.config = self.parser.parse_object({self.subcommand: {"model": hparams}}, self.config)

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        # no seed given (True, the default): PL_GLOBAL_SEED, else 0, as Lightning does; recorded below so the
        # saved config repeats this run
        seed = seed_everything(None if seed is True else seed, workers=True)
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed

    # -- building the objects -----------------------------------------------------------------------
    def _add_instantiators(self) -> None:
        """The model and datamodule are built with the resolved config as their hyperparameters, plus the
        function that rebuilds them from it, so ``load_from_checkpoint`` of a CLI-trained model works (as in
        Lightning, whose checkpoints carry ``hyper_parameters["_instantiator"]``)."""
        for key, class_type, subclasses in (("model", self._model_class, self.subclass_mode_model),
                                             ("data", self._datamodule_class, self.subclass_mode_data)):
            if isinstance(class_type, type):
                self.parser.add_instantiator(_Instantiator(self, key), class_type, subclasses=subclasses)

    def _config_dump(self) -> dict[str, Any]:
        if not hasattr(self, "_dumped_config"):
            self._dumped_config = yaml.safe_load(
                self.parser.dump(self.config, skip_link_targets=False, format="yaml", **_KEEP_NULLS)
            )
            if self.subcommand:
                self._dumped_config = self._dumped_config[self.subcommand]
        return self._dumped_config

    def before_instantiate_classes(self) -> None:
        """Override to run code after parsing, before anything is built."""

    def instantiate_classes(self) -> None:
        """Build ``self.datamodule``, ``self.model`` and ``self.trainer`` from the config."""
        build = self.parser.instantiate if _NEW_JSONARGPARSE else self.parser.instantiate_classes
        self.config_init = build(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Override to run code once the model, datamodule and trainer exist."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer from the config; ``kwargs`` override it."""
        parser = self._parser(self.subcommand)
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        given = config.get("callbacks")
        config["callbacks"] = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        config["callbacks"] += [self._get(self.config_init, key) for key in parser.callback_keys]
        if "callbacks" in self.trainer_defaults:
            default = self.trainer_defaults["callbacks"]
            config["callbacks"] += default if isinstance(default, list) else [default]
        if self.save_config_callback and not config.get("fast_dev_run", False):
            config["callbacks"].append(self.save_config_callback(
                parser, self.config.get(str(self.subcommand), self.config), **self.save_config_kwargs
            ))
        try:
            return self.trainer_class(**config)
        except FulmenError as err:
            parser.error(f"a --trainer flag is not usable: {err}")

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    @staticmethod
    def configure_optimizers(lightning_module: LightningModule, optimizer: Optimizer,
                             lr_scheduler: Any = None) -> Any:
        """What the model's ``configure_optimizers`` returns when ``--optimizer`` is given; override to change it."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor}}
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """With ``--optimizer`` (and maybe ``--lr_scheduler``) given, replace the model's ``configure_optimizers``."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)

        def automatic(base: Any, register: dict[str, tuple[Any, str]]) -> list[str]:
            bases = base if isinstance(base, tuple) else (base,)
            return [key for key, (cls, link_to) in register.items() if link_to == "AUTOMATIC"
                    and any(issubclass(c, bases) for c in (cls if isinstance(cls, tuple) else (cls,)))]

        optimizers = automatic(Optimizer, parser._optimizers)
        schedulers = automatic(LRSchedulerTypeTuple, parser._lr_schedulers)
        if not optimizers:
            return
        if len(optimizers) > 1 or len(schedulers) > 1:
            raise MisconfigurationException(
                f"{type(self).__name__} can build one optimizer and one lr_scheduler automatically, but "
                f"{optimizers + schedulers} are all 'AUTOMATIC'. Register the others with `link_to=...` and build them "
                "in the model's configure_optimizers."
            )
        opt_init = self._component_init(parser._optimizers[optimizers[0]][0], optimizers[0])
        if not opt_init:
            return  # no --optimizer given: the model's own configure_optimizers stays
        sched_init = self._component_init(parser._lr_schedulers[schedulers[0]][0], schedulers[0]) if schedulers else None
        if is_overridden("configure_optimizers", self.model, LightningModule):
            rank_zero_warn(
                f"`{type(self.model).__name__}.configure_optimizers` is replaced by the --optimizer given on the "
                f"command line (`{type(self).__name__}.configure_optimizers`)."
            )
        optimizer = instantiate_class(self.model.parameters(), opt_init)
        scheduler = instantiate_class(optimizer, sched_init) if sched_init else None
        fn = partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=scheduler)
        update_wrapper(fn, self.configure_optimizers)
        self.model.configure_optimizers = MethodType(fn, self.model)

    def _component_init(self, class_type: Any, key: str) -> dict[str, Any] | None:
        init = self._get(self.config_init, key)
        if not isinstance(class_type, tuple):
            return _with_class_path(class_type, init)
        return init.as_dict() if isinstance(init, Namespace) else init

    def _get(self, config: Namespace, key: str, default: Any = None) -> Any:
        """``config[key]``, looked up inside the subcommand's section when there is one."""
        return config.get(str(self.subcommand), config).get(key, default)

    # -- running ------------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        fn = getattr(self, subcommand, getattr(self.trainer, subcommand))
        fn(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        wanted = self._subcommand_method_arguments[subcommand]
        kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in wanted}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs


def _check_config_files(parser: LightningArgumentParser, args: list[str]) -> None:
    """Read each ``--config`` file's YAML first, so a syntax error names its file and line."""
    parser._last_args = list(args)  # so an error here is reported under the subcommand's name
    paths = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    paths += [nxt for flag, nxt in zip(args, args[1:]) if flag in ("--config", "-c")]
    for path in paths:
        if not os.path.isfile(path):
            continue  # jsonargparse reports missing files (and accepts inline YAML strings)
        with open(path) as f:
            try:
                yaml.safe_load(f)
            except yaml.MarkedYAMLError as err:
                mark = err.problem_mark or err.context_mark
                where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = " ".join(str(p) for p in (err.context, err.problem) if p)
                parser.error(f"config file {path}{where} is not valid YAML: {problem}. Fix that line and run again.")
            except yaml.YAMLError as err:
                parser.error(f"config file {path} is not valid YAML ({err}). Fix it and run again.")


class _Instantiator:
    """Builds the model (or datamodule) with its resolved config given to ``save_hyperparameters``."""

    def __init__(self, cli: LightningCLI, key: str) -> None:
        self.cli, self.key = cli, key

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict | None = None,
                 **kwargs: Any) -> Any:
        from fulmen.module import _given_hyperparameters

        hparams = dict(self.cli._config_dump().get(self.key) or {})
        if "class_path" in hparams:  # stored flat, with the class under "_class_path", as Lightning stores it
            hparams = {"_class_path": hparams["class_path"], **(hparams.get("init_args") or {}),
                       **(hparams.get("dict_kwargs") or {})}
        for key, value in (applied_instantiation_links or {}).items():
            if key.startswith(f"{self.key}."):
                hparams[key[len(self.key) + 1:].removeprefix("init_args.")] = value
        with _given_hyperparameters(hparams, "fulmen.cli.instantiate_module"):
            return class_type(*args, **kwargs)


def instantiate_class(args: Any, init: dict[str, Any]) -> Any:
    """Build ``init["class_path"]`` with positional ``args`` (one value or a tuple) and ``init["init_args"]``.

    Example::

        opt = instantiate_class(model.parameters(), {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})
    """
    import importlib

    module_name, _, class_name = init["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(*(args if isinstance(args, tuple) else (args,)), **init.get("init_args", {}))


def _with_class_path(class_type: type, init_args: Any = None) -> dict[str, Any]:
    if isinstance(init_args, Namespace):
        init_args = init_args.as_dict()
    return {"class_path": f"{class_type.__module__}.{class_type.__name__}", "init_args": init_args or {}}
