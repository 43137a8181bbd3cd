"""Loader wiring: where each stage's loaders come from, how many batches each gives, and how
several loaders combine."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any, Iterator

from fulmen.errors import MisconfigurationException
from fulmen.utilities import is_overridden

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


def _datamodule_has(dm: Any, method: str) -> bool:
    from fulmen.datamodule import LightningDataModule

    return dm is not None and (is_overridden(method, dm, LightningDataModule))


def resolve(trainer: Any, stage: str, given: Any) -> Any:
    """The loaders for ``stage`` from the first source that has them; None when no source does."""
    if given is not None:
        return given
    method = f"{stage}_dataloader"
    dm = trainer.datamodule
    if _datamodule_has(dm, method):
        return getattr(dm, method)()
    from fulmen.module import LightningModule

    module = trainer.lightning_module
    if is_overridden(method, module, LightningModule):
        return getattr(module, method)()
    return None


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
    if n == 0:
        raise MisconfigurationException(
            f"The {what} dataloader is empty (0 batches). Check the dataset's length and the batch size "
            "(with drop_last=True a dataset smaller than one batch gives nothing)."
        )
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
                f"You requested to check {limit} of the {what} dataloader but {limit} * {n} < 1 batch. Increase "
                f"`{flag}`: try at least `{flag}={1.0 / n}`, or an integer number of batches such as `{flag}=1`."
            )
        return taken
    return min(n, int(limit))


def check_limit(value: Any, flag: str) -> int | float | None:
    """Validate an int-or-fraction flag: an int >= 0, or a float in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise MisconfigurationException(f"{flag}={value!r}: pass an int (batches) or a float fraction in (0, 1].")
    if isinstance(value, float):
        if value > 1 and value.is_integer():  # 10.0 means 10 batches, as in Lightning
            return int(value)
        if not 0.0 <= value <= 1.0:
            raise MisconfigurationException(
                f"{flag}={value} is outside [0.0, 1.0]. Pass a fraction of the batches, e.g. {flag}=0.25, or an "
                f"integer number of batches, e.g. {flag}={int(value) if value > 1 else 10}."
            )
        return value
    if isinstance(value, int):
        if value < 0:
            raise MisconfigurationException(f"{flag}={value} is negative; pass a number of batches >= 0.")
        return value
    raise MisconfigurationException(f"{flag}={value!r}: pass an int (batches) or a float fraction in (0, 1].")


def with_sequential_sampler(loader: Any) -> Any:
    """A copy of a DataLoader that does not shuffle (used by ``overfit_batches``)."""
    from torch.utils.data import DataLoader, RandomSampler

    if type(loader) is not DataLoader or not isinstance(loader.sampler, RandomSampler):
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers else False,
        **({"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}),
    )


def islice(iterable: Iterable, n: float) -> Iterator:
    return iter(iterable) if math.isinf(n) else itertools.islice(iterable, int(n))
