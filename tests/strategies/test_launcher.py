"""Launcher and process-group errors that can be checked without starting processes."""

from __future__ import annotations

import socket
import threading

import pytest
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.errors import FulmenError
from fulmen.strategies.launcher import _command
from helpers import BoringModel, make_loader


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS",
                 "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def test_ddp_spawn_names_the_attribute_that_cannot_be_pickled():
    model = BoringModel()
    model.lock = threading.Lock()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False)
    with pytest.raises(FulmenError, match=r"LightningModule \(BoringModel\) has the attribute `lock`.*strategy='ddp'"):
        trainer.fit(model, make_loader())


def test_a_port_in_use_says_which_and_what_to_do(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        monkeypatch.setenv("MASTER_PORT", str(busy.getsockname()[1]))
        trainer = pl.Trainer(accelerator="cpu", devices=2, logger=False)
        with pytest.raises(FulmenError, match=f"MASTER_PORT={busy.getsockname()[1]} is already in use"):
            trainer.strategy.setup_environment()


def test_self_launch_refuses_an_interactive_session(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    with pytest.raises(FulmenError, match="ddp_notebook"):
        _command()


def test_strategy_ddp_needs_a_lightning_module():
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(FulmenError, match="needs a fulmen.LightningModule"):
        trainer.fit(object(), DataLoader([1]))  # fails before any process starts



IMPORTED_BEFORE_LAUNCH = """
import os, sys
import fulmen as pl
from fulmen.strategies import launcher
from helpers import BoringModel, make_loader

def probe(self):  # in place of starting the other processes: what this process has imported by then
    print("torch._dynamo" in sys.modules, flush=True)
    os._exit(0)

launcher.ScriptLauncher._start_children = probe
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
trainer.fit(BoringModel(), make_loader())
"""

IMPORTED_BY_ONE_PROCESS_TRAINER = """
import sys
import fulmen as pl

pl.Trainer(accelerator="cpu", devices=1, logger=False)
print("torch._dynamo" in sys.modules)
"""


def test_the_launching_process_starts_the_others_before_importing_torch_dynamo(tmp_path):
    """torch._dynamo takes 1-2 s to import (torch imports it at the first optimizer or DDP wrapper). A one-process
    Trainer pays it at construction, outside fit; the process that starts a DDP run must not pay it before
    starting the others, which would wait for it and then pay their own."""
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for helpers
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK",
                                                           "MASTER_ADDR", "MASTER_PORT", "FULMEN_LAUNCHER_PID")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH")) if p)
    outputs = []
    for code in (IMPORTED_BEFORE_LAUNCH, IMPORTED_BY_ONE_PROCESS_TRAINER):
        run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs.append(run.stdout.strip())
    assert outputs == ["False", "True"]
