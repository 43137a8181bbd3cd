"""Shared test set-up: quiet, single-threaded torch so the suite is fast and deterministic on 2 cores."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Each test runs in its own directory, so default lightning_logs/ never collide or leak."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yield
