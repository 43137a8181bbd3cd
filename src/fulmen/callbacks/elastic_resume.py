"""``ElasticResume``: a training order, and optionally a global batch size, that stay the same when a run
resumes on another number of processes."""

from __future__ import annotations

from typing import Any

from fulmen._utils import rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException


class ElasticResume(Callback):
    """Keep a fit's data the same when it resumes on another number of processes.

    Under several processes, fulmen's distributed sampler already draws one global order per epoch (from the
    seed and the epoch) that every world size shares, and a mid-epoch resume on another number of processes
    splits the samples the epoch has left among the new ranks. This callback adds the rest:

    - on one process, the training loader reads the same global order (without it, a single-process run
      shuffles with its own ``RandomSampler``, whose order cannot be rebuilt on several);
    - with ``global_batch_size``, ``accumulate_grad_batches`` is set when training starts so that
      processes x batch size x accumulation equals it: the optimizer then takes the same steps, on the same
      samples, as the uninterrupted run. When it does not divide, the nearest accumulation is used and a
      one-line warning says so.

    The accumulation is set in ``on_train_start``; ``estimated_stepping_batches`` read earlier (in
    ``configure_optimizers``) counts the Trainer's own ``accumulate_grad_batches``.

    Args:
        global_batch_size: samples per optimizer step over all processes; None leaves the accumulation alone.

    Example::

        # 64 samples per step: 2 processes x 8 x accumulate 4, or 1 x 8 x 8 after a resume on one
        trainer = fulmen.Trainer(callbacks=[ElasticResume(global_batch_size=64)])
    """

    def __init__(self, global_batch_size: int | None = None) -> None:
        if global_batch_size is not None and (not isinstance(global_batch_size, int) or global_batch_size < 1):
            raise MisconfigurationException(
                f"ElasticResume(global_batch_size={global_batch_size!r}): pass the number of samples per optimizer "
                "step over all processes, an integer >= 1, or None."
            )
        self.global_batch_size = global_batch_size

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        trainer._elastic_order = True  # read by trainer/data.py when it sets up the training loader

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        wanted = self.global_batch_size
        if wanted is None:
            return
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "ElasticResume(global_batch_size=...) sets accumulate_grad_batches, which manual optimization does "
                "not use: accumulate in training_step yourself, or pass global_batch_size=None."
            )
        from fulmen.trainer.elastic import _batch_size

        loader = trainer._train_iterable
        size = _batch_size(loader)
        if size is None:
            raise MisconfigurationException(
                f"ElasticResume(global_batch_size={wanted}) needs the training loader's batch size, but "
                f"{type(loader).__name__} has none fulmen can read. Use a DataLoader with batch_size=..., or pass "
                "global_batch_size=None and set accumulate_grad_batches yourself."
            )
        per_step = size * trainer.world_size
        accumulate = max(1, round(wanted / per_step))
        if accumulate * per_step != wanted:
            rank_zero_warn(
                f"ElasticResume(global_batch_size={wanted}) cannot be kept on {trainer.world_size} process(es) with "
                f"batch_size={size}: accumulating {accumulate} batches gives {accumulate * per_step} samples per "
                "step. Pick a batch size that divides it."
            )
        trainer.accumulate_grad_batches = accumulate
