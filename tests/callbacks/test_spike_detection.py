"""SpikeDetection: Lightning's behaviour (stop, write the batches to skip) and fulmen's recover=True (roll back,
replay from memory, skip), on one device, after a kill and resume, and under DDP. ``spike_program.py`` is the
program; a spike is a batch whose loss is multiplied by 1000 or made NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import spike_program as prog  # noqa: E402
from fulmen.callbacks import SpikeDetection  # noqa: E402
from fulmen.errors import FulmenError, MisconfigurationException, SpikeRecoveryLimitError, TrainingSpikeException  # noqa: E402

SCRIPT = str(Path(__file__).with_name("spike_program.py"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                              "MASTER_PORT") and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the self-launched rank and loader workers too
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _skipped_epochs(first: int, last: int, epochs: int = 2) -> list[list[int]]:
    return [[e, b] for e in range(epochs) for b in range(first, last + 1)]


def _batches_trained(model: prog.Net, epoch: int, world_size: int = 1) -> list[int]:
    """Which batch of the epoch each trained batch was (from its first sample id)."""
    return [ids[1] // (prog.BATCH * world_size) for ids in model.trained_ids if ids[0] == epoch]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run whose dataset never had the batches a recovery skips (5 and 6), without and with the callback."""
    out = tmp_path_factory.mktemp("reference")
    model = prog.Net()
    data = prog.Regression(prog.excluded(prog.SPIKE_BATCH - 1, prog.SPIKE_BATCH))
    trainer = prog.fit(out, data, model, None)
    watched, spike = prog.Net(), SpikeDetection(recover=True, snapshot_every_n_steps=3)
    prog.fit(out / "watched", data, watched, spike)
    return {"eval_loss": prog.eval_loss(model), "weights": prog.weights(model), "global_step": trainer.global_step,
            "watched": prog.weights(watched), "watched_recoveries": spike.recoveries}


def test_a_run_without_spikes_is_not_changed_by_recovery(reference):
    """Snapshots and the per-batch check leave a run without spikes exactly as it was."""
    assert reference["watched_recoveries"] == 0
    assert reference["watched"] == reference["weights"]


@pytest.mark.parametrize("factor", [1000.0, float("nan")], ids=["x1000", "nan"])
def test_recovery_rolls_back_skips_and_ends_like_a_run_without_the_batch(tmp_path, reference, factor, caplog):
    spike = SpikeDetection(recover=True)
    model = prog.Net(prog.spike_ids(), factor)
    with caplog.at_level("INFO", logger="fulmen"):
        trainer = prog.fit(tmp_path, prog.Regression(), model, spike)
    assert spike.recoveries == 2  # the spike's batch comes back in the second epoch
    assert [list(s) for s in spike.skipped_batches] == _skipped_epochs(5, 6)
    lines = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
    assert len(lines) == 2 and "epoch 0, batch 6" in lines[0] and "skipping batches 5-6" in lines[0]
    assert trainer.callback_metrics["spike_recoveries"] == 2
    # after the spike: the batches since the snapshot replayed, then on from batch 7; 5 and 6 never again
    for epoch in (0, 1):
        seq = _batches_trained(model, epoch)
        after = seq[seq.index(6) + 1:]
        assert 5 not in after and 6 not in after and after[-17:] == list(range(7, 24))
    # the same number of optimizer steps and the same result as the run that never had the batches
    assert trainer.global_step == reference["global_step"]
    loss = prog.eval_loss(model)
    assert loss == pytest.approx(reference["eval_loss"], rel=0.05)
    torch.testing.assert_close(torch.tensor(prog.weights(model)), torch.tensor(reference["weights"]),
                               atol=0.02, rtol=0.02)
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [5, 6]


def test_lightning_mode_raises_and_writes_the_batches_to_skip(tmp_path):
    spike = SpikeDetection(exclude_batches_path=tmp_path / "skips")
    with pytest.raises(TrainingSpikeException, match="epoch 0, batch 6") as err:
        prog.fit(tmp_path, prog.Regression(), prog.Net(prog.spike_ids()), spike)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, FulmenError) and err.value.batch_idx == 6
    assert json.loads((tmp_path / "skips" / "skip_batches.json").read_text()) == [5, 6]
    # a NaN loss is a spike too (finite_only=True), not fulmen's NonFiniteLossError
    with pytest.raises(TrainingSpikeException):
        prog.fit(tmp_path / "nan", prog.Regression(), prog.Net(prog.spike_ids(), float("nan")), SpikeDetection())
    assert json.loads((tmp_path / "nan" / "skip_batches.json").read_text()) == [5, 6]


def test_more_spikes_than_max_recoveries_end_the_run(tmp_path):
    spike = SpikeDetection(recover=True, max_recoveries=1)
    with pytest.raises(SpikeRecoveryLimitError, match="max_recoveries=1"):
        prog.fit(tmp_path, prog.Regression(), prog.Net(prog.spike_ids()), spike)
    assert spike.recoveries == 1 and [list(s) for s in spike.skipped_batches] == [[0, 5], [0, 6]]


def test_killed_after_a_recovery_the_resumed_run_skips_the_same_batches(tmp_path):
    """A process recovers at batch 6 (skipping 5..10), saves and is killed after batch 7; a new run resumes
    from that checkpoint and must skip 8, 9 and 10 as the uninterrupted run did, ending with its weights."""
    killed = _run([str(tmp_path / "killed"), "kill"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "skipping batches 5-10" in killed.stderr
    resumed_spike = SpikeDetection(recover=True, skip_after=4)
    resumed = prog.Net(prog.spike_ids())
    prog.fit(tmp_path / "killed", prog.Regression(), resumed, resumed_spike,
             ckpt_path=str(tmp_path / "killed" / "killed.ckpt"))
    assert _batches_trained(resumed, 0)[0] == 11  # 8, 9, 10 skipped without a new spike
    whole_spike = SpikeDetection(recover=True, skip_after=4)
    whole = prog.Net(prog.spike_ids())
    prog.fit(tmp_path / "whole", prog.Regression(), whole, whole_spike)
    assert resumed_spike.skipped_batches == whole_spike.skipped_batches
    assert resumed_spike.recoveries == whole_spike.recoveries == 2
    torch.testing.assert_close(torch.tensor(prog.weights(resumed)), torch.tensor(prog.weights(whole)))


def test_ddp_ranks_agree_on_a_spike_in_one_rank_and_recover_together(tmp_path):
    """2 gloo processes, the spike in rank 1's batch only: DDP (x1000 and NaN) and FSDP (x1000) recover; DeepSpeed
    stops every rank (Lightning's behaviour) and refuses recover=True. One launch."""
    result = _run([str(tmp_path), "ddp"])
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # rank zero says it, although its own loss was fine
    assert result.stderr.count("spiked on another process at epoch 0, batch 6") == 3
    ref = ranks[0]["reference"]
    for rep in ranks:
        for name in ("x1000", "nan", "fsdp_x1000"):
            run = rep[name]
            assert run["recoveries"] == 2 and run["skipped"] == _skipped_epochs(5, 6)
            assert run["spike_recoveries"] == 2.0
            assert run["global_step"] == ref["global_step"]
            assert run["eval_loss"] == pytest.approx(ref["eval_loss"], rel=0.05)
            assert run["weights"] == ranks[0][name]["weights"]  # the ranks stayed in step
            seq = [ids[1] // (prog.BATCH * 2) for ids in run["trained_ids"] if ids[0] == 0]
            after = seq[seq.index(6) + 1:]
            assert 5 not in after and 6 not in after and after[-5:] == list(range(7, 12))
        assert rep["deepspeed_stop"].startswith("TrainingSpikeException: SpikeDetection: the training loss spiked")
        assert "batch 6" in rep["deepspeed_stop"]
        assert rep["deepspeed_recover"].startswith("MisconfigurationException: SpikeDetection(recover=True) cannot "
                                                   "roll back under DeepSpeed")


def test_arguments_are_checked():
    with pytest.raises(MisconfigurationException, match="mode='min'"):
        SpikeDetection(mode="relative")
    with pytest.raises(MisconfigurationException, match="max_recoveries"):
        SpikeDetection(recover=True, max_recoveries=-1)


#: Which losses of SEQ Lightning 2.6's SpikeDetection calls a spike, per argument set (observed by running it on
#: this sequence, one loss per batch index, and recording where it raised)
SEQ = [5.0, 4.0, 4.5, 20.0, 4.2, 3.9, 4.1, 12.0, 3.0, float("nan"), 3.1, float("inf"), 2.9, 2.8, 9.5, 2.7,
       float("-inf"), 2.6, 0.5, 2.5]
LIGHTNING_SPIKES = {
    "default": ({}, "00010000010100001000"),
    "max": ({"mode": "max"}, "00000000010100001000"),
    "atol": ({"atol": 5.0, "rtol": None}, "00010001010100101000"),
    "both": ({"atol": 1.0, "rtol": 1.0}, "00010001010100101000"),
    "warmup3_window2": ({"warmup": 3, "window": 2}, "00010001010100101000"),
    "not_finite_only": ({"finite_only": False}, "00010000000100000000"),
    "no_tols": ({"atol": None, "rtol": None}, "00111011011100101001"),
}


@pytest.mark.parametrize("case", sorted(LIGHTNING_SPIKES))
def test_detection_rules_match_lightning(case):
    kwargs, expected = LIGHTNING_SPIKES[case]
    detector = SpikeDetection(**kwargs)
    flags = ""
    for batch_idx, value in enumerate(SEQ):
        spike = detector._judge(torch.tensor(value), batch_idx)
        if not spike:
            detector._accept(detector._value, None)
        flags += str(int(spike))
    assert flags == expected
