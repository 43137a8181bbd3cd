"""Lightning's ``utilities.deepspeed`` names: a DeepSpeed checkpoint directory to one checkpoint file.

fulmen's general tool is :func:`fulmen.strategies.sharded_checkpoint.consolidate_checkpoint` (also
``fulmen consolidate DIR``), which reads FSDP directories too; these keep Lightning's spelling.
"""

from __future__ import annotations

import os
from typing import Any

from fulmen.errors import CheckpointError

__all__ = ["convert_zero_checkpoint_to_fp32_state_dict", "ds_checkpoint_dir"]


def ds_checkpoint_dir(checkpoint_dir: Any, tag: str | None = None) -> str:
    """The tag folder inside a DeepSpeed checkpoint directory (the one ``latest`` names when ``tag`` is None).

    Example::

        ds_checkpoint_dir("checkpoints/last.ckpt")  # 'checkpoints/last.ckpt/checkpoint'
    """
    from fulmen.strategies.sharded_checkpoint import _deepspeed_tag

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
    from fulmen.strategies import sharded_checkpoint

    path = os.fspath(checkpoint_dir)
    if sharded_checkpoint.kind(path) != "deepspeed":
        raise CheckpointError(f"{path!r} is not a DeepSpeed checkpoint directory (it has no 'latest' or tag folder).")
    checkpoint = sharded_checkpoint._load_deepspeed(path, tag)
    save_checkpoint(checkpoint, output_file)
    return checkpoint
