"""Lightning's path ``callbacks.checkpoint``: the base class of callbacks that write checkpoints.

Example::

    from fulmen.callbacks.checkpoint import Checkpoint

    class EveryBatch(Checkpoint):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.save_checkpoint(f"ckpts/{trainer.global_step}.ckpt")
"""

from fulmen.callbacks.model_checkpoint import Checkpoint

__all__ = ["Checkpoint"]
