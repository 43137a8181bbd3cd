"""Lightning's ``utilities.deepspeed`` names: a DeepSpeed checkpoint directory to one checkpoint file.

fulmen's general tool is :func:`fulmen.strategies.sharded_checkpoint.consolidate_checkpoint` (also
``fulmen consolidate DIR``), which reads FSDP directories too; these keep Lightning's spelling.
"""

from fulmen.strategies.sharded_checkpoint import convert_zero_checkpoint_to_fp32_state_dict, ds_checkpoint_dir

__all__ = ["convert_zero_checkpoint_to_fp32_state_dict", "ds_checkpoint_dir"]
