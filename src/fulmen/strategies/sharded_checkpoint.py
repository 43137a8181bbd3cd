"""Checkpoints that are directories: FSDP's sharded ones and DeepSpeed's, and turning them into one file.

A sharded FSDP checkpoint is a directory written with ``torch.distributed.checkpoint`` (each process
writes its own shard; ``.metadata`` says where every piece is) plus ``meta.pt``, the rest of the
checkpoint (loop state, callbacks, hyperparameters). A DeepSpeed checkpoint is the directory its engine
writes: ``latest`` names a tag folder holding the model and optimizer shards, and fulmen's part of the
checkpoint is kept in the engine's ``client_state``. Both layouts are Lightning's, so its tools read
fulmen's directories and the other way round.

:func:`consolidate_checkpoint` (also ``fulmen consolidate DIR``) writes one ordinary checkpoint file
from such a directory, which ``LightningModule.load_from_checkpoint``, a single-device Trainer and
plain ``torch.load`` read.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Callable

import torch

from fulmen.checkpoint import _fsync_dir, remove
from fulmen.errors import CheckpointError, missing_extra

META_FILE = "meta.pt"  # the non-tensor part of a sharded FSDP checkpoint (Lightning's name for it)
_DCP_METADATA = ".metadata"
# what DeepSpeed adds to the client_state it saves; everything else is the Trainer's checkpoint
_DEEPSPEED_KEYS = {
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version",
    "checkpoint_parallel_dimensions", "fulmen_keys",
}


def deepspeed_available() -> bool:
    """Whether ``import deepspeed`` can work, found without importing it (which takes seconds)."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"] is not None
    try:
        return importlib.util.find_spec("deepspeed") is not None
    except (ImportError, ValueError):
        return False


def import_deepspeed(feature: str, logging_level: int = logging.WARNING) -> Any:
    """``import deepspeed`` quietly: on a machine without a GPU it is told to use its CPU accelerator, and its
    own logger shows ``logging_level`` and above. Raises the install command when it is missing."""
    if not deepspeed_available():
        raise missing_extra("deepspeed", "deepspeed", feature)
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"  # what DeepSpeed would pick anyway, without its warning about it
    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel(logging_level)
    return deepspeed


def _local_dir(path: Any) -> str | None:
    try:
        path = os.fspath(path)
    except TypeError:
        return None
    if "://" in path and not path.startswith("file://"):
        return None
    path = path[len("file://"):] if path.startswith("file://") else path
    return path if os.path.isdir(path) else None


def kind(path: Any) -> str | None:
    """``"fsdp"`` or ``"deepspeed"`` when ``path`` is a sharded checkpoint directory of that kind, else None.

    Example::

        kind("checkpoints/epoch=0-step=100.ckpt")  # "deepspeed"
    """
    local = _local_dir(path)
    if local is None:
        return None
    if os.path.isfile(os.path.join(local, _DCP_METADATA)):
        return "fsdp"
    if os.path.isfile(os.path.join(local, "latest")) or _deepspeed_tag_dirs(local):
        return "deepspeed"
    return None


def _deepspeed_tag_dirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                  and any(f.endswith("model_states.pt") for f in os.listdir(os.path.join(path, d))))


# ---------------------------------------------------------------------------------------------------------
# writing a directory so that a crash never leaves a half-written checkpoint under the final name


def write_directory(path: Any, write: Callable[[str], None], strategy: Any) -> None:
    """Every process calls this; ``write(tmp)`` fills a fresh sibling directory, which rank zero then
    renames to ``path`` (replacing what was there). Until then ``path`` is untouched.

    Example::

        write_directory("ckpts/last.ckpt", lambda tmp: engine.save_checkpoint(tmp), strategy)
    """
    final = os.path.abspath(os.fspath(path))
    if "://" in os.fspath(path):
        raise CheckpointError(
            f"Sharded checkpoints are written to a local (or mounted) directory; {os.fspath(path)!r} is a URL. Save "
            "to a local path and copy the directory, or use FSDPStrategy(state_dict_type='full') for one file."
        )
    parent, name = os.path.split(final)
    tmp = os.path.join(parent, f".{name}.partial")
    if strategy.is_global_zero:
        os.makedirs(parent, exist_ok=True)
        remove(tmp)  # left by a run that died while writing
        os.makedirs(tmp)
    strategy.barrier("sharded_checkpoint.start")
    write(tmp)
    strategy.barrier("sharded_checkpoint.written")
    if strategy.is_global_zero:
        old = os.path.join(parent, f".{name}.old")
        if os.path.lexists(final):
            remove(old)
            os.replace(final, old)
        os.replace(tmp, final)
        remove(old)
        _fsync_dir(parent)
    strategy.barrier("sharded_checkpoint.done")


# ---------------------------------------------------------------------------------------------------------
# a checkpoint whose weights and optimizer states are DTensors: each process writes and reads its shards


def save_distributed(checkpoint: dict[str, Any], filepath: Any, strategy: Any, model_key: str = "model") -> None:
    """Write ``checkpoint`` as a directory: its ``state_dict`` (under ``model_key``) and ``optimizer_states``
    through torch.distributed.checkpoint, each process its own shards; the rest in ``meta.pt`` by rank zero.
    Every process calls it.

    Example::

        save_distributed(checkpoint, "ckpts/last.ckpt", trainer.strategy, model_key="state_dict")
    """
    import torch.distributed.checkpoint as dcp

    from fulmen.checkpoint import save_checkpoint

    shards = {model_key: checkpoint.pop("state_dict")}
    for i, state in enumerate(checkpoint.pop("optimizer_states", None) or []):
        shards[f"optimizer_{i}"] = state
    checkpoint["fulmen_sharded"] = {"optimizers": len(shards) - 1, "world_size": strategy.world_size}

    def write(tmp: str) -> None:
        dcp.save(shards, checkpoint_id=tmp)
        if strategy.is_global_zero:
            save_checkpoint(checkpoint, os.path.join(tmp, META_FILE))

    write_directory(filepath, write, strategy)


def load_distributed(path: Any, model_state: dict[str, Any], optimizer_states: list[dict[str, Any]],
                     weights_only: bool | None = True) -> dict[str, Any]:
    """Read the directory ``path`` into this run's sharded state dicts: ``model_state`` and ``optimizer_states``
    (as ``get_model_state_dict``/``get_optimizer_state_dict`` give them) say which slice each process reads, so
    any number of processes may have written it. The optimizers are read only when their number matches the
    saved one; otherwise the checkpoint's ``optimizer_states`` come back empty for the caller to report.

    Example::

        checkpoint = load_distributed("ckpts/last.ckpt", get_model_state_dict(model), [])
    """
    import torch.distributed.checkpoint as dcp

    from fulmen.checkpoint import load_checkpoint

    path = os.fspath(path)
    checkpoint = load_checkpoint(os.path.join(path, META_FILE), weights_only=weights_only)
    keys = {k.split(".")[0] for k in dcp.FileSystemReader(path).read_metadata().state_dict_metadata}
    saved_optimizers = checkpoint.pop("fulmen_sharded", {}).get("optimizers")
    if saved_optimizers is None:
        saved_optimizers = sum(k.startswith("optimizer_") for k in keys)
    model_key = "model" if "model" in keys else "state_dict"  # fulmen's FSDP layout, or Lightning's tensor-parallel one
    shards: dict[str, Any] = {model_key: model_state}
    if optimizer_states and saved_optimizers == len(optimizer_states):
        shards.update({f"optimizer_{i}": state for i, state in enumerate(optimizer_states)})
    dcp.load(shards, checkpoint_id=path)
    checkpoint["state_dict"] = shards[model_key]
    if saved_optimizers:
        checkpoint["optimizer_states"] = [shards.get(f"optimizer_{i}", {}) for i in range(saved_optimizers)]
    return checkpoint


# ---------------------------------------------------------------------------------------------------------
# optimizer states: torch.distributed.checkpoint keys them by parameter name, torch.optim by position


def optimizer_state_by_position(state: dict[str, Any]) -> dict[str, Any]:
    """``{"state": {name: ...}, "param_groups": [{"params": [names]}]}`` to ``Optimizer.state_dict()``'s form.

    Positions count the parameters group after group, as ``torch.optim.Optimizer.state_dict`` does.
    """
    order = [name for group in state["param_groups"] for name in group["params"]]
    position = {name: i for i, name in enumerate(order)}
    return {
        "state": {position[name]: value for name, value in state["state"].items() if name in position},
        "param_groups": [dict(group, params=[position[n] for n in group["params"]]) for group in state["param_groups"]],
    }


def optimizer_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_state_by_position`; ``names`` lists the optimizer's parameters in order."""
    if not state.get("param_groups") or not isinstance(state["param_groups"][0]["params"][0], int):
        return state  # keyed by name already
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [dict(group, params=[names[i] for i in group["params"]]) for group in state["param_groups"]],
    }


# ---------------------------------------------------------------------------------------------------------
# reading a directory whole, in one process


def load_consolidated(path: Any, weights_only: bool | None = True) -> dict[str, Any]:
    """The checkpoint in directory ``path`` as one dict, in the single-device layout (full ``state_dict``,
    ``optimizer_states`` keyed by position when the directory holds them). Runs in one process, without
    a process group, whatever the number of processes that wrote it.

    Example::

        ckpt = load_consolidated("checkpoints/last.ckpt")
        model.load_state_dict(ckpt["state_dict"])
    """
    found = kind(path)
    if found == "fsdp":
        return _load_fsdp(os.fspath(path), weights_only)
    if found == "deepspeed":
        return _load_deepspeed(os.fspath(path))
    raise CheckpointError(
        f"{os.fspath(path)!r} is not a sharded checkpoint directory (no '{_DCP_METADATA}' of torch.distributed."
        "checkpoint, no DeepSpeed 'latest'). Pass the directory a strategy='fsdp' or 'deepspeed*' run saved."
    )


def _load_fsdp(path: str, weights_only: bool | None) -> dict[str, Any]:
    from fulmen.checkpoint import load_checkpoint

    meta_path = os.path.join(path, META_FILE)
    checkpoint = load_checkpoint(meta_path, weights_only=weights_only) if os.path.exists(meta_path) else {}
    shards = _read_dcp(path)
    checkpoint["state_dict"] = shards.pop("model") if "model" in shards else shards.pop("state_dict", {})
    optimizers = sorted((k for k in shards if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    if optimizers:
        checkpoint["optimizer_states"] = [optimizer_state_by_position(shards[k]) for k in optimizers]
    return checkpoint


def _read_dcp(path: str) -> dict[str, Any]:
    """Everything in a torch.distributed.checkpoint directory, as full tensors, without a process group."""
    import torch.distributed.checkpoint as dcp

    try:  # what torch's own dcp_to_torch_save does, without the detour through a file
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    except ImportError:  # a torch that moved them: go through a temporary torch.save file instead
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, os.path.join(tmp, "full.pt"))
            return torch.load(os.path.join(tmp, "full.pt"), map_location="cpu", weights_only=True)
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=dcp.FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return state


def _load_deepspeed(path: str, tag: str | None = None) -> dict[str, Any]:
    import_deepspeed("Reading a DeepSpeed checkpoint")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = tag or _deepspeed_tag(path)
    tag_dir = os.path.join(path, tag)
    states = sorted(f for f in os.listdir(tag_dir) if f.endswith("model_states.pt"))
    if not states:
        raise CheckpointError(f"{tag_dir!r} holds no '*model_states.pt': not a complete DeepSpeed checkpoint.")
    # DeepSpeed's own files hold its config objects, so only its loader (a full unpickle) reads them
    client = torch.load(os.path.join(tag_dir, states[0]), map_location="cpu", weights_only=False)
    keys = client.get("fulmen_keys")
    checkpoint = {k: client[k] for k in keys} if keys else {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    state_dict = get_fp32_state_dict_from_zero_checkpoint(path, tag=tag)
    prefix = "_forward_module."  # Lightning's DeepSpeed wrapper
    checkpoint["state_dict"] = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
    checkpoint.pop("optimizer_states", None)  # ZeRO's optimizer shards have no single-process form
    return checkpoint


def deepspeed_world_size(path: Any) -> int | None:
    """How many processes wrote the DeepSpeed checkpoint directory ``path`` (one ZeRO optimizer partition
    each); None when it holds no partition files to count.

    Example::

        deepspeed_world_size("checkpoints/epoch=2-step=300.ckpt")  # 8
    """
    import re

    tag_dir = os.path.join(os.fspath(path), _deepspeed_tag(os.fspath(path)))
    if not os.path.isdir(tag_dir):
        return None
    ranks = {m.group(1) for f in os.listdir(tag_dir)
             if (m := re.fullmatch(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt", f))}
    return len(ranks) or None


def _deepspeed_tag(path: str) -> str:
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return f.read().strip()
    tags = _deepspeed_tag_dirs(path)
    if len(tags) != 1:
        raise CheckpointError(f"{path!r} has no 'latest' file naming its tag; found tag folders {tags}.")
    return tags[0]


def consolidate_checkpoint(path: Any, output_file: Any = None, *, weights_only: bool = False) -> str:
    """Write the sharded FSDP or DeepSpeed checkpoint directory ``path`` as one checkpoint file.

    The file is an ordinary fulmen checkpoint (atomic, checksummed, readable by ``torch.load``):
    ``LightningModule.load_from_checkpoint`` loads it, and a single-device Trainer resumes from it (an FSDP
    checkpoint keeps its optimizer states; ZeRO's have no single-process form and are left out). The
    default name is the directory's with ``.consolidated`` appended; ``weights_only=True`` keeps only the
    weights, hyperparameters and counters. Returns the file's path.

    Example::

        out = consolidate_checkpoint("checkpoints/epoch=2-step=300.ckpt")
        model = LitModel.load_from_checkpoint(out)
    """
    from fulmen.checkpoint import save_checkpoint

    source = os.fspath(path).rstrip("/")
    checkpoint = load_consolidated(source, weights_only=True)
    if weights_only:
        keep = ("epoch", "global_step", "pytorch-lightning_version", "fulmen_version", "state_dict", "loops",
                "hparams_name", "hyper_parameters", "datamodule_hparams_name", "datamodule_hyper_parameters")
        checkpoint = {k: v for k, v in checkpoint.items() if k in keep}
    checkpoint = _plain(checkpoint)
    output = os.fspath(output_file) if output_file is not None else source + ".consolidated"
    if os.path.isdir(output):
        raise CheckpointError(f"Output {output!r} is a directory; pass a file path to write the checkpoint to.")
    save_checkpoint(checkpoint, output)
    return output


def _plain(obj: Any) -> Any:
    """numpy arrays (numpy's RNG key) as tensors, so ``torch.load``'s default safe unpickler reads the file."""
    if type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        return torch.from_numpy(obj.astype("int64") if obj.dtype.kind in "ui" else obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_plain(v) for v in obj)
    return obj


def cli_main(args: list[str]) -> int:
    """``fulmen consolidate DIR [-o FILE] [--weights-only]``; returns the exit status."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="fulmen consolidate",
        description="Write a sharded FSDP or DeepSpeed checkpoint directory as one checkpoint file, which "
                    "load_from_checkpoint, a single-device Trainer and torch.load read.")
    parser.add_argument("checkpoint_dir", help="the checkpoint directory a strategy='fsdp' or 'deepspeed*' run saved")
    parser.add_argument("-o", "--output", default=None, help="the file to write (default: DIR.consolidated)")
    parser.add_argument("--weights-only", action="store_true",
                        help="keep the weights, hyperparameters and counters only (no optimizer or loop state)")
    ns = parser.parse_args(args)
    from fulmen.errors import FulmenError

    try:
        out = consolidate_checkpoint(ns.checkpoint_dir, ns.output, weights_only=ns.weights_only)
    except FulmenError as err:
        sys.stderr.write(f"fulmen consolidate: error: {err}\n")
        return 1 if "pip install" in str(err) else 2
    print(out)
    return 0


def ds_checkpoint_dir(checkpoint_dir: Any, tag: str | None = None) -> str:
    """The tag folder inside a DeepSpeed checkpoint directory (the one ``latest`` names when ``tag`` is None).

    Example::

        ds_checkpoint_dir("checkpoints/last.ckpt")  # 'checkpoints/last.ckpt/checkpoint'
    """
    path = os.fspath(checkpoint_dir)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a directory; pass the directory a DeepSpeed run saved.")
    folder = os.path.join(path, tag or _deepspeed_tag(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"DeepSpeed checkpoint {path!r} has no tag folder {os.path.basename(folder)!r}.")
    return folder


def convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir: Any, output_file: Any, tag: str | None = None) -> dict:
    """Write the DeepSpeed (ZeRO) checkpoint directory ``checkpoint_dir`` as one float32 checkpoint file that
    ``load_from_checkpoint`` and ``torch.load`` read; returns what was written.

    Example::

        convert_zero_checkpoint_to_fp32_state_dict("checkpoints/last.ckpt", "last-fp32.ckpt")
        model = LitModel.load_from_checkpoint("last-fp32.ckpt")
    """
    from fulmen.checkpoint import save_checkpoint

    path = os.fspath(checkpoint_dir)
    if kind(path) != "deepspeed":
        raise CheckpointError(f"{path!r} is not a DeepSpeed checkpoint directory (it has no 'latest' or tag folder).")
    checkpoint = _load_deepspeed(path, tag)
    save_checkpoint(checkpoint, output_file)
    return checkpoint
