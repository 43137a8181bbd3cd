"""Rebuilding a LightningModule or LightningDataModule from a checkpoint: what ``load_from_checkpoint`` does;
reading and writing the hyperparameter files (``hparams.yaml``) loggers keep.

The object is constructed from the hyperparameters the checkpoint saved (``save_hyperparameters()``),
updated by the caller's keyword arguments; a module then gets its weights. Loading is safe by default:
nothing beyond tensors, containers and registered plain types is unpickled unless ``weights_only=False``.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import inspect
import os
import pickle
import re
import sys
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, Callable

import torch

from fulmen._utils import rank_zero_warn
from fulmen.errors import CheckpointError, MisconfigurationException, UntrustedCheckpointError, missing_extra

_KEYS = {  # (hyperparameters, their __init__ argument name) per kind of object
    "module": ("hyper_parameters", "hparams_name"),
    "datamodule": ("datamodule_hyper_parameters", "datamodule_hparams_name"),
}


def load_hparams_from_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The hyperparameters in a YAML file (e.g. a logger's ``hparams.yaml``); ``{}`` when it does not exist.

    Example::

        hp = load_hparams_from_yaml("lightning_logs/version_0/hparams.yaml")
    """
    import yaml

    return _read_hparams_file(path, lambda f: yaml.safe_load(f) or {})


def _read_hparams_file(path: str | os.PathLike, parse: Callable[[Any], dict[str, Any]], **open_kwargs: Any) -> dict:
    """``parse`` of the open file at ``path``; ``{}`` with a warning when there is no such file."""
    from fulmen.checkpoint import exists, get_filesystem

    path = os.fspath(path)
    if not exists(path):
        # stacklevel: past this helper and the public loader, as where the loaders warned themselves
        rank_zero_warn(f"hparams_file {path!r} does not exist; using the checkpoint's hyperparameters.", stacklevel=5)
        return {}
    with get_filesystem(path).open(path, "r", **open_kwargs) as f:
        return parse(f)


def save_hparams_to_yaml(config_yaml: str | os.PathLike, hparams: Mapping[str, Any] | Namespace,
                         use_omegaconf: bool = True) -> None:
    """Write ``hparams`` (a dict, Namespace or OmegaConf container) to ``config_yaml``, replacing the file whole.

    Objects YAML cannot spell safely are written as their ``str`` so that the file loads with
    ``yaml.safe_load``. ``use_omegaconf`` is accepted for Lightning's signature: an OmegaConf
    container is resolved to plain values either way.

    Example::

        save_hparams_to_yaml("hparams.yaml", {"lr": 0.1})  # load_hparams_from_yaml reads it back
    """
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    if type(hparams).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        hparams = OmegaConf.to_container(hparams, resolve=True)
    if not isinstance(hparams, Mapping):
        raise MisconfigurationException(
            f"save_hparams_to_yaml needs a dict or Namespace of hyperparameters, got {type(hparams).__name__}."
        )
    fs, path = _filesystem(config_yaml)
    parent = os.path.dirname(path)
    if parent and not fs.isdir(parent):
        raise FileNotFoundError(f"Cannot write {path}: the folder {parent} does not exist. Create it first.")
    _write_hparams_yaml(fs, path, hparams)


def _scalar(value: Any) -> Any:
    """A one-element tensor or numpy scalar as a Python number; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _yaml_safe(value: Any) -> Any:
    """A copy of ``value`` that ``yaml.safe_dump`` can write and ``yaml.safe_load`` can read back.

    Lightning writes arbitrary objects with Python tags (``!!python/object``), which only an unsafe
    loader reads; fulmen writes such objects as their ``str`` so that hparams.yaml is always safe to load.
    """
    value = _scalar(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, float, bool)) else k: _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_yaml_safe(v) for v in value]
    if hasattr(value, "tolist"):  # tensors and numpy arrays with more than one element
        return value.tolist()
    return str(value)


def _write_hparams_yaml(fs: Any, path: str, hparams: Mapping[str, Any]) -> None:
    """Write ``hparams`` as YAML to ``path`` on the fsspec filesystem ``fs``, replacing it whole."""
    import yaml  # only needed when hyperparameters are saved

    _atomic_write_text(fs, path, yaml.safe_dump(_yaml_safe(dict(hparams)), default_flow_style=False, sort_keys=True))


def _atomic_write_text(fs: Any, path: str, text: str) -> None:
    """Write to a sibling temp file, then rename over ``path``: readers never see half a file.

    The rename is atomic on local disks; on object stores it is still a whole-file replace.
    """
    tmp = f"{path}.tmp"
    with fs.open(tmp, "w", newline="") as f:
        f.write(text)
    fs.mv(tmp, path)


def _filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem for ``path`` and the path as that filesystem spells it."""
    from fsspec.core import url_to_fs

    path = str(path)
    if "://" not in path:
        path = os.path.expanduser(os.path.expandvars(path))
    fs, _ = url_to_fs(path)
    return fs, path


def load_hparams_from_tags_csv(path: str | os.PathLike) -> dict[str, Any]:
    """The hyperparameters in a two-column ``key,value`` CSV file; ``{}`` when it does not exist.

    Example::

        hp = load_hparams_from_tags_csv("tags.csv")
    """
    def value(text: str) -> Any:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    def parse(f: Any) -> dict[str, Any]:
        return {row[0]: value(row[1]) for row in list(csv.reader(f))[1:] if len(row) >= 2}

    return _read_hparams_file(path, parse, newline="")


def _hparams_from_file(hparams_file: Any) -> dict[str, Any]:
    ext = os.fspath(hparams_file).rsplit(".", 1)[-1].lower()
    if ext == "csv":
        return load_hparams_from_tags_csv(hparams_file)
    if ext in ("yml", "yaml"):
        return load_hparams_from_yaml(hparams_file)
    raise MisconfigurationException(
        f"hparams_file={os.fspath(hparams_file)!r}: pass a .yaml/.yml file (like a logger's hparams.yaml) or a .csv."
    )


def _init_kwargs(cls: type, checkpoint: dict[str, Any], kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``cls(...)``: saved hyperparameters, then overrides, then filtered to __init__."""
    hp_key, name_key = _KEYS[kind]
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    saved: Any = dict(checkpoint.get(hp_key) or {})
    arg_name = checkpoint.get(name_key)
    if arg_name and arg_name != "kwargs" and arg_name in names:  # save_hyperparameters(one_dict): pass it whole
        saved = {arg_name: saved}
    kwargs = {**saved, **overrides}
    return kwargs if takes_any else {k: v for k, v in kwargs.items() if k in names}


# what a checkpoint's hyper_parameters["_instantiator"] may name: LightningCLI's rebuilders, never anything else
_INSTANTIATORS = ("fulmen.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module",
                  "lightning.pytorch.cli.instantiate_module")


def _instantiate(cls: type, init_kwargs: dict[str, Any], instantiator: Any, class_path: Any) -> Any:
    """Rebuild a module a LightningCLI run saved: its hyperparameters are the resolved config, nested
    ``class_path`` entries included. The named class must already be imported and be a subclass of ``cls``."""
    if instantiator not in _INSTANTIATORS:
        raise CheckpointError(
            f"The checkpoint asks to build {cls.__name__} with {instantiator!r}, which is not a LightningCLI "
            f"instantiator ({', '.join(_INSTANTIATORS)}); refused, as it could run arbitrary code. Remove "
            "hyper_parameters['_instantiator'] from the checkpoint if you trust it."
        )
    if class_path is not None:
        module_name, _, name = str(class_path).rpartition(".")
        found = getattr(sys.modules.get(module_name), name, None)
        if not (isinstance(found, type) and issubclass(found, cls)):
            raise CheckpointError(
                f"The checkpoint names class {class_path!r}, which is not an imported subclass of {cls.__name__}. "
                f"Import the module that defines it before loading (refused so as not to import arbitrary code)."
            )
    return instantiate_module(cls, init_kwargs)


def instantiate_module(class_type: type, config: dict[str, Any]) -> Any:
    """Build ``class_type`` from the hyperparameters a CLI run saved (nested classes included): what
    ``load_from_checkpoint`` calls for a checkpoint whose hyperparameters name this function.

    Example::

        model = instantiate_module(LitModel, {"hidden": 64, "encoder": {"class_path": "pkg.Encoder"}})
    """
    try:
        from jsonargparse import ArgumentParser
    except ImportError:
        raise missing_extra("jsonargparse[signatures]", "cli", "rebuilding a module a LightningCLI run saved") from None
    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {"class_path": config["_class_path"],
                  "dict_kwargs": {k: v for k, v in config.items() if k != "_class_path"}}
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    parsed = parser.parse_object({"module": config})
    build = parser.instantiate if _new_jsonargparse() else parser.instantiate_classes
    return build(parsed).module


def _new_jsonargparse() -> bool:
    """jsonargparse 4.49 renamed ``skip_none`` to ``skip_unset`` and ``instantiate_classes`` to ``instantiate``."""
    import jsonargparse

    return tuple(int(p) for p in re.findall(r"\d+", jsonargparse.__version__)[:2]) >= (4, 49)


def load_from_checkpoint(cls: type, kind: str, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                         strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any) -> Any:
    """Build ``cls`` from the checkpoint at ``checkpoint_path`` (local path, URL or open file).

    Used by ``LightningModule.load_from_checkpoint`` and ``LightningDataModule.load_from_checkpoint``, which
    say what ``cls`` is: ``kind`` is ``"module"`` or ``"datamodule"``.
    ``hparams_file`` (YAML or CSV) replaces the saved hyperparameters; ``kwargs`` override single ones. A
    module's weights are loaded with ``strict`` (default: the module's ``strict_loading``, else True) after its
    ``configure_model`` and ``on_load_checkpoint``; the module ends on ``map_location``'s device, or the device
    the weights were saved from.

    Example::

        model = LitModel.load_from_checkpoint("best.ckpt", map_location="cpu", lr=1e-4)
    """
    from fulmen.checkpoint import _TRUST_HINT, _torch_load, load_checkpoint, resolve_trusted

    if hasattr(checkpoint_path, "read"):  # an open file or buffer: no checksum to verify, same safety
        try:
            checkpoint = _torch_load(checkpoint_path, map_location, trusted=resolve_trusted(weights_only))
        except pickle.UnpicklingError as err:
            raise UntrustedCheckpointError(
                f"The checkpoint in {getattr(checkpoint_path, 'name', 'the given file object')!r} contains objects the "
                "safe loader does not allow; unpickling them could run arbitrary code. If you created it yourself or "
                f"otherwise trust it, {_TRUST_HINT}."
            ) from err
    else:  # weights_only=None is the safe default; only False unpickles arbitrary objects
        checkpoint = load_checkpoint(checkpoint_path, map_location=map_location, weights_only=weights_only)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{checkpoint_path!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    if hparams_file is not None:
        checkpoint[_KEYS[kind][0]] = _hparams_from_file(hparams_file)
    saved = checkpoint.get(_KEYS[kind][0]) or {}
    try:
        init_kwargs = _init_kwargs(cls, checkpoint, kind, kwargs)
        init_kwargs.pop("_instantiator", None)
        if saved.get("_instantiator"):
            obj = _instantiate(cls, init_kwargs, saved["_instantiator"], saved.get("_class_path"))
        else:
            obj = cls(**init_kwargs)
    except TypeError as err:
        raise MisconfigurationException(
            f"Could not build {cls.__name__} from {checkpoint_path!r}: {err}. The checkpoint saved hyperparameters "
            f"{sorted(saved)}; call self.save_hyperparameters() in __init__, or pass the missing arguments, e.g. "
            f"{cls.__name__}.load_from_checkpoint(path, name=value)."
        ) from err
    if kind == "datamodule":
        state = checkpoint.get(type(obj).__qualname__)
        if state:
            obj.load_state_dict(state)
        return obj
    if "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{checkpoint_path!r} has no 'state_dict', so it is not a fulmen/Lightning checkpoint. For a plain "
            "state_dict use model.load_state_dict(torch.load(path))."
        )
    strict = obj.strict_loading if strict is None else strict
    obj.configure_model()
    obj.on_load_checkpoint(checkpoint)
    keys = obj.load_state_dict(checkpoint["state_dict"], strict=strict)
    if not strict and keys.missing_keys:
        rank_zero_warn(f"Missing keys when loading {checkpoint_path!r}: {keys.missing_keys}")
    if not strict and keys.unexpected_keys:
        rank_zero_warn(f"Unexpected keys in {checkpoint_path!r}: {keys.unexpected_keys}")
    tensors = (t for t in checkpoint["state_dict"].values() if isinstance(t, torch.Tensor))
    return obj.to(next(tensors, torch.tensor(0)).device)
