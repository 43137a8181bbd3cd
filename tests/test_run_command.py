"""``fulmen run`` (and the ``fulmen fabric run`` spelling) starts a script in one process per device, with
torchrun's variables and Lightning's ``LT_*`` ones; one launch also checks ``TorchCollective`` on 2 processes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fulmen.strategies.environments import find_free_network_port

SCRIPT = str(Path(__file__).with_name("collective_script.py"))


def _fulmen(*args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LT_", "TORCHELASTIC_", "SLURM_")) and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                                 "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra_env)
    proc = subprocess.Popen([sys.executable, "-m", "fulmen", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:  # never leave the launched processes behind
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_run_starts_one_process_per_device_with_the_settings_exported(tmp_path):
    port = str(find_free_network_port())
    result = _fulmen("fabric", "run", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
                     "--precision", "bf16-mixed", "--main-port", port, SCRIPT, "--lr", "0.1", SEEN_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    # each rank wrote its own file (the ranks share one stdout, where their lines may interleave)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen_rank0.json", "seen_rank1.json"]
    seen = [json.loads((tmp_path / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in seen] == [0, 1] and all(s["world"] == 2 for s in seen)
    for s in seen:
        assert s["argv"] == ["--lr", "0.1"]
        assert s["lt"] == {"LT_CLI_USED": "1", "LT_ACCELERATOR": "cpu", "LT_STRATEGY": "ddp", "LT_DEVICES": "2",
                           "LT_NUM_NODES": "1", "LT_PRECISION": "bf16-mixed"}
        assert s["plain_sum"] == 1.0 and s["sum"] == 3.0 and s["max"] == 2.0
        assert s["gathered"] == [0.0, 10.0] and s["broadcast"] == 8.0
        assert s["objects"] == [{"r": 0}, {"r": 1}] and s["sub_sum"] == 4.0
        assert "already has a group" in s["twice"] and s["default_ended"]
    assert seen[1]["received"] == 42.0


def test_run_failing_script_returns_its_exit_code(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import os, sys\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    result = _fulmen("run", "--devices", "2", "--main-port", str(find_free_network_port()), str(script))
    assert result.returncode == 3


@pytest.mark.parametrize("args, fix", [
    (["run", "missing.py"], "does not exist"),
    (["run", "--strategy", "ddp_spawn", "SCRIPT"], "use one of auto, ddp"),
    (["run", "--accelerator", "tpu", "SCRIPT"], "use one of cpu, gpu, cuda, mps, auto"),
    (["run", "--precision", "8", "SCRIPT"], "'bf16-mixed'"),
    (["run", "--devices", "0", "SCRIPT"], "positive number of devices"),
    (["run", "--num-nodes", "2", "--node-rank", "2", "SCRIPT"], "outside 0..1"),
    (["run", "--devices", "x", "SCRIPT"], "'0,1' or 'auto'"),
])
def test_run_bad_input_says_what_to_write(args, fix, capsys):
    from fulmen.__main__ import main

    assert main([SCRIPT if a == "SCRIPT" else a for a in args]) == 2
    assert fix in capsys.readouterr().err
