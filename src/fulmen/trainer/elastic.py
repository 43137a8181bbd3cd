"""Resuming a fit on another number of processes: the rest of the interrupted epoch, split among the new ranks.

Each training epoch has a *global* order of samples that does not depend on the number of processes: the
distributed sampler's (a permutation drawn from the seed and the epoch over the whole dataset; with shuffle off,
the dataset's order). Rank ``r`` of ``W`` takes global positions ``r, r + W, r + 2W, ...``, so the ``k``-th batch
of every rank together is the slice ``[k*B*W, (k+1)*B*W)`` of that order: after ``s`` batches per rank the first
``s*B*W`` samples are consumed, whatever ``W`` is.

At each epoch's start the loop records, in ``LoopState.data_order``, how its samples are spread (the order's
recipe, the number of processes, the batch size per process, the accumulation) and where the epoch's counting
starts. A run resumed mid-epoch on another number of processes rebuilds the order, drops the consumed prefix and
splits the rest among its ranks as the distributed sampler would (padded with repeats, or cut, to equal
shares). The epoch's remaining batches then come from that share; the next epochs are the sampler's own.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from fulmen._utils import rank_zero_info, rank_zero_warn


def _index_sampler(loader: Any) -> tuple[Any, Any]:
    """``(batch_sampler, sampler)`` of a map-style DataLoader: the batch sampler (None without batching) and
    the index sampler it draws from."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None) if batch_sampler is not None else None
    return batch_sampler, sampler if sampler is not None else getattr(loader, "sampler", None)


def _batch_size(loader: Any) -> int | None:
    batch_sampler, _ = _index_sampler(loader)
    if batch_sampler is None:
        return 1 if getattr(loader, "sampler", None) is not None else None  # batch_size=None: one sample a step
    size = getattr(batch_sampler, "batch_size", None)
    return size if isinstance(size, int) else None


def _order_of(loader: Any, world_size: int) -> dict[str, Any] | None:
    """The recipe of ``loader``'s global order this epoch; None when fulmen cannot rebuild it elsewhere."""
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    if callable(getattr(loader, "load_state_dict", None)):  # a loader that keeps its own position (torchdata's)
        return None
    _, sampler = _index_sampler(loader)
    n = len(loader.dataset)
    if type(sampler) is DistributedSampler and sampler.num_replicas == world_size:
        return {"kind": "distributed", "samples": n, "shuffle": bool(sampler.shuffle), "seed": int(sampler.seed),
                "epoch": int(sampler.epoch), "drop_last": bool(sampler.drop_last)}
    if world_size == 1 and type(sampler) is SequentialSampler:
        return {"kind": "sequential", "samples": n, "drop_last": False}
    if world_size == 1 and type(sampler) is RandomSampler:
        return {"kind": "random", "samples": n}  # drawn from this process's random state: not rebuilt
    return None


def _global_order(order: dict[str, Any]) -> list[int] | None:
    """The epoch's samples in global order (no padding), from the recipe ``_order_of`` recorded."""
    n = order["samples"]
    if order["kind"] == "sequential" or (order["kind"] == "distributed" and not order["shuffle"]):
        return list(range(n))
    if order["kind"] == "distributed":
        from torch.utils.data import DistributedSampler

        # one replica holds the whole permutation, drawn exactly as every rank of any world size draws it
        whole = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=order["seed"])
        whole.set_epoch(order["epoch"])
        return list(whole)
    return None


def _split(rest: list[int], world: int, rank: int, drop_last: bool) -> list[int]:
    """This rank's share of ``rest``: strided, made equal for every rank as the distributed sampler does
    (cut to a multiple of ``world`` with ``drop_last``, else padded with the first samples again)."""
    if drop_last:
        rest = rest[: len(rest) // world * world]
    elif rest and len(rest) % world:
        pad = world - len(rest) % world
        rest = rest + (rest * math.ceil(pad / len(rest)))[:pad]
    return rest[rank::world]


class _Share:
    """This rank's part of the rest of an epoch resumed on another number of processes: in place of the loader's
    batch sampler (or sampler) ``wrapped``, it yields ``batches`` once, then behaves as ``wrapped``. A
    persistent-workers iterator keeps it, hence one-shot."""

    def __init__(self, wrapped: Any, batches: list[Any]) -> None:
        self.wrapped, self.batches = wrapped, batches

    def __iter__(self) -> Iterator[Any]:
        if self.batches is None:
            yield from self.wrapped
            return
        batches, self.batches = self.batches, None
        yield from batches

    def __len__(self) -> int:
        return len(self.wrapped)

    def __getattr__(self, name: str) -> Any:  # batch_size, drop_last, sampler ... of the wrapped one
        return getattr(self.wrapped, name)


def begin_epoch(trainer: Any, loop: Any, loader: Any, first_of_fit: bool) -> _Share | None:
    """Record how this epoch's samples are spread (``loop.data_order``); on the first epoch of a fit resumed
    from a checkpoint written by another number of processes, say so in one line and return this rank's share
    of what the epoch has left (None: the ordinary resume applies)."""
    world, acc = trainer.world_size, trainer.accumulate_grad_batches
    size = _batch_size(loader)
    saved = loop.data_order if first_of_fit else None
    resumed_mid_epoch = loop.batches_in_epoch > 0
    moved = saved is not None and saved["world_size"] != world
    # an epoch that was itself resumed on another number of processes reads a share of its rest, not the
    # sampler's own order: a resume of it continues that share, on any number of processes
    shared = saved is not None and resumed_mid_epoch and any(saved.get("base") or (0, 0))
    if saved is not None and resumed_mid_epoch and not moved and not shared:
        loop.data_order = {**saved, "batch_size": size, "accumulate": acc}  # the same spread: nothing to move
        return None
    loop.data_order = {"world_size": world, "batch_size": size, "accumulate": acc,
                       "order": _order_of(loader, world), "base": [0, 0]}
    if not moved and not shared:
        return None
    was = f"Resuming on {world} process{'es' if world > 1 else ''} a checkpoint written by {saved['world_size']}"
    kept = _global_batch_note(saved, world, size, acc)
    if not resumed_mid_epoch:
        _say(f"{was}: {kept[0]}", kept[1])
        return None
    consumed = consumed_samples(saved, loop.batches_in_epoch)
    order = saved.get("order")
    samples = _global_order(order) if order is not None and consumed is not None else None
    if samples is None or size is None or order["samples"] != len(loader.dataset):
        why = ("its dataset's length changed" if samples is not None and size is not None else
               "its training data has no order fulmen can rebuild on another number of processes (a map-style "
               "Dataset with shuffle=True or False under several processes, or ElasticResume() on one, has one)")
        if consumed is not None and size:
            loop.batches_in_epoch = min(round(consumed / (size * world)), _len(loader) or math.inf)
        _say(f"{was}, but {why}: the rest of epoch {loop.epoch} may repeat or miss samples; {kept[0]}", True)
        return None
    rest = samples[min(consumed, len(samples)):]
    share = _split(rest, world, trainer.global_rank, bool(order.get("drop_last")))
    batch_sampler, _ = _index_sampler(loader)
    if batch_sampler is None:
        batches: list[Any] = share
    else:
        batches = [share[i:i + size] for i in range(0, len(share), size)]
        if batches and getattr(batch_sampler, "drop_last", False) and len(batches[-1]) < size:
            batches.pop()
    # the epoch's last batch is the loop's last: the local position is counted back from the end
    skip = max(0, _len(loader) - len(batches))
    loop.data_order.update(order=order, base=[min(consumed, len(samples)), skip])
    if moved:  # on the same number as the checkpoint's, the share goes on without a word
        _say(f"{was}: each of the {len(rest)} samples left of epoch {loop.epoch} is read once, shared among this run's "
             f"processes; {kept[0]}", kept[1])
    loop.batches_in_epoch = skip
    return _Share(batch_sampler if batch_sampler is not None else loader.sampler, batches)


def consumed_samples(record: dict[str, Any], batches_in_epoch: int) -> int | None:
    """Global samples of the epoch consumed after ``batches_in_epoch`` batches per process."""
    size = record.get("batch_size")
    if size is None:
        return None
    base_samples, base_batches = record.get("base") or (0, 0)
    return base_samples + max(0, batches_in_epoch - base_batches) * size * record["world_size"]


def _global_batch_note(saved: dict[str, Any], world: int, size: int | None, acc: int) -> tuple[str, bool]:
    """The half-line on the global batch size, and whether it breaks the promise (a warning)."""
    before = saved["world_size"] * (saved.get("batch_size") or 0) * saved.get("accumulate", 1)
    now = world * (size or 0) * acc
    if before and now == before:
        return f"the global batch stays {now} samples ({world} x {size} x accumulate {acc}).", False
    change = (f"the global batch changes from {before or '?'} to {now or '?'} samples per optimizer step, so "
              "training takes other steps than the uninterrupted run")
    if before and size and before % (world * size) == 0:
        keep = f"ElasticResume(global_batch_size={before}) keeps it by adjusting accumulate_grad_batches"
        return f"{change}; {keep}.", True
    return (f"{change}; no accumulation keeps {before or 'it'} on {world} process(es) of {size} samples per batch: "
            "change the batch size to keep it.", True)


def _len(loader: Any) -> int:
    try:
        return len(loader)
    except TypeError:
        return 0


def _say(line: str, warn: bool) -> None:
    (rank_zero_warn if warn else rank_zero_info)(line)
