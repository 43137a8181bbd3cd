"""The DistributedSampler that goes into every loader when several processes run (trainer/data.py), checked
for rank 1 of 2 in one process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from fulmen.errors import FulmenError
from fulmen.trainer import data as _data


def _trainer(rank: int = 1) -> SimpleNamespace:
    return SimpleNamespace(world_size=2, global_rank=rank, use_distributed_sampler=True, overfit_batches=0,
                           strategy=SimpleNamespace())


def _dataset(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def _collate(items):
    return torch.stack([i[0] for i in items]) * 100


def test_loader_keeps_its_arguments_and_shuffles_per_epoch():
    loader = DataLoader(_dataset(), batch_size=3, shuffle=True, drop_last=True, collate_fn=_collate, pin_memory=False)
    out = _data.distribute(_trainer(), loader, "train")
    assert isinstance(out.sampler, DistributedSampler) and out.sampler.shuffle and out.sampler.rank == 1
    assert (out.batch_size, out.drop_last, out.collate_fn) == (3, True, _collate)
    _data.set_epoch(out, 0)
    first = [b.tolist() for b in out]
    _data.set_epoch(out, 1)
    second = [b.tolist() for b in out]
    assert len(first) == 1 and first != second  # 5 samples per rank, one full batch of 3
    other = _data.distribute(_trainer(0), loader, "train")
    _data.set_epoch(other, 0)
    seen = sorted(v // 100 for b in [*first, *[b.tolist() for b in other]] for v in b)
    assert len(set(seen)) == len(seen)  # the ranks read different samples


def test_eval_loaders_pad_to_equal_batches_and_predict_loaders_do_not_repeat():
    loader = DataLoader(_dataset(5), batch_size=2)
    shares = [[v for b in _data.distribute(_trainer(r), loader, "val") for v in b[0].tolist()] for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3, 0]]  # the same number of batches on every rank, as in Lightning
    shares = [[v for b in _data.distribute(_trainer(r), loader, "predict") for v in b[0].tolist()] for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]]


def test_custom_sampler_is_sharded():
    class EvenFirst(Sampler):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __iter__(self):
            return iter([*range(0, self.n, 2), *range(1, self.n, 2)])

    loader = DataLoader(_dataset(8), batch_size=2, sampler=EvenFirst(8))
    shares = [[v for b in _data.distribute(_trainer(r), loader, "train") for v in b[0].tolist()] for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(8))
    assert shares[0] == [0, 4, 1, 5]  # every other index of the custom order


def test_a_loader_that_cannot_be_recreated_names_the_argument():
    class Mine(DataLoader):
        def __init__(self, dataset, special, **kwargs):
            super().__init__(dataset, **kwargs)

    with pytest.raises(FulmenError, match="`special`.*self.special = special"):
        _data.distribute(_trainer(), Mine(_dataset(), 3, batch_size=2), "train")

    class Kept(DataLoader):
        def __init__(self, dataset, special, **kwargs):
            self.special = special
            super().__init__(dataset, **kwargs)

    out = _data.distribute(_trainer(), Kept(_dataset(), 3, batch_size=2), "train")
    assert type(out) is Kept and out.special == 3 and isinstance(out.sampler, DistributedSampler)


def test_one_process_or_flag_off_leaves_loaders_alone():
    loader = DataLoader(_dataset())
    assert _data.distribute(SimpleNamespace(world_size=1), loader, "train") is loader
    assert _data.distribute(SimpleNamespace(world_size=2, use_distributed_sampler=False), loader, "train") is loader
    already = DataLoader(_dataset(), sampler=DistributedSampler(_dataset(), num_replicas=2, rank=0))
    assert _data.distribute(_trainer(), already, "train") is already
