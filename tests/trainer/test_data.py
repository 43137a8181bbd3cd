"""Mid-epoch resume skips the batches already trained on at the sampler level: the same batches as an
uninterrupted run, none of the skipped ones loaded (issue 13, item 4)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

import fulmen as pl
from helpers import quiet_trainer


class Counting(Dataset):
    """Item i is (features, label, i); counts __getitem__ calls."""

    def __init__(self, n=60):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.calls = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.calls += 1
        return self.x[i], int(self.x[i].sum() > 0), i


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2), nn.Linear(8, 2))
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        self.seen.append(idx.tolist())
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders():
    """Each kind of loader, built afresh as a restarted script would build it."""
    return {
        "sequential": lambda ds: DataLoader(ds, batch_size=8),
        "random": lambda ds: DataLoader(ds, batch_size=8, shuffle=True),
        "random_generator": lambda ds: DataLoader(ds, batch_size=8, shuffle=True,
                                                  generator=torch.Generator().manual_seed(5)),
        "sampler_generator": lambda ds: DataLoader(ds, batch_size=8,
                                                   sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(9))),
        "batch_sampler": lambda ds: DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 7, drop_last=True)),
        "sequential_batch_sampler": lambda ds: DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 5, False)),
    }


class StopAt(pl.Callback):
    def __init__(self, at, path):
        self.at, self.path = at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("stop")


def _run(make, callbacks=(), ckpt_path=None, epochs=3):
    pl.seed_everything(1)
    ds = Counting()
    model = Net()
    trainer = quiet_trainer(max_epochs=epochs, callbacks=list(callbacks))
    try:
        trainer.fit(model, make(ds), ckpt_path=ckpt_path)
    except RuntimeError:
        pass
    return model, ds, trainer


@pytest.mark.parametrize("kind", list(_loaders()))
def test_resume_skips_at_the_sampler_level_with_the_same_batches(tmp_path, kind):
    make = _loaders()[kind]
    straight, _, _ = _run(make)
    per_epoch = len(make(Counting()))
    at = per_epoch + 3  # mid second epoch
    _run(make, [StopAt(at, tmp_path / "mid.ckpt")])
    resumed, ds, trainer = _run(make, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.seen == straight.seen[at:]
    assert ds.calls == sum(len(b) for b in resumed.seen)  # not one skipped item was loaded
    assert trainer.global_step == len(straight.seen)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


class Stateful:
    """A loader that keeps its own position (like torchdata's StatefulDataLoader)."""

    def __init__(self, ds):
        self.ds, self.start, self.pos, self.loaded = ds, 0, 0, None

    def __len__(self):
        return len(self.ds) // 6

    def __iter__(self):
        self.pos, start, self.start = self.start, self.start, 0
        for b in range(start, len(self)):
            self.pos = b + 1
            items = [self.ds[i] for i in range(6 * b, 6 * b + 6)]
            yield torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]), torch.tensor(
                [i for _, _, i in items])

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.loaded = state
        self.start = state["pos"]


def test_a_stateful_loader_resumes_through_its_own_state(tmp_path):
    straight, _, _ = _run(Stateful)
    _run(Stateful, [StopAt(13, tmp_path / "mid.ckpt")])
    resumed, ds, trainer = _run(Stateful, ckpt_path=tmp_path / "mid.ckpt")
    assert trainer.train_dataloader.loaded == {"pos": 3}
    assert resumed.seen == straight.seen[13:] and ds.calls == 6 * len(resumed.seen)


class Stream(IterableDataset):
    def __init__(self):
        self.ds = Counting()

    def __iter__(self):
        for i in range(len(self.ds)):
            yield self.ds[i]


def test_a_plain_iterable_dataset_is_replayed_and_says_so_once(tmp_path):
    from fulmen.trainer import data

    make = lambda ds: DataLoader(Stream(), batch_size=8)  # noqa: E731
    straight, _, _ = _run(make)
    _run(make, [StopAt(11, tmp_path / "mid.ckpt")])
    data._replay_warned = False
    with pytest.warns(UserWarning, match="loaded again") as record:
        resumed, _, _ = _run(make, ckpt_path=tmp_path / "mid.ckpt")
    assert sum("loaded again" in str(w.message) for w in record) == 1
    assert resumed.seen == straight.seen[11:]


@pytest.mark.parametrize("persistent", [False, True])
def test_no_worker_process_outlives_its_stage(tmp_path, persistent):
    """Loaders read part-way (limit_*_batches) leave no worker process behind when fit or validate returns, as in
    Lightning: before, they lived on until a garbage collection, which then waited 5 s for each of them."""
    import multiprocessing

    class WithVal(Net):
        def validation_step(self, batch, batch_idx):
            x, y, _ = batch
            self.log("val_loss", F.cross_entropy(self.net(x), y))

    make = lambda: DataLoader(Counting(), batch_size=8, shuffle=True, num_workers=2,  # noqa: E731
                              persistent_workers=persistent)
    model = WithVal()
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2,
                         enable_progress_bar=False)
    trainer.fit(model, make(), make())
    assert trainer.global_step == 6 and len(model.seen) == 6 and "val_loss" in trainer.callback_metrics
    assert multiprocessing.active_children() == []
    assert trainer.validate(model, make())[0]["val_loss"] > 0
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("at", [11, 16])  # mid third epoch; the end of the second (a fresh iterator next)
def test_persistent_workers_resume_with_the_same_batches(tmp_path, at):
    """A persistent-workers loader draws its worker seed only when its first iterator is made; a resumed run
    makes one in a later epoch, and must not let that draw shift the order or the training randomness."""
    make = lambda ds: DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, persistent_workers=True)  # noqa: E731
    straight, _, _ = _run(make)
    _run(make, [StopAt(at, tmp_path / "mid.ckpt")])
    resumed, _, _ = _run(make, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.seen == straight.seen[at:]
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


_HANG_FIRST_CHILD = None  # a file path while test_a_worker_stuck_in_its_fork_is_forked_again runs


def _hang_first_child() -> None:
    """In a forked child: the first one (it creates the file) stops as a child stuck inside os.fork() does, before
    any of its own code runs (CPython gh-112275)."""
    import os
    import time

    if _HANG_FIRST_CHILD is not None:
        try:
            fd = os.open(_HANG_FIRST_CHILD, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(3600)


def test_a_worker_stuck_in_its_fork_is_forked_again(tmp_path, monkeypatch):
    """Where fork can hang (distributed runs on Python < 3.11.10), a worker that does not start is killed and
    forked again; the loader gives the batches a plain one gives, and the stuck child is gone."""
    import multiprocessing
    import os

    from fulmen.trainer import data

    global _HANG_FIRST_CHILD
    if not getattr(test_a_worker_stuck_in_its_fork_is_forked_again, "registered", False):
        os.register_at_fork(after_in_child=_hang_first_child)  # runs inside os.fork, before the child's own code
        test_a_worker_stuck_in_its_fork_is_forked_again.registered = True
    monkeypatch.setattr(data, "_START_TIMEOUT", 1.0)
    make = lambda **kw: DataLoader(Counting(20), batch_size=3, shuffle=False, num_workers=2, **kw)  # noqa: E731
    expected = [b[2].tolist() for b in make()]
    marker = tmp_path / "stuck-pid"
    _HANG_FIRST_CHILD = str(marker)
    try:
        got = [b[2].tolist() for b in make(multiprocessing_context=data._checked_fork_context())]
    finally:
        _HANG_FIRST_CHILD = None
    assert got == expected
    stuck = int(marker.read_text())
    assert not os.path.exists(f"/proc/{stuck}")  # killed and reaped
    assert multiprocessing.active_children() == []


def test_loaders_start_their_workers_through_the_checked_fork_where_fork_can_hang(monkeypatch):
    """Only loaders that fork their workers get the checked fork, and only where forking can hang."""
    from fulmen.trainer import data

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    default, forked, spawned, inline = (
        DataLoader(Counting(), num_workers=2), DataLoader(Counting(), num_workers=2, multiprocessing_context="fork"),
        DataLoader(Counting(), num_workers=2, multiprocessing_context="spawn"), DataLoader(Counting()))
    monkeypatch.setattr(data, "_FORK_CAN_HANG", False)
    data.prepare_workers([default], 0)
    assert default.multiprocessing_context is None  # a Python that forks safely: the loader as it was
    monkeypatch.setattr(data, "_FORK_CAN_HANG", True)
    data.prepare_workers(data.CombinedLoader([default, forked, spawned, inline]), 0)
    checked = type(data._checked_fork_context())
    assert all(type(ld.multiprocessing_context) is checked for ld in (default, forked))
    assert spawned.multiprocessing_context.get_start_method() == "spawn" and inline.multiprocessing_context is None
