"""Loader wiring: where each stage's loaders come from, how many batches each gives, how several loaders
combine, how a resumed epoch continues its data, and how batches reach the device."""

from __future__ import annotations

import inspect
import itertools
import math
import os
import random
import select
import signal
import sys
import weakref
from array import array
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler,
                              SequentialSampler, default_collate, get_worker_info)

from fulmen._utils import (apply_to_collection, collect_rng_states, is_overridden, pl_worker_init_function,
                           rank_zero_warn, restore_rng_states)
from fulmen.datamodule import LightningDataModule
from fulmen.errors import MisconfigurationException
from fulmen.module import LightningModule
from fulmen.precision import Precision
from fulmen.trainer.state import RunningStage, TrainerFn
from fulmen.trainer import elastic

_MODES = ("min_size", "max_size_cycle", "max_size", "sequential")


def _sized_len(loader: Any) -> float:
    try:
        return len(loader)
    except (TypeError, NotImplementedError):
        return math.inf


class CombinedLoader:
    """Iterate several loaders together (a list or dict of them).

    Modes: ``"max_size_cycle"`` (training default: until the longest ends, shorter ones restart),
    ``"min_size"`` (until the shortest ends), ``"max_size"`` (until the longest ends, finished ones give
    None), and ``"sequential"`` (one after the other; yields ``(batch, batch_idx, dataloader_idx)``).

    Example::

        loaders = CombinedLoader({"a": loader_a, "b": loader_b}, mode="max_size_cycle")
        for batch in loaders:  # {"a": batch_a, "b": batch_b}
            ...
    """

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in _MODES:
            raise MisconfigurationException(f"CombinedLoader mode={mode!r} is not known; use one of {_MODES}.")
        self.iterables = iterables
        self.mode = mode

    @property
    def flattened(self) -> list[Any]:
        if isinstance(self.iterables, Mapping):
            return list(self.iterables.values())
        if isinstance(self.iterables, (list, tuple)):
            return list(self.iterables)
        return [self.iterables]

    def _pack(self, batches: list[Any]) -> Any:
        if isinstance(self.iterables, Mapping):
            return dict(zip(self.iterables.keys(), batches))
        if isinstance(self.iterables, (list, tuple)):
            return type(self.iterables)(batches) if isinstance(self.iterables, list) else tuple(batches)
        return batches[0]

    def __len__(self) -> int:
        lengths = [_sized_len(x) for x in self.flattened]
        if self.mode == "min_size":
            n = min(lengths)
        elif self.mode == "sequential":
            n = sum(lengths)
        else:
            n = max(lengths)
        if math.isinf(n):
            raise TypeError("CombinedLoader over a loader without a length has no length")
        return int(n)

    def __iter__(self) -> Iterator[Any]:
        loaders = self.flattened
        if self.mode == "sequential":
            for idx, loader in enumerate(loaders):
                for batch_idx, batch in enumerate(loader):
                    yield batch, batch_idx, idx
            return
        if self.mode == "min_size":
            for batches in zip(*loaders):
                yield self._pack(list(batches))
            return
        iters = [iter(x) for x in loaders]
        done = [False] * len(iters)
        while True:
            out = []
            for i, it in enumerate(iters):
                try:
                    out.append(next(it))
                except StopIteration:
                    done[i] = True
                    if all(done):
                        return
                    if self.mode == "max_size":
                        out.append(None)
                        continue
                    iters[i] = iter(loaders[i])
                    out.append(next(iters[i]))
            if all(done):
                return
            yield self._pack(out)


def _overridden(name: str, dm: Any, module: Any) -> Callable | None:
    """The datamodule's hook ``name`` where it overrides it, else the module's where it does, else None."""
    if dm is not None and is_overridden(name, dm, LightningDataModule):
        return getattr(dm, name)
    return getattr(module, name) if is_overridden(name, module, LightningModule) else None


def resolve(trainer: Any, stage: str, given: Any) -> Any:
    """The loaders for ``stage`` from the first source that has them; None when no source does."""
    if given is not None:
        return given
    source = _overridden(f"{stage}_dataloader", trainer.datamodule, trainer.lightning_module)
    return source() if source is not None else None


def as_list(loaders: Any) -> list[Any]:
    """Several eval/predict loaders as a list, in order (dict values in insertion order)."""
    if loaders is None:
        return []
    if isinstance(loaders, CombinedLoader):
        # sequential: one loader after another, each with its dataloader_idx; the other modes give combined
        # batches from one stream, as in Lightning
        return loaders.flattened if loaders.mode == "sequential" else [loaders]
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def check_iterable(loader: Any, what: str) -> None:
    if not isinstance(loader, Iterable):
        raise MisconfigurationException(
            f"The {what} dataloader is a {type(loader).__name__}, which cannot be iterated. Pass a "
            "torch.utils.data.DataLoader (or any iterable of batches)."
        )


def num_batches(loader: Any, limit: int | float | None, flag: str, what: str) -> float:
    """How many batches to take from ``loader`` under ``limit_*_batches``; inf when it has no length."""
    n = _sized_len(loader)
    if n == 0:  # Lightning goes on with no batches for this stage; so does fulmen, saying so
        rank_zero_warn(
            f"The {what} dataloader is empty (0 batches), so this stage runs no {what} batch. If that is not "
            "intended, check the dataset's length and the batch size (with drop_last=True a dataset smaller than "
            "one batch gives nothing)."
        )
        return 0
    if limit is None:
        return n
    if isinstance(limit, float):
        if limit == 1.0:
            return n
        if math.isinf(n):
            if limit == 0.0:
                return 0
            raise MisconfigurationException(
                f"{flag}={limit} is a fraction, but the {what} dataloader has no length. Pass an integer number of "
                f"batches, e.g. {flag}=100."
            )
        taken = int(n * limit)  # rounded down, as in Lightning
        if limit > 0 and taken == 0:
            raise MisconfigurationException(
                f"`{flag}={limit}` of a {what} dataloader with {n} batches is less than one batch. Pass at least "
                f"`{flag}={1.0 / n}`, or a number of batches such as `{flag}=1`."
            )
        return taken
    return min(n, int(limit))


def check_limit(value: Any, flag: str) -> int | float | None:
    """Validate an int-or-fraction flag: an int >= 0, or a float in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, float):
        if value > 1 and value.is_integer():  # 10.0 means 10 batches, as in Lightning
            return int(value)
        if not 0.0 <= value <= 1.0:
            raise MisconfigurationException(
                f"{flag}={value} is outside [0.0, 1.0]. Pass a fraction of the batches, e.g. {flag}=0.25, or an "
                f"integer number of batches, e.g. {flag}={int(value) if value > 1 else 10}."
            )
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise MisconfigurationException(f"{flag}={value} is negative; pass a number of batches >= 0.")
        return value
    raise MisconfigurationException(f"{flag}={value!r}: pass an int (batches) or a float fraction in (0, 1].")


def with_sequential_sampler(loader: Any, what: str | None = None) -> Any:
    """A copy of a DataLoader that does not shuffle (used by ``overfit_batches``); with ``what`` (the loader's
    stage, "training" or "validation") a warning says its shuffling was turned off, as Lightning warns."""
    if type(loader) is not DataLoader or not isinstance(loader.sampler, RandomSampler):
        return loader
    if what is not None:
        rank_zero_warn(
            f"overfit_batches reads the same first batches every epoch, so the shuffled {what} dataloader is read "
            "in order (shuffle=False) for this fit."
        )
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers else False,
        **({"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}),
    )


def islice(iterable: Iterable, n: float) -> Iterator:
    return iter(iterable) if math.isinf(n) else itertools.islice(iterable, int(n))


# ==================================================================================================
# several processes: each rank reads its own share
# ==================================================================================================
def distribute(trainer: Any, loaders: Any, stage: str) -> Any:
    """Give every DataLoader in ``loaders`` a DistributedSampler (``use_distributed_sampler=True`` and several
    processes, or one with ``ElasticResume``: the training order is then the same on any number of processes),
    keeping the loader's other arguments; anything else is returned as it is."""
    if trainer.world_size <= 1 and not (stage == "train" and getattr(trainer, "_elastic_order", False)):
        return loaders
    if loaders is None or not trainer.use_distributed_sampler:
        return loaders
    if isinstance(loaders, CombinedLoader):
        return CombinedLoader(distribute(trainer, loaders.iterables, stage), loaders.mode)
    if isinstance(loaders, Mapping):
        return {k: distribute(trainer, v, stage) for k, v in loaders.items()}
    if isinstance(loaders, (list, tuple)):
        return type(loaders)(distribute(trainer, v, stage) for v in loaders)
    return _with_distributed_sampler(loaders, trainer, stage)


class _SamplerShard:
    """The indices a (custom) sampler yields, split across ranks like a DistributedSampler splits a dataset."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> Any:
        return self._order[i]

    def refresh(self) -> None:
        self._order = list(self.sampler)


def _distributed_sampler(trainer: Any, dataset: Any, shuffle: bool, drop_last: bool, stage: str) -> Any:
    """Training, validation and test: torch's DistributedSampler, which pads with repeated samples so every rank
    runs the same number of batches (collectives inside the steps stay matched), as in Lightning; prediction:
    every sample exactly once, so the predictions can be put back in order."""
    # a strategy whose processes share batches (tensor parallelism) says how the data is split
    shard = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    world, rank = (shard["num_replicas"], shard["rank"]) if shard else (trainer.world_size, trainer.global_rank)
    if stage == "predict":
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=sampler_seed(),
                              drop_last=drop_last if stage == "train" else False)


class UnrepeatedDistributedSampler(DistributedSampler):
    """Prediction: every sample exactly once over all ranks (rank r takes positions r, r+W, r+2W, ... of the
    order), so no rank repeats samples to even out the counts; ranks may get one batch fewer. The arguments are
    ``DistributedSampler``'s (shuffled by default, ``num_replicas``/``rank`` from the process group when left out).

    Example::

        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False)  # 0, 2, 4, ...
    """

    def __init__(self, dataset: Any, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        # no padding: this rank's share of the real samples only
        self.num_samples = len(range(self.rank, len(self.dataset), self.num_replicas))
        self.total_size = len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        order = list(range(n))
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        return iter(order[self.rank::self.num_replicas])


class _ShardedSampler:
    """A custom sampler under several processes: each rank takes its share of the indices it yields."""

    def __init__(self, sampler: Any, inner: Any) -> None:
        self.source, self.inner = sampler, inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        self.inner.dataset.refresh()
        shard = self.inner.dataset
        return (shard[i] for i in self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)


_LOADER_ATTRS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
                 "generator", "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order")


def _with_distributed_sampler(loader: Any, trainer: Any, stage: str) -> Any:
    if not _map_style_loader(loader):
        return loader  # iterables and iterable datasets shard themselves
    batch_sampler = loader.batch_sampler
    sampler = batch_sampler.sampler if batch_sampler is not None and hasattr(batch_sampler, "sampler") else loader.sampler
    if isinstance(sampler, (DistributedSampler, UnrepeatedDistributedSampler, _ShardedSampler)):
        return loader  # the user distributed it already
    drop_last = batch_sampler.drop_last if isinstance(batch_sampler, BatchSampler) else loader.drop_last
    if type(sampler) in (RandomSampler, SequentialSampler):
        shuffle = isinstance(sampler, RandomSampler) and stage == "train" and not trainer.overfit_batches
        new_sampler: Any = _distributed_sampler(trainer, loader.dataset, shuffle, drop_last, stage)
    else:
        inner = _distributed_sampler(trainer, _SamplerShard(sampler), False, drop_last, stage)
        new_sampler = _ShardedSampler(sampler, inner)
    kwargs: dict[str, Any] = {name: getattr(loader, name) for name in _LOADER_ATTRS if hasattr(loader, name)}
    if not loader.num_workers:
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        try:
            kwargs["batch_sampler"] = type(batch_sampler)(new_sampler, batch_size=batch_sampler.batch_size,
                                                          drop_last=drop_last)
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot rebuild it
            raise MisconfigurationException(
                f"The {stage} loader's batch sampler {type(batch_sampler).__name__} cannot be re-created around a "
                f"DistributedSampler ({exc}). Give it an __init__(sampler, batch_size, drop_last), or pass "
                "Trainer(use_distributed_sampler=False) and shard the data yourself."
            ) from exc
    else:
        kwargs.update(sampler=new_sampler, batch_size=loader.batch_size, drop_last=drop_last)
    cls = type(loader)
    if cls is not DataLoader:
        params = inspect.signature(cls.__init__).parameters
        base = set(inspect.signature(DataLoader.__init__).parameters)
        for name, p in list(params.items())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in base:
                continue
            if hasattr(loader, name):
                kwargs[name] = getattr(loader, name)
            elif p.default is p.empty:
                raise MisconfigurationException(
                    f"The {stage} loader is a {cls.__name__}, whose __init__ takes `{name}`, which is not an attribute "
                    f"of it, so fulmen cannot re-create it with a DistributedSampler. Store it in __init__ "
                    f"(`self.{name} = {name}`), or pass Trainer(use_distributed_sampler=False) and give the loader a "
                    "DistributedSampler yourself."
                )
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
    return cls(loader.dataset, **kwargs)


def prepare_workers(loaders: Any, rank: int) -> None:
    """How the workers of each DataLoader in ``loaders`` start.

    - After ``seed_everything(seed, workers=True)``, a loader with no ``worker_init_fn`` of its own gets
      ``pl_worker_init_function`` for this rank (any strategy, as in Lightning): without it, torch seeds worker i
      of every rank alike from the loader's base seed.
    - In a distributed run on a Python whose fork can hang (below), a loader that forks its workers (the default
      context, or ``"fork"``) forks them through the checked fork.
    """
    seed = int(os.environ.get("PL_SEED_WORKERS", "0"))
    forking = _forking_contexts()
    if not seed and not forking:
        return
    for loader in as_list(loaders.iterables if isinstance(loaders, CombinedLoader) else loaders):
        if seed and getattr(loader, "worker_init_fn", False) is None:
            loader.worker_init_fn = partial(pl_worker_init_function, rank=rank)
        if (forking and isinstance(loader, DataLoader) and loader.num_workers > 0
                and any(loader.multiprocessing_context is c for c in forking)):
            loader.multiprocessing_context = _checked_fork_context()


# ---------------------------------------------------------------------------------------------------------
# Worker start where fork can hang. Before Python 3.9.20, 3.10.15 and 3.11.10, a child forked while another
# thread is making a Python thread state waits for ever inside os.fork() (CPython gh-112275). In a distributed
# run torch's gloo threads make one each time they free a tensor Python has dropped, so now and then a DataLoader
# worker never starts, and the run hangs on it. There the fork is checked: the child says it has started and
# waits for the go-ahead before it runs anything; one that has not said so in time has touched nothing shared
# (no queue, no lock), so it is killed and forked again.

_FORK_CAN_HANG = (sys.version_info < (3, 9, 20) or (3, 10) <= sys.version_info < (3, 10, 15)
                  or (3, 11) <= sys.version_info < (3, 11, 10))
_START_TIMEOUT = 3.0  # seconds; a forked child normally says it has started within a millisecond
_START_TRIES = 4


def _checked_launch(popen: Any, process_obj: Any) -> None:
    """``multiprocessing``'s fork start (``popen_fork.Popen._launch``), with the start checked as above."""
    for attempt in range(1, _START_TRIES + 1):
        started_r, started_w = os.pipe()
        go_r, go_w = os.pipe()
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        popen.pid = os.fork()
        if popen.pid == 0:  # the child, past the fork
            code = 1
            try:
                for fd in (started_r, go_w, parent_r, parent_w):
                    os.close(fd)
                os.write(started_w, b"1")
                if os.read(go_r, 1):  # empty: the parent gave up on this child
                    code = process_obj._bootstrap(parent_sentinel=child_r)
            finally:
                os._exit(code)
        for fd in (started_w, go_r, child_w, child_r):
            os.close(fd)
        started = select.select([started_r], [], [], _START_TIMEOUT)[0]  # its byte, or EOF if it died
        os.close(started_r)
        if started:
            try:
                os.write(go_w, b"1")
            except BrokenPipeError:  # it died before the go-ahead: the DataLoader reports its worker as usual
                pass
            os.close(go_w)
            break
        os.close(go_w)
        os.kill(popen.pid, signal.SIGKILL)
        os.waitpid(popen.pid, 0)
        os.close(parent_r)
        os.close(parent_w)
        if attempt == _START_TRIES:
            raise RuntimeError(
                f"A DataLoader worker did not start in {_START_TRIES} forks ({_START_TIMEOUT:g} s each). Python "
                "before 3.11.10 can hang a process forked beside other threads: upgrade Python, or pass "
                "multiprocessing_context='forkserver' to the DataLoader.")
    from multiprocessing import util

    popen.finalizer = util.Finalize(popen, util.close_fds, (parent_r, parent_w))
    popen.sentinel = parent_r


_checked_context: Any = None


def _checked_fork_context() -> Any:
    """A fork context whose processes start through ``_checked_launch`` (its classes made on first use)."""
    global _checked_context
    if _checked_context is None:
        from multiprocessing import context, popen_fork

        popen = type("Popen", (popen_fork.Popen,), {"_launch": _checked_launch})
        process = type("ForkProcess", (context.ForkProcess,), {"_Popen": staticmethod(popen)})
        _checked_context = type("ForkContext", (context.ForkContext,), {"Process": process})
    return _checked_context()


def _forking_contexts() -> tuple[Any, ...]:
    """The ``multiprocessing_context`` values whose workers start through the checked fork here: none unless this
    is a distributed run on a Python whose fork can hang."""
    if not _FORK_CAN_HANG or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return ()
    import multiprocessing

    # asked without fixing it: the default (none set yet) forks on these Pythons, but on macOS
    default = multiprocessing.get_start_method(allow_none=True) or ("spawn" if sys.platform == "darwin" else "fork")
    fork = multiprocessing.get_context("fork")
    return (fork, None) if default == "fork" else (fork,)


def sampler_seed() -> int:
    """The seed distributed samplers shuffle with: ``seed_everything``'s, as in Lightning."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def set_epoch(loaders: Any, epoch: int, seed: int | None = None) -> None:
    """Tell every sampler of ``loaders`` the epoch, so shuffling changes per epoch, the same on every rank;
    ``seed`` (a resumed run's) replaces the distributed samplers' own."""
    for loader in as_list(loaders.iterables if isinstance(loaders, CombinedLoader) else loaders):
        for holder in (loader, getattr(loader, "batch_sampler", None)):
            sampler = getattr(holder, "sampler", None)
            if seed is not None and isinstance(sampler, DistributedSampler):
                sampler.seed = seed
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)


# ---------------------------------------------------------------------------------------------------------
# Resuming mid-epoch without loading the batches already trained on.


class _SkipFirst:
    """An index sampler that drops its first ``skip`` items once (index lists only: no data is loaded),
    then behaves as the sampler it wraps. Lives on in a persistent-workers iterator, hence one-shot.

    The sampler draws its order from the global RNG when first asked for an index, which (without
    workers) happens inside the first ``next()``, after the loop has moved on to the resumed random
    state. ``rng`` holds the state the uninterrupted run had at that moment; the draw is made under it.
    """

    def __init__(self, sampler: Any, skip: int, gaps: int = 0) -> None:
        self.sampler, self.skip, self.gaps = sampler, skip, gaps
        self.rng: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None  # the state right after the draw made under ``rng``

    def __iter__(self) -> Iterator[Any]:
        if not self.skip and self.rng is None and not self.gaps:
            yield from self.sampler
            return
        for _ in range(self.gaps):  # empty batches, first: see _WorkerStreams (they load nothing)
            yield []
        skip, self.skip, rng, self.rng, self.gaps = self.skip, 0, self.rng, None, 0
        now = collect_rng_states() if rng is not None else None
        if rng is not None:
            restore_rng_states(rng)
        it = iter(self.sampler)
        for _ in itertools.islice(it, skip):
            pass
        first = next(it, _END)  # the draw happens at the first index at the latest
        if now is not None:
            self.after = collect_rng_states()
            restore_rng_states(now)
        if first is _END:
            return
        yield first
        yield from it

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:  # batch_size, drop_last, sampler ... of the wrapped one
        return getattr(self.sampler, name)


_END = object()


def _iter_with(loader: Any, source: Any, streams: _WorkerStreams | None, saved: dict[str, Any] | None = None) -> Any:
    """``_worker_iter(loader)`` drawing its indices from ``source`` in place of the loader's batch sampler (or,
    without one, its sampler): the iterator keeps it."""
    if loader.num_workers and loader.persistent_workers and loader._iterator is not None:
        loader._iterator = None  # made earlier in this process: it would keep the loader's own sampler
    attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    original = getattr(loader, attr)
    # DataLoader forbids setting its samplers after construction; the swap lasts only for iter()
    object.__setattr__(loader, attr, source)
    try:
        return _worker_iter(loader, streams, saved)
    finally:
        object.__setattr__(loader, attr, original)


def _map_style_loader(loader: Any) -> bool:
    return isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)


def generators(loader: Any) -> list[Any]:
    """The torch.Generator objects a training loader draws its order from (loader, sampler, batch sampler)."""
    found: list[Any] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def generator_states(loader: Any) -> list[Any]:
    return [g.get_state() for g in generators(loader)]


def set_generator_states(loader: Any, states: list[Any] | None) -> None:
    gens = generators(loader)
    if states is not None and len(states) == len(gens):
        for g, state in zip(gens, states):
            g.set_state(state)


def loader_state(loader: Any) -> Any:
    """A training loader's own resumable state (``state_dict()``, e.g. torchdata's StatefulDataLoader), or None."""
    state_dict = getattr(loader, "state_dict", None)
    return state_dict() if callable(state_dict) and callable(getattr(loader, "load_state_dict", None)) else None


_replay_warned = False


def resume_iter(loader: Any, skip: int, state: Any, reused_before: bool = False,
                streams: _WorkerStreams | None = None, saved: dict[str, Any] | None = None) -> Iterator[Any]:
    """An iterator over ``loader`` that starts after its first ``skip`` batches of the epoch.

    In order of preference: the loader's own state (``load_state_dict``), skipping at the sampler level
    (map-style DataLoaders with any sampler: the same batches, none loaded), else replaying, which loads
    the skipped batches again and says so once. ``reused_before``: an uninterrupted run would be in a later
    epoch of this loader, so a persistent-workers loader would reuse its iterator and draw no new worker seed.
    ``streams`` follows the random streams of the loader's workers (see :class:`_WorkerStreams`);
    ``saved`` is what it saved, for the workers of a resumed run to continue them.
    """
    if not skip and not reused_before:
        return _worker_iter(loader, streams)
    if state is not None and callable(getattr(loader, "load_state_dict", None)):
        loader.load_state_dict(state)
        return iter(loader)
    if _map_style_loader(loader):
        # a persistent-workers loader draws its workers' seed from the global RNG only when its iterator is made:
        # the uninterrupted run did that in its first epoch, so here it must not shift the RNG (skipping makes
        # the iterator anew, see _iter_with)
        fresh = (reused_before and loader.num_workers > 0 and loader.persistent_workers
                 and (skip > 0 or loader._iterator is None))
        if not skip and not fresh:
            return _worker_iter(loader, streams)
        # workers take batches in turn from worker 0: empty batches first (loaded by no one) give batch `skip` to
        # the worker that had it, so every worker continues its own stream and keeps its id
        followed = streams is not None and loader.batch_sampler is not None and _followable(loader)
        gaps = skip % loader.num_workers if followed else 0
        index_source = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        skipping = _SkipFirst(index_source, skip, gaps)
        before = collect_rng_states() if fresh else None
        skipping.rng = before  # workers ask for indices while the iterator is made: under this state
        it = _iter_with(loader, skipping, streams, saved)
        if fresh:  # as if the draw had been the only use of the RNG, as in the uninterrupted run
            restore_rng_states(skipping.after or before)
        elif loader.num_workers == 0:
            skipping.rng = collect_rng_states()  # as the uninterrupted run had it right after iter(loader)
        for _ in range(gaps):
            next(it)
        return it
    if not skip:
        return iter(loader)
    global _replay_warned
    if not _replay_warned:
        _replay_warned = True
        rank_zero_warn(
            f"Resuming mid-epoch: the training data ({type(loader).__name__}) has neither a sampler nor "
            "state_dict()/load_state_dict(), so the batches already trained on are loaded again and dropped. Use a "
            "map-style Dataset, or a loader that saves its position (e.g. torchdata's StatefulDataLoader), to skip "
            "them without loading."
        )
    it = iter(loader)
    for _ in range(skip):
        next(it)
    return it


# ---------------------------------------------------------------------------------------------------------
# The random streams of loader workers, for an exact resume.
#
# A worker seeds torch, random and numpy from the loader's base seed (drawn when the iterator is made) plus
# its id, then draws from them for every batch it loads (random augmentation). Batches go to workers in turn,
# from worker 0, every epoch; persistent workers keep their streams across epochs. So each batch comes back
# with its worker's states right after loading it, the main process keeps, per worker, those of the last
# batch it actually consumed (batches fetched ahead do not count), and a resumed run's workers start from
# them. Nothing is reseeded: an uninterrupted run draws exactly what plain PyTorch draws.


class _Stamped:
    """A batch and the random states of the worker that loaded it, right after loading it."""

    __slots__ = ("batch", "worker", "rng")

    def __init__(self, batch: Any, worker: int, rng: Any) -> None:
        self.batch, self.worker, self.rng = batch, worker, rng

    def pin_memory(self) -> _Stamped:  # DataLoader(pin_memory=True) pins what it finds, then hands it on
        from torch.utils.data._utils.pin_memory import pin_memory

        return _Stamped(pin_memory(self.batch), self.worker, self.rng)


def _worker_rng() -> tuple[Any, ...]:
    """This process's torch, random and numpy states as flat bytes and numbers: they cross to the main process
    with every batch, so they are made cheap to pickle (no tensor, no tuple of 625 ints)."""
    version, internal, gauss = random.getstate()
    out: tuple[Any, ...] = (torch.get_rng_state().numpy().tobytes(), version, array("Q", internal).tobytes(), gauss)
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        out += (name, keys.tobytes(), pos, has_gauss, cached)
    return out


def _saved_rng(raw: tuple[Any, ...]) -> dict[str, Any]:
    """``_worker_rng()`` as ``collect_rng_states()`` writes it (opens with ``torch.load(weights_only=True)``)."""
    out: dict[str, Any] = {"torch": torch.frombuffer(bytearray(raw[0]), dtype=torch.uint8),
                           "python": (raw[1], tuple(array("Q", raw[2])), raw[3])}
    if len(raw) > 4:
        name, keys, pos, has_gauss, cached = raw[4:]
        out["numpy"] = (name, torch.frombuffer(bytearray(keys), dtype=torch.int32).to(torch.int64) & 0xFFFFFFFF,
                        int(pos), int(has_gauss), float(cached))
    return out


class _StampingCollate:
    """The loader's collate_fn, run in a worker: the batch goes back stamped with the worker's states."""

    def __init__(self, collate_fn: Any, gaps: bool) -> None:
        self.collate_fn, self.gaps = collate_fn, gaps  # gaps: batches are lists of samples, a gap an empty one

    def __call__(self, data: Any) -> Any:
        info = get_worker_info()
        if info is None:  # called in the main process (0 workers, or by user code)
            return self.collate_fn(data)
        if self.gaps and isinstance(data, list) and not data:  # a gap (see resume_iter): nothing was loaded
            return _Stamped(None, info.id, None)
        return _Stamped(self.collate_fn(data), info.id, _worker_rng())


class _WorkerStart:
    """The loader's worker_init_fn, run first in each worker: seeded as the interrupted run's worker was, then
    (after the user's function) its random streams where that worker's last consumed batch left them."""

    def __init__(self, init_fn: Any, base_seed: int | None, states: dict[int, Any]) -> None:
        self.init_fn, self.base_seed, self.states = init_fn, base_seed, states

    def __call__(self, worker_id: int) -> None:
        info = get_worker_info()
        if self.base_seed is not None and info is not None and info.seed != self.base_seed + worker_id:
            # a persistent-workers loader made again after a resume: the workers' seeds are those of the first epoch
            seed = self.base_seed + worker_id
            random.seed(seed)
            torch.manual_seed(seed)
            try:
                import numpy as np
                from torch.utils.data._utils.worker import _generate_state

                np.random.seed(_generate_state(self.base_seed, worker_id))
            except ImportError:
                pass
            object.__setattr__(info, "seed", seed)  # WorkerInfo is read-only once made
        if self.init_fn is not None:
            self.init_fn(worker_id)
        state = self.states.get(worker_id)
        if state is not None:
            restore_rng_states(state)


class _WorkerStreams:
    """Per worker of a loader's current iterator, the random states after the last batch the main process
    consumed from it. ``saved()`` is what a checkpoint keeps; a resumed run holds it as ``pending`` until the
    loader's first iterator is made, whose workers then continue those streams."""

    def __init__(self, pending: dict[str, Any] | None = None) -> None:
        self.raw: dict[int, Any] = {}  # from this process's batches, as they came
        self.restored: dict[int, Any] = {}  # from the checkpoint, for workers that have sent nothing since
        self.base_seed: int | None = None
        self._iterator: weakref.ref | None = None
        self.pending = pending

    # held weakly: a reference back from here would put the iterator in a cycle with its streams, and torch cannot
    # stop an iterator's workers when the garbage collector frees a cycle (its queues close first); each worker
    # then waits out a 5 s timeout, at some later collection, and lives on until then
    @property
    def iterator(self) -> Any:
        return self._iterator() if self._iterator is not None else None

    @iterator.setter
    def iterator(self, it: Any) -> None:
        self._iterator = weakref.ref(it) if it is not None else None

    def saved(self) -> dict[str, Any] | None:
        if self.iterator is None:
            return self.pending
        workers = dict(self.restored)
        workers.update((w, _saved_rng(raw)) for w, raw in self.raw.items())
        return {"base_seed": self.base_seed, "workers": workers}


_following: dict[type, type] = {}


def _follow(it: Any, streams: _WorkerStreams) -> None:
    """Make the iterator ``it`` unwrap each stamped batch as it hands it over, keeping its worker's states in
    ``streams``: whoever consumes it (the training loop, or user code iterating a persistent loader after fit)
    gets the plain batch, and only batches handed over count."""
    cls = type(it)
    if cls not in _following:

        def _process_data(self: Any, data: Any, *args: Any) -> Any:
            data = super(following, self)._process_data(data, *args)
            if data.__class__ is _Stamped:
                if data.rng is not None:
                    self._fulmen_streams.raw[data.worker] = data.rng
                return data.batch
            return data

        following = type(cls.__name__, (cls,), {"_process_data": _process_data, "__module__": cls.__module__})
        _following[cls] = following
    it._fulmen_streams = streams
    it.__class__ = _following[cls]


def _followable(loader: Any) -> bool:
    """A map-style DataLoader with workers whose iterator is torch's own (whose last step, ``_process_data``,
    can unwrap the stamped batches); a loader that makes its own iterator (e.g. torchdata's) restores itself."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    return (_map_style_loader(loader) and loader.num_workers > 0
            and type(loader)._get_iterator is DataLoader._get_iterator
            and hasattr(_MultiProcessingDataLoaderIter, "_process_data"))


def _worker_iter(loader: Any, streams: _WorkerStreams | None, saved: dict[str, Any] | None = None) -> Iterator[Any]:
    """``iter(loader)``, with the workers' random streams followed (and, from ``saved``, continued)."""
    if streams is None or not _followable(loader):
        return iter(loader)
    if loader.persistent_workers and loader._iterator is not None:  # the same processes: their streams go on
        it = iter(loader)
        if it is not streams.iterator:
            streams.iterator = None  # made before fit saw the loader: its batches are not stamped
        return it
    saved = saved or {}
    workers = saved.get("workers") or {}
    collate, init = loader.collate_fn, loader.worker_init_fn
    # both are read when the iterator is made (and sent to the worker processes): the swap lasts only for iter()
    loader.collate_fn = _StampingCollate(collate, gaps=loader.batch_sampler is not None)
    loader.worker_init_fn = _WorkerStart(init, saved.get("base_seed"), workers)
    try:
        it = iter(loader)
    finally:
        loader.collate_fn, loader.worker_init_fn = collate, init
    streams.iterator, streams.pending = it, None
    streams.raw = {}
    streams.restored = dict(workers)
    # the seed the workers were seeded from: the saved one where _WorkerStart put it back
    base = saved.get("base_seed")
    streams.base_seed = base if base is not None else getattr(it, "_base_seed", None)
    _follow(it, streams)
    return it


def release_workers(*loaders: Any) -> None:
    """Stop the worker processes a persistent-workers DataLoader of ``loaders`` keeps, as a stage ends (as in
    Lightning): left to the garbage collector, they would outlive the run and stall a later collection."""
    for group in loaders:
        for loader in as_list(group.iterables if isinstance(group, CombinedLoader) else group):
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
                loader._iterator = None


def eval_iter(loader: Any, streams: _WorkerStreams) -> Iterator[Any]:
    """``iter(loader)`` for a validation inside fit. A persistent-workers loader keeps its workers, and their
    random streams, from one validation to the next: they are followed, and continued after a resume, where
    the interrupted run had made the iterator already (its seed draw then must not move the random state)."""
    if not (_followable(loader) and loader.persistent_workers):
        return iter(loader)  # a new iterator each time, seeded from this process's random state
    if streams.pending is None or loader._iterator is not None:
        return _worker_iter(loader, streams)
    rng = collect_rng_states()
    try:
        return _worker_iter(loader, streams, streams.pending)
    finally:
        restore_rng_states(rng)


# the wiring of a run's loaders: the Trainer's flags applied to each stage's loaders, and batches to the device
def setup_train_data(trainer: Any) -> None:
    loaders = resolve(trainer, "train", trainer._given_train_loaders)
    if loaders is None:
        raise MisconfigurationException(
            "trainer.fit has no training data. Pass it (trainer.fit(model, train_loader)), pass a datamodule with "
            "train_dataloader(), or define train_dataloader() on the module."
        )
    if trainer.overfit_batches:
        loaders = _map_loaders(loaders, lambda ld: with_sequential_sampler(ld, "training"))
    loaders = distribute(trainer, loaders, "train")
    prepare_workers(loaders, trainer.global_rank)
    iterable = CombinedLoader(loaders, "max_size_cycle") if isinstance(loaders, (list, tuple, dict)) else loaders
    limit = trainer.limit_train_batches
    for ld in as_list(loaders):
        check_iterable(ld, "training")
        if iterable is not loaders and isinstance(limit, float) and not math.isinf(_sized_len(ld)):
            # as Lightning, a fraction applies to each loader: one that gets no batch is an error
            num_batches(ld, limit, "limit_train_batches", "training")
    trainer.train_dataloader = loaders
    trainer._train_iterable = iterable
    n = num_batches(iterable, trainer.limit_train_batches, "limit_train_batches", "training")
    trainer.num_training_batches = n
    vci = trainer.val_check_interval
    if trainer._val_check_seconds is not None:
        trainer._val_check_batch = math.inf  # unused: the clock decides (see _train_epoch)
    elif isinstance(vci, int):
        # limit_val_batches=0 turns validation off: the interval is then never used (Lightning accepts it too)
        if (trainer.check_val_every_n_epoch is not None and not math.isinf(n) and vci > n
                and trainer.limit_val_batches != 0):
            raise MisconfigurationException(
                f"val_check_interval={vci} is more than the {int(n)} training batches of an epoch, so validation "
                "would never run. Lower it, or set check_val_every_n_epoch=None to count batches across epochs."
            )
        trainer._val_check_batch = vci
    elif math.isinf(n):
        if vci != 1.0:
            raise MisconfigurationException(
                f"val_check_interval={vci} is a fraction of an epoch, but the training loader has no length. Pass a "
                "number of batches instead, e.g. val_check_interval=1000."
            )
        trainer._val_check_batch = math.inf
    else:
        trainer._val_check_batch = max(1, int(n * vci))


def _shuffles(loader: Any) -> bool:
    """Whether a DataLoader draws its samples in random order (a RandomSampler, or a sampler with shuffle=True)."""
    if not isinstance(loader, DataLoader):
        return False
    sampler = getattr(loader.batch_sampler, "sampler", None) if loader.batch_sampler is not None else None
    sampler = loader.sampler if sampler is None else sampler
    return isinstance(sampler, RandomSampler) or getattr(sampler, "shuffle", False) is True


def _map_loaders(loaders: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(loaders, dict):
        return {k: fn(v) for k, v in loaders.items()}
    if isinstance(loaders, (list, tuple)):
        return type(loaders)(fn(v) for v in loaders)
    return fn(loaders)


def setup_eval_data(trainer: Any, stage: RunningStage, given: Any) -> list[Any]:
    """Resolve the loaders of an evaluation/predict stage and their batch counts; [] when there are none."""
    prefix = stage.dataloader_prefix
    loaders = resolve(trainer, prefix, given)
    if prefix == "val" and trainer.overfit_batches and trainer.state.fn == "fit":  # inside fit, as Lightning
        loaders = _map_loaders(loaders, lambda ld: with_sequential_sampler(ld, "validation"))
    shuffled = [type(ld.dataset).__name__ for ld in as_list(loaders) if _shuffles(ld)]
    if shuffled:
        from fulmen._lightning_utils import PossibleUserWarning  # not loaded by `import fulmen`

        rank_zero_warn(
            f"The {prefix} loader over {shuffled[0]} shuffles its samples; an evaluation gives the same result in "
            f"order, and is easier to compare between runs. Pass `shuffle=False` to the {prefix} DataLoader.",
            category=PossibleUserWarning)
    loaders = distribute(trainer, loaders, prefix)
    prepare_workers(loaders, trainer.global_rank)
    # trainer.{val,test,predict}_dataloaders, limit_*_batches and num_*_batches
    setattr(trainer, f"{prefix}_dataloaders", loaders)
    flat = as_list(loaders)
    flag = f"limit_{prefix}_batches"
    what = "validation" if prefix == "val" else prefix
    nums = []
    for ld in flat:
        check_iterable(ld, what)
        nums.append(num_batches(ld, getattr(trainer, flag), flag, what))
    setattr(trainer, f"num_{prefix}_batches", nums)
    if prefix == "val" and trainer.state.fn == "fit":  # as Lightning: known once fit's loaders are, sanity check or not
        trainer.num_sanity_val_batches = [min(trainer.num_sanity_val_steps, n) for n in nums]
    return flat


def batch_mover(trainer: Any, module: Any) -> Callable[[Any, int], Any]:
    """The batch-transfer path for this run: plain device moves unless a transfer hook is overridden."""
    dm, strategy = trainer.datamodule, trainer.strategy
    device, precision = strategy.root_device, strategy.precision
    convert = precision.convert_input if type(precision).convert_input is not Precision.convert_input else None
    before, transfer, after = (_overridden(name, dm, module) for name in
                               ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"))
    metrics = trainer._metrics

    if before is None and transfer is None and after is None and convert is None:
        on_cpu = device.type == "cpu"

        def move(batch: Any, dataloader_idx: int) -> Any:
            # the common case, a tuple/list of CPU tensors already where they belong, costs a type check
            if on_cpu and type(batch) in (list, tuple) and all(type(t) is Tensor and t.device.type == "cpu" for t in batch):
                return batch
            return strategy.batch_to_device(batch, device)

        return move

    def move_with_hooks(batch: Any, dataloader_idx: int) -> Any:
        # only the user's hooks run under their names (self.log in them then says where it was called)
        if convert is not None:
            batch = convert(batch)
        if before is not None:
            with metrics.hook("on_before_batch_transfer"):
                batch = before(batch, dataloader_idx)
        if transfer is None:
            batch = strategy.batch_to_device(batch, device)
        else:
            with metrics.hook("transfer_batch_to_device"):
                batch = transfer(batch, device, dataloader_idx)
        if after is not None:
            with metrics.hook("on_after_batch_transfer"):
                batch = after(batch, dataloader_idx)
        return batch

    return move_with_hooks


def epoch_batches(trainer: Any, loop: Any, skip: int, reused_before: bool, first_of_fit: bool) -> Iterator[Any]:
    """The epoch's batch iterator, continuing after ``skip`` batches when resumed mid-epoch.

    The epoch's data order is drawn from the RNG here: that state is kept, so a mid-epoch resume rebuilds
    the same order. A mid-epoch resume uses the loader's own state, else skips at the sampler level
    (nothing loaded), else replays.
    """
    train_iterable = trainer._train_iterable
    if skip:
        resume_rng = collect_rng_states()
        restore_rng_states(loop.epoch_start_rng)
        set_generator_states(train_iterable, loop.epoch_start_generators)
        loop.loader_generators = None
    else:
        if loop.loader_generators is not None:  # resumed at an epoch's end: the loader's generators as saved
            set_generator_states(train_iterable, loop.loader_generators)
            loop.loader_generators = None
        loop.epoch_start_rng = collect_rng_states()
        loop.epoch_start_generators = generator_states(train_iterable)
    if loop.sampler_seed is None:
        loop.sampler_seed = sampler_seed()
    set_epoch(train_iterable, loop.epoch, loop.sampler_seed)
    streams = trainer._worker_streams["train"]
    # resumed on another number of processes: this rank's share of the epoch's rest (trainer/elastic.py); the
    # workers start fresh streams, as which process loaded which sample changed with the number of processes
    share = elastic.begin_epoch(trainer, loop, train_iterable, first_of_fit)
    iterator = _iter_with(train_iterable, share, streams) if share is not None else resume_iter(
        train_iterable, loop.batches_in_epoch, loop.loader_state, reused_before=reused_before, streams=streams,
        saved=streams.pending)
    loop.loader_state = streams.pending = None
    if skip:
        restore_rng_states(resume_rng)
    return iterator


def eval_batches(trainer: Any, dl_idx: int, loader: Any, limit: float) -> Any:
    """An iterator over one evaluation loader's batches, made now: making it draws the loader's base seed from
    the global generator, which is why the first loader's is made before the stage's hooks run, as in Lightning
    (a hook that draws random numbers then gets Lightning's)."""
    if trainer.state.fn == TrainerFn.FITTING:  # persistent workers keep their random streams between validations
        loader = eval_iter(loader, trainer._worker_streams.setdefault(f"val{dl_idx}", _WorkerStreams()))
    return islice(loader, limit)


def gather_predictions(strategy: Any, loader: Any, preds: list[Any]) -> list[Any]:
    """Every rank's predictions, back in the loader's sample order and batch size (as one process gives them)."""
    sampler = getattr(loader, "sampler", None)
    indices = list(sampler) if isinstance(sampler, UnrepeatedDistributedSampler) else None
    gathered = strategy.all_gather_object((indices, apply_to_collection(preds, Tensor, lambda t: t.detach().cpu())))
    batch_size = getattr(loader, "batch_size", None)
    samples: dict[int, Any] = {}
    for rank_indices, rank_preds in gathered:
        pieces = [piece for batch in rank_preds for piece in _unbatch(batch)] if rank_indices is not None else None
        if pieces is None or batch_size is None or len(pieces) != len(rank_indices):
            rank_zero_warn("The predictions of several processes could not be put back in sample order (they are not "
                           "tensors with one row per sample); trainer.predict returns them rank after rank.")
            return [p for _, rank_preds_ in gathered for p in rank_preds_]
        samples.update(zip(rank_indices, pieces))
    ordered = [samples[i] for i in sorted(samples)]
    return [default_collate(ordered[i:i + batch_size]) for i in range(0, len(ordered), batch_size)]


def _unbatch(batch: Any) -> list[Any]:
    found: list[int] = []
    apply_to_collection(batch, Tensor, lambda t: found.append(t.shape[0] if t.ndim else -1))
    if not found or len(set(found)) != 1 or found[0] < 0:
        return []  # not one row per sample: the caller falls back to rank order
    return [apply_to_collection(batch, Tensor, lambda t, i=i: t[i]) for i in range(found[0])]
