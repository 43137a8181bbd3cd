"""Lightning's path ``core.saving``: reading and writing the hyperparameter files loggers keep.

Example::

    from fulmen.core.saving import load_hparams_from_yaml, save_hparams_to_yaml

    save_hparams_to_yaml("hparams.yaml", {"lr": 0.1})
    load_hparams_from_yaml("hparams.yaml")  # {'lr': 0.1}
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from fulmen.saving import load_hparams_from_tags_csv, load_hparams_from_yaml

__all__ = ["load_hparams_from_tags_csv", "load_hparams_from_yaml", "save_hparams_to_yaml"]


def save_hparams_to_yaml(config_yaml: str | os.PathLike, hparams: Mapping[str, Any] | Namespace,
                         use_omegaconf: bool = True) -> None:
    """Write ``hparams`` (a dict, Namespace or OmegaConf container) to ``config_yaml``, replacing the file whole.

    Objects YAML cannot spell safely are written as their ``str`` so that the file loads with
    ``yaml.safe_load``. ``use_omegaconf`` is accepted for Lightning's signature: an OmegaConf
    container is resolved to plain values either way.
    """
    from fulmen.errors import MisconfigurationException
    from fulmen.loggers.logger import _filesystem, _write_hparams_yaml

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
