"""Exact mid-epoch resume of the program a user writes first, with and without loader workers, on one device.

The training data's ``__getitem__`` draws a random augmentation, so any slip in the random streams of the main
process or of a worker shows in the weights. Batches already trained on are skipped at the sampler level
(nothing is loaded again); each worker continues the random stream it had. The uninterrupted run is one launch,
the resumed runs (from its own checkpoints, each in a copy of its folder) another: a new process, as after a
crash. Weights, callback_metrics and every CSV row must equal the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resume_program

PROGRAM = resume_program.__file__

# name: (workers, persistent_workers); batches per epoch: 8, an optimizer step every 2, validation after batches 4, 8
RUNS = {"w0": (0, 0), "w2": (2, 0), "p2": (2, 1), "p3": (3, 1)}
RESUMES = {
    "w0-6": ("w0", "epoch=1-step=6.ckpt"),  # saved after batch 4, before the validation due there
    "w2-3": ("w2", "epoch=0-step=3.ckpt"),  # mid first epoch
    "p2-9": ("p2", "epoch=2-step=9.ckpt"),  # persistent workers, third epoch: they had a seed since the first
    "p3-6": ("p3", "epoch=1-step=6.ckpt"),  # 3 workers: batch 4 is worker 1's turn
    "p3-9": ("p3", "epoch=2-step=9.ckpt"),  # ... and batch 2 worker 2's
}


def launch(out: Path, specs: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, PROGRAM, str(out), *specs], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def copy_run(out: Path, source: str, name: str) -> None:
    shutil.copytree(out / source, out / name)
    for f in ("final.pt", "final.json"):
        (out / name / f).unlink()


def assert_same_run(out: Path, resumed: str, full: str, rows: bool = True) -> None:
    want, got = torch.load(out / full / "final.pt"), torch.load(out / resumed / "final.pt")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert json.loads((out / resumed / "final.json").read_text()) == json.loads((out / full / "final.json").read_text())
    # a resume from an explicit path logs to a new version (as Lightning): the rows from the checkpoint on, which
    # must be the uninterrupted run's from that step on (version_0 there is the copy of the uninterrupted run's)
    if not rows:
        return
    full_rows = _csv(out / full / "lightning_logs/version_0/metrics.csv")
    got = _csv(out / resumed / "lightning_logs/version_1/metrics.csv")
    assert got and got == [r for r in full_rows if int(r["step"]) >= int(got[0]["step"])]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume_workers")
    launch(out, [f"{name}:{w}:{p}:auto:1" for name, (w, p) in RUNS.items()])
    for name, (source, _) in RESUMES.items():
        copy_run(out, source, name)
    launch(out, [f"{name}:{RUNS[source][0]}:{RUNS[source][1]}:auto:1:{ckpt}"
                 for name, (source, ckpt) in RESUMES.items()])
    return out


@pytest.mark.parametrize("resumed", list(RESUMES))
def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(runs, resumed):
    assert_same_run(runs, resumed, RESUMES[resumed][0])


def test_runs_with_and_without_workers_differ(runs):
    """Each worker draws its own augmentations, so the runs differ from each other: the equalities above are not
    those of runs that ignore the workers' random streams."""
    finals = {name: torch.load(runs / name / "final.pt") for name in RUNS}
    assert not torch.equal(finals["w0"]["net.0.weight"], finals["w2"]["net.0.weight"])
    assert not torch.equal(finals["w2"]["net.0.weight"], finals["p3"]["net.0.weight"])


class Recording(resume_program.Net):
    def __init__(self):
        super().__init__()
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].clone())
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_load_what_plain_pytorch_loads(persistent):
    """fulmen follows the workers' random streams without reseeding them: with the sanity check, validation and
    checkpoints on, training sees exactly the batches (order and augmentation) of a plain `for batch in loader`."""
    from torch.utils.data import DataLoader

    import fulmen as pl
    from fulmen.callbacks import ModelCheckpoint

    def loader(n, seed, shuffle):
        return DataLoader(resume_program.Noisy(n, seed), batch_size=8, shuffle=shuffle, num_workers=2,
                          persistent_workers=persistent)

    pl.seed_everything(7)
    resume_program.Net()
    plain = [x for x, _ in loader(32, 0, True)]
    pl.seed_everything(7)
    model = Recording()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, val_check_interval=0.5, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=os.getcwd(),
                         callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)])
    trainer.fit(model, loader(32, 0, True), loader(16, 1, False))
    assert len(model.seen) == len(plain) == 4
    for got, want in zip(model.seen, plain):
        assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_still_carry_their_workers_states():
    """pin_memory=True: the pinning thread pins the batch inside its stamp; the loop gets the pinned batch."""
    from torch.utils.data import DataLoader

    from fulmen.trainer import data as _data

    loader = DataLoader(resume_program.Noisy(32, 0), batch_size=8, num_workers=2, pin_memory=True)
    streams = _data._WorkerStreams()
    batches = list(_data._worker_iter(loader, streams))
    assert len(batches) == 4 and all(x.is_pinned() and y.is_pinned() for x, y in batches)
    assert sorted(streams.saved()["workers"]) == [0, 1]


def test_a_persistent_loader_gives_plain_batches_after_fit():
    """The workers of a persistent loader outlive fit: code iterating the loader afterwards (or trainer.validate)
    gets the batches as the collate_fn made them, not fulmen's stamped ones."""
    from torch.utils.data import DataLoader

    import fulmen as pl

    train = DataLoader(resume_program.Noisy(32, 0), batch_size=8, num_workers=2, persistent_workers=True)
    val = DataLoader(resume_program.Noisy(16, 1), batch_size=8, num_workers=2, persistent_workers=True)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=os.getcwd())
    trainer.fit(resume_program.Net(), train, val)
    for x, y in train:
        assert x.shape == (8, 8) and y.shape == (8, 1)
    assert "val_loss" in trainer.validate(dataloaders=val, verbose=False)[0]
