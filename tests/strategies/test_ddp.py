"""DDP on 2 gloo processes (CPU), under every launcher: self-launch, torchrun (one node, two simulated nodes),
SLURM variables, ddp_spawn; a failing rank; exact mid-epoch resume. ``ddp_script.py`` runs in each process and
reports what it saw; each launch checks many things, because starting a process costs seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.strategies.environments import find_free_network_port

sys.path.insert(0, str(Path(__file__).parent))
import ddp_script  # noqa: E402

SCRIPT = str(Path(__file__).with_name("ddp_script.py"))
TIMEOUT = 240


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "LSB_", "JSM_", "FULMEN_LAUNCHER", "PL_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _run(commands: list[tuple[list[str], dict[str, str]]], out: Path,
         timeout: float = TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Start every command in its own process group, wait for all; on a timeout or failure kill the groups."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for cmd, env in commands]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    assert not _alive(str(out)), "processes were left running"
    return results


def _alive(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (this test's own output folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(pid))
    return found


def _reports(out: Path, ranks: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def _ok(results: list[subprocess.CompletedProcess]) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, batch 2B over the same samples: what DDP with batch B per process must reproduce."""
    torch.set_num_threads(1)
    model = ddp_script.Net()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=ddp_script.STEPS, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, val_check_interval=ddp_script.STEPS)
    batch = 2 * ddp_script.BATCH
    trainer.fit(model, DataLoader(ddp_script.data(), batch_size=batch), DataLoader(ddp_script.data(1), batch_size=batch))
    out = {"weights": ddp_script.weights(model), "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}

    def fit(model, **kwargs):
        pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, **kwargs).fit(model, DataLoader(ddp_script.data(), batch_size=batch))
        return model

    out["accumulate"] = ddp_script.weights(fit(ddp_script.Net(), max_steps=2, accumulate_grad_batches=2))
    return out


def _close(got: list, want: list) -> None:
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5)


def _check_training(reports: list[dict], reference: dict, nodes: int = 1) -> None:
    for rank, rep in enumerate(reports):
        assert rep["rank_zero_only_at_start"] == rep["env_rank"] == rank  # set before user code ran
        world, global_rank, local_rank, node_rank, num_devices, zero, device = rep["topology"]
        assert (world, global_rank, zero, device) == (2, rank, rank == 0, "cpu")
        assert (local_rank, node_rank, num_devices) == ((0, rank, 1) if nodes == 2 else (rank, 0, 2))
        assert rep["rank_zero_only"] == rank
        assert rep["global_step"] == ddp_script.STEPS
        for got, want in zip(rep["weights"], reference["weights"]):
            assert got == pytest.approx(want, abs=1e-6)
        # sync_dist epoch means equal the single-process values; sum/max reduce across ranks
        for key in ("val_loss", "val_sum", "val_max"):
            assert rep["callback_metrics"][key] == pytest.approx(reference["metrics"][key], rel=1e-5)
        assert rep["callback_metrics"]["rank_seen"] == 1.0
        synced = {k: v for k, v in rep["callback_metrics"].items() if k != "val_local"}
        assert synced == {k: v for k, v in reports[0]["callback_metrics"].items() if k != "val_local"}
        assert rep["wrapper"] == "DistributedDataParallel" and rep["lightning_module_is_model"]
        assert rep["ckpt_keys"] == ["layer.bias", "layer.weight"]  # no `module.` prefix
        assert rep["best_path"] == reports[0]["best_path"]


def test_self_launch_trains_like_one_process_with_twice_the_batch(tmp_path, reference):
    """`python train.py` with devices=2 starts the second process itself; also checks the collectives,
    predictions in sample order, rank-zero logger files and exact mid-epoch resume under DDP."""
    (result,) = _run([([sys.executable, SCRIPT, str(tmp_path)], _env())], tmp_path)
    _ok([result])
    assert result.stderr.count("`self.log('val_local', ...)` logs an epoch value") == 1  # rank 0, once
    reports = _reports(tmp_path)
    _check_training(reports, reference)
    for rank, rep in enumerate(reports):
        assert rep["all_gather"] == [[0, 0], [1, 10]] and rep["all_gather_dict"] == [0.0, 1.0]
        assert (rep["reduce_mean"], rep["reduce_sum"], rep["reduce_max"]) == (1.5, 3.0, 2.0)
        assert rep["broadcast"] == {"from": 1}
        assert rep["decision_all"] is False and rep["decision_any"] is True
        assert rep["votes"] == [True, False, True]
        assert rep["predictions"] == [[0.0, 10.0, 20.0], [30.0, 40.0, 50.0], [60.0, 70.0, 80.0], [90.0]]
        assert rep["resume_bitwise"] and rep["resume_changed"]
    assert reports[0]["pid"] != reports[1]["pid"]
    for rep in reports:
        # accumulation: the same weights as one process, and one all-reduce per optimizer step, not per batch
        _close(rep["accumulate"]["weights"], reference["accumulate"])
        assert rep["accumulate"]["allreduces"] == 2
        # manual optimization says the same with toggle_model(sync_grad=...): the same weights and all-reduces
        _close(rep["manual_accumulate"]["weights"], reference["accumulate"])
        assert rep["manual_accumulate"]["allreduces"] == 2
        _close(rep["compiled"], reference["weights"])
        # the ranks saw different data; equal weights show the gradients were all-reduced
        for key in ("gan", "bf16"):
            assert rep[key] == reports[0][key]
        assert rep["gan"] != ddp_script.weights(ddp_script.GAN())
        assert rep["max_time_steps"] == reports[0]["max_time_steps"] > 0
    # one logger folder, written by rank 0 only; one checkpoint
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["version_0"]
    assert len(list((tmp_path / "ckpt").iterdir())) == 1


def test_torchrun_one_node(tmp_path, reference):
    port = str(find_free_network_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "--master_addr=127.0.0.1", SCRIPT, str(tmp_path), "--quick"]
    _ok(_run([(cmd, _env())], tmp_path))
    _check_training(_reports(tmp_path), reference)


def test_torchrun_two_simulated_nodes(tmp_path, reference):
    port = str(find_free_network_port())
    commands = [([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                  "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", SCRIPT, str(tmp_path),
                  "--quick", "--devices=1", "--num-nodes=2"], _env()) for node in (0, 1)]
    _ok(_run(commands, tmp_path))
    _check_training(_reports(tmp_path), reference, nodes=2)


def test_slurm_variables(tmp_path, reference):
    """Two processes as srun would start them: ranks from SLURM_*, the address from a bracketed node list."""
    port = str(find_free_network_port())
    commands = [([sys.executable, SCRIPT, str(tmp_path), "--quick"],
                 _env(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_PROCID=str(r),
                      SLURM_LOCALID=str(r), SLURM_NODEID="0", SLURM_JOB_NODELIST="127.0.0.[1-4,7]",
                      SLURM_JOB_ID="4242", SLURM_JOB_NAME="train", MASTER_PORT=port))
                for r in (0, 1)]
    _ok(_run(commands, tmp_path))
    _check_training(_reports(tmp_path), reference)


def test_ddp_spawn_returns_weights_and_metrics(tmp_path, reference):
    _ok(_run([([sys.executable, SCRIPT, str(tmp_path), "--strategy=ddp_spawn"], _env())], tmp_path))
    rep = json.loads((tmp_path / "rank0.json").read_text())
    for got, want in zip(rep["weights"], reference["weights"]):  # the main process holds the fitted weights
        assert got == pytest.approx(want, abs=1e-6)
    assert rep["callback_metrics"]["val_loss"] == pytest.approx(reference["metrics"]["val_loss"], rel=1e-5)
    assert rep["global_step"] == ddp_script.STEPS and rep["spawn_best_path"].endswith(".ckpt")
    # spawned processes start as the caller was: Trainer(deterministic=True) on, the generators where Net() left
    # them (seeded with 1), not a fresh interpreter's
    for r in range(2):
        assert json.loads((tmp_path / f"flags{r}.json").read_text()) == {"deterministic": True, "initial_seed": 1}


def test_a_failing_rank_ends_every_process(tmp_path):
    """Rank 1 raises mid-fit: the run ends with its error (shown once), a non-zero code, and no process left."""
    (result,) = _run([([sys.executable, SCRIPT, str(tmp_path), "--raise-on-rank=1", "--quick"], _env())], tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("ValueError: boom on rank 1") == 1, result.stderr[-3000:]
    assert "rank 1" in result.stderr
    assert not (tmp_path / "rank0.json").exists()


def test_sigterm_to_the_launching_process_ends_the_children(tmp_path):
    proc = subprocess.Popen([sys.executable, SCRIPT, str(tmp_path), "--hang"], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not all((tmp_path / f"started{r}").exists() for r in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        for _ in range(100):  # the child is ended by its parent; give it a moment to go
            if not _alive(str(tmp_path)):
                break
            time.sleep(0.1)
        assert not _alive(str(tmp_path))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
