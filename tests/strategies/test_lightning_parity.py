"""The same seeded program gives Lightning's numbers under ``ddp`` (2 gloo processes), as it does on one device.

``tests/data/parity_program.py`` is the issue-18 standard program (shuffled training loader with 2 workers and a
random augmentation, dropout, AdamW + StepLR per step, accumulation, clipping, validation twice an epoch with the
sanity check, EarlyStopping, ModelCheckpoint every 3 steps, then validate/test/predict), here with
``seed_everything(7, workers=True)``. ``tests/data/parity_lightning.json`` holds what Lightning 2.6 gave for it
(regenerate with ``tests/data/make_parity_lightning.py``, which can also compare both libraries live, bitwise).

Sample order, dropout masks, random states and checkpoint names must be identical; float results are compared to
1e-6 relative, since the file was recorded on one CPU and matrix kernels may round differently on another (on the
recording machine they are bitwise equal).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fulmen.utilities import pl_worker_init_function
from fulmen.utilities.seed import isolate_rng

DATA = Path(__file__).parents[1] / "data"
PROGRAM = DATA / "parity_program.py"
with open(DATA / "parity_lightning.json") as f:
    LIGHTNING = json.load(f)
FLOATS = ("noise", "loss")


def _float(bits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(bits))[0]


def _close(a: str, b: str) -> bool:
    return a == b or math.isclose(_float(a), _float(b), rel_tol=1e-6, abs_tol=1e-9)


def _all_close(a: dict | list, b: dict | list) -> bool:
    """Two nests of hex-encoded floats (and plain values) agree: the same shape, floats within 1e-6."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_all_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_all_close(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str) and len(a) == len(b) == 8:
        try:
            return _close(a, b)
        except ValueError:
            pass
    return a == b


def _predictions(reports: list[dict]) -> dict[int, str]:
    return {i: v for rep in reports for idx, values in rep["predict"] for i, v in zip(idx, values)}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("parity")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "MASTER_", "FULMEN_", "SLURM_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(PROGRAM), str(out), "--lib", "fulmen", "--devices", "2", "--workers", "2",
           "--seed-workers"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (children, loader workers)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ddp_run_reproduces_lightnings_numbers(ddp_run):
    expected = LIGHTNING["ddp_workers2_seeded"]
    for mine, theirs in zip(ddp_run, expected):
        rank = mine["rank"]
        # what each batch was made of: sample indices and dropout masks exactly, augmentation noise and loss
        assert [(s["epoch"], s["batch"], s["idx"], s["mask"]) for s in mine["seen"]] == \
            [(s["epoch"], s["batch"], s["idx"], s["mask"]) for s in theirs["seen"]], rank
        assert _all_close([[s[k] for k in FLOATS] for s in mine["seen"]], [[s[k] for k in FLOATS] for s in theirs["seen"]])
        # the generators' states where fit, validate and test begin (predict: fulmen makes the loader's iterator
        # after on_predict_start, where prediction writers hook the batch sampler; Lightning before it)
        assert mine["rng"][:3] == theirs["rng"][:3] and mine["rng"][3][0] == "predict", rank
        # logged values after every optimizer step and every validation (sync_dist reduction included)
        assert _all_close(mine["steps"], theirs["steps"]), rank
        assert _all_close(mine["vals"], theirs["vals"]), rank
        assert math.isclose(mine["val_loss"], theirs["val_loss"], rel_tol=1e-6), (mine["val_loss"], theirs["val_loss"])
        assert _all_close(mine["weights"], theirs["weights"]), rank
        assert _all_close(mine["validate"], theirs["validate"]) and _all_close(mine["test"], theirs["test"]), rank
        assert mine["global_step"] == theirs["global_step"] and mine["checkpoints"] == theirs["checkpoints"]
    # fulmen returns every rank's predictions (README, differences from Lightning); sample by sample they agree
    ours, theirs = _predictions(ddp_run), _predictions(expected)
    assert ours.keys() == theirs.keys() == set(range(25))
    assert all(_close(ours[i], theirs[i]) for i in ours)


def test_ddp_ranks_draw_as_in_lightning(ddp_run):
    """What Lightning's numbers show, asserted directly: every rank restarts from the seed, so the main process's
    draws (dropout) are the same on both ranks; the distributed sampler shuffles with seed_everything's seed;
    seeded loader workers draw per rank, so the augmentation differs between ranks."""
    r0, r1 = ddp_run
    for epoch in range(2):
        order = torch.randperm(66, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        for rep in ddp_run:
            seen = [i for s in rep["seen"] if s["epoch"] == epoch for i in s["idx"]]
            # every other sample of the shuffled order, padded with the first to 33 per rank
            assert seen == (order + order[:1])[rep["rank"]::2][:len(seen)], (epoch, rep["rank"])
    # 33 samples a rank: 8 batches of 4 and one of 1; EarlyStopping ends epoch 1 at its 4th validation, 1 batch early
    assert [s["epoch"] for s in r0["seen"]] == [s["epoch"] for s in r1["seen"]] == [0] * 9 + [1] * 8
    # dropout keeps the same units on both ranks wherever both show it (a unit that ReLU zeroed shows nothing)
    shown = agree = 0
    for a, b in zip(r0["seen"], r1["seen"]):
        for row_a, row_b in zip(a["mask"], b["mask"]):
            for x, y in zip(row_a, row_b):
                if "-" not in (x, y):
                    shown, agree = shown + 1, agree + (x == y)
    assert agree == shown > 100
    assert all(a["noise"] != b["noise"] for a, b in zip(r0["seen"], r1["seen"]))
    # each stage starts from the seeded state: fit before anything draws, the others after their loader did
    assert r0["rng"][0] == r1["rng"][0] == ["fit", "as seeded"]
    assert [fp for _, fp in r0["rng"][1:3]] == [fp for _, fp in r1["rng"][1:3]] == [r0["rng"][1][1]] * 2
    assert r0["rng"][3] == r1["rng"][3] == ["predict", "as seeded"]
    # validation results are synced: the same on both ranks (the training loss is each rank's own)
    assert [v["val_loss"] for v in r0["vals"]] == [v["val_loss"] for v in r1["vals"]]
    assert r0["validate"] == r1["validate"] and r0["test"] == r1["test"]
    in_fit = [(a["train_loss"], b["train_loss"]) for a, b in zip(r0["vals"], r1["vals"]) if "train_loss" in a]
    assert len(in_fit) == 4 and all(a != b for a, b in in_fit)


def test_worker_seeds_match_lightnings():
    """pl_worker_init_function derives each worker's seeds from (base seed, worker id, rank) as Lightning does."""
    np = pytest.importorskip("numpy")
    with isolate_rng():
        draws = []
        for base, worker, rank in LIGHTNING["worker_cases"]:
            torch.manual_seed(base + worker)  # torch's own seeding of worker `worker` of a loader with base seed `base`
            pl_worker_init_function(worker, rank=rank)
            draws.append({"torch": torch.rand(3).tolist(), "python": random.random(), "numpy": np.random.rand(2).tolist()})
    assert draws == LIGHTNING["worker_draws"]
