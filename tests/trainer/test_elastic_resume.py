"""A fit interrupted on N processes and resumed on M (2 -> 1, 1 -> 2, 2 -> 3; DDP and FSDP, gloo on CPU): every
sample the interrupted epoch had left is read exactly once, later epochs read the same global batches, and with
the global batch size kept (``ElasticResume(global_batch_size=24)``) the final weights are the uninterrupted run's
within float tolerance. The program is ``elastic_program.py``; each run records the sample ids every rank trained
on. Four launches, one per number of processes, several runs each (starting processes costs seconds).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "strategies"))
import elastic_program  # noqa: E402
from test_ddp import _env, _ok, _run  # noqa: E402

PROGRAM = elastic_program.__file__
SAMPLES = elastic_program.SAMPLES
# 96 samples, 4 per batch and process, 24 per optimizer step: 4 steps an epoch, a checkpoint every 3 steps
# (step 3: 72 samples of epoch 0 read; step 6: 48 of epoch 1)
UNINTERRUPTED = {1: ["one:1:auto:1:24"], 2: ["two:2:ddp:1:24", "twof:2:fsdp:1:24"]}
RESUMED = {  # name: (processes, spec tail, source, checkpoint step, global batch kept)
    "one-two": (2, "ddp:1:24", "one", 3, True),
    "two-one": (1, "auto:3:0", "two", 3, False),  # no ElasticResume: 1 x 4 x 3 = 12 samples per step
    "twof-one": (1, "fsdp:1:24", "twof", 6, True),  # FSDP's shards resharded by torch.distributed.checkpoint
    "two-three": (3, "ddp:1:24", "two", 6, True),
}
CKPT = {3: "epoch=0-step=3.ckpt", 6: "epoch=1-step=6.ckpt"}


def _launch(out: Path, specs: list[str]) -> str:
    (result,) = _run([([sys.executable, PROGRAM, str(out), *specs], _env())], out)
    _ok([result])
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    out = tmp_path_factory.mktemp("elastic")
    said: dict[int, str] = {0: _launch(out, UNINTERRUPTED[1])}
    resumed = {world: [f"{name}:{n}:{tail}:{source}:{CKPT[step]}"
                       for name, (n, tail, source, step, _) in RESUMED.items() if n == world] for world in (1, 2, 3)}
    said[2] = _launch(out, UNINTERRUPTED[2] + resumed[2])  # the 1 -> 2 resume reads the 1-process run's checkpoint
    said[1] = _launch(out, resumed[1])
    said[3] = _launch(out, resumed[3])
    return out, said


def _batches(out: Path, run: str) -> list[tuple[int, int, list[int]]]:
    """``(epoch, global step, sample ids)`` of every training batch of every rank of ``run``."""
    rows = []
    for path in sorted((out / run).glob("ids-rank*.txt")):
        for line in path.read_text().splitlines():
            epoch, step, *ids = map(int, line.split())
            rows.append((epoch, step, ids))
    return rows


def _by_step(rows: list[tuple[int, int, list[int]]]) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for _, step, ids in rows:
        steps.setdefault(step, []).extend(ids)
    return {step: sorted(ids) for step, ids in steps.items()}


def _weights(out: Path, run: str) -> dict[str, torch.Tensor]:
    return torch.load(out / run / "final.pt")


@pytest.mark.parametrize("resumed", list(RESUMED))
def test_every_sample_the_interrupted_epoch_had_left_is_read_exactly_once(runs, resumed):
    out, _ = runs
    _, _, source, step, kept = RESUMED[resumed]
    before = [r for r in _batches(out, source) if r[1] < step]  # what the interrupted run had trained on
    after = _batches(out, resumed)
    assert after and min(r[1] for r in after) == step
    for epoch in range(elastic_program.EPOCHS):
        seen = Counter(i for e, _, ids in before + after if e == epoch for i in ids)
        assert seen == Counter(range(SAMPLES)), f"epoch {epoch}: repeated or missing samples"
    if kept:  # the same global batch at every optimizer step, and so the same weights
        want = _by_step(_batches(out, source))
        assert _by_step(after) == {s: want[s] for s in _by_step(after)}
        for key, value in _weights(out, source).items():
            torch.testing.assert_close(_weights(out, resumed)[key], value, rtol=0, atol=1e-6)


def test_one_process_and_two_read_the_same_global_batches_with_elastic_resume(runs):
    out, _ = runs
    assert _by_step(_batches(out, "one")) == _by_step(_batches(out, "two")) == _by_step(_batches(out, "twof"))
    for key, value in _weights(out, "one").items():
        torch.testing.assert_close(_weights(out, "two")[key], value, rtol=0, atol=1e-6)


def test_a_resume_on_another_number_of_processes_says_what_it_keeps_in_one_line(runs):
    _, said = runs
    assert ("Resuming on 3 processes a checkpoint written by 2: each of the 48 samples left of epoch 1 is read once, "
            "shared among this run's processes; the global batch stays 24 samples (3 x 4 x accumulate 2).") in said[3]
    assert ("Resuming on 1 process a checkpoint written by 2: each of the 24 samples left of epoch 0 is read once, "
            "shared among this run's processes; the global batch changes from 24 to 12 samples per optimizer step"
            in said[1])
    assert "ElasticResume(global_batch_size=24) keeps it" in said[1]
    assert "Resuming on" not in said[0]  # uninterrupted


def test_data_without_a_rebuildable_order_says_the_promise_cannot_be_kept(recwarn):
    from torch.utils.data import DataLoader, IterableDataset

    from fulmen.trainer import elastic
    from fulmen.trainer.state import LoopState

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(100))

    loop = LoopState(epoch=1, batches_in_epoch=5)
    loop.data_order = {"world_size": 2, "batch_size": 4, "accumulate": 1, "order": None, "base": [0, 0]}
    trainer = SimpleNamespace(world_size=3, global_rank=0, accumulate_grad_batches=1)
    assert elastic.begin_epoch(trainer, loop, DataLoader(Stream(), batch_size=4), first_of_fit=True) is None
    (warning,) = [str(w.message) for w in recwarn if "Resuming on 3" in str(w.message)]
    assert "has no order fulmen can rebuild" in warning and "the rest of epoch 1 may repeat or miss samples" in warning
    assert loop.batches_in_epoch == 3  # 40 samples read, 12 per step now: the position on 3 processes, rounded


def test_a_deepspeed_checkpoint_on_another_number_of_processes_fails_first_with_the_fix(tmp_path):
    from fulmen.errors import CheckpointError
    from fulmen.strategies.deepspeed import check_same_world_size

    ckpt = tmp_path / "epoch=0-step=3.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    (ckpt / "latest").write_text("checkpoint")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        (ckpt / "checkpoint" / name).write_bytes(b"")
    check_same_world_size(ckpt, 2, {})
    check_same_world_size(ckpt, 3, {"checkpoint": {"load_universal": True}})  # DeepSpeed's own elastic format
    with pytest.raises(CheckpointError, match=r"written by 2 DeepSpeed processes and this run has 3: .* Resume on 2 "
                                              r"processes, or .*fulmen consolidate"):
        check_same_world_size(ckpt, 3, {})


def _resume_shares(record: dict | None, world: int, position: int, n: int, batch: int):
    """Every rank's batches for the rest of epoch 0 on ``world`` processes after a resume at ``position`` (the
    checkpoint's batches per process), and the record its checkpoints would write."""
    from torch.utils.data import DataLoader, DistributedSampler

    from fulmen.trainer import elastic
    from fulmen.trainer.state import LoopState

    shares, records = [], []
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(0)
        loader = DataLoader(range(n), batch_size=batch, sampler=sampler)
        loop = LoopState(batches_in_epoch=position, data_order=None if record is None else dict(record))
        trainer = SimpleNamespace(world_size=world, global_rank=rank, accumulate_grad_batches=1)
        share = elastic.begin_epoch(trainer, loop, loader, first_of_fit=True)
        shares.append([[int(i) for i in b] for b in loader] if share is None else share.batches)
        records.append((loop.data_order, loop.batches_in_epoch))
    return shares, records


def test_resumes_chained_over_several_process_counts_read_every_sample_once():
    """2 processes read 9 batches each, 3 go on for 4, 3 again (a resume of a resumed epoch, on the same
    number) for 3, then 2 finish the epoch: each of the 120 samples is read once."""
    n, batch = 120, 2
    record, position, read = None, 0, []
    for world, steps in ((2, 9), (3, 4), (3, 3), (2, None)):  # processes, batches each reads before it stops
        shares, records = _resume_shares(record, world, position, n, batch)
        assert all(r == records[0] for r in records)  # every rank agrees where the epoch stands
        read += [i for share in shares for b in (share if steps is None else share[:steps]) for i in b]
        record, position = records[0][0], records[0][1] + (steps or 0)
    assert Counter(read) == Counter(range(n))


def test_a_rest_that_does_not_divide_is_padded_with_its_first_samples_as_the_distributed_sampler_pads():
    from fulmen.trainer.elastic import _split

    shares = [_split(list(range(10, 20)), 3, rank, drop_last=False) for rank in range(3)]
    assert shares == [[10, 13, 16, 19], [11, 14, 17, 10], [12, 15, 18, 11]]
    assert [_split(list(range(10, 20)), 3, rank, drop_last=True) for rank in range(3)] == [
        [10, 13, 16], [11, 14, 17], [12, 15, 18]]
