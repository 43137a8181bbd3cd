"""Cluster environments and the Trainer's strategy flags, in one process (no process group is started)."""

from __future__ import annotations

import pytest
import torch

import fulmen as pl
from fulmen.errors import FulmenError
from fulmen.strategies import DDPStrategy, SingleDeviceStrategy
from fulmen.strategies.environments import (
    KubeflowEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
    expand_slurm_nodelist,
)

_VARS = ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
         "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "TORCHELASTIC_RUN_ID", "RANK",
         "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "LSB_JOBID")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    from fulmen.utilities import set_global_rank

    set_global_rank(0)


def test_slurm_nodelist_brackets():
    assert expand_slurm_nodelist("node[01-04,07]") == ["node01", "node02", "node03", "node04", "node07"]
    assert expand_slurm_nodelist("gpu5,cpu[1-2]") == ["gpu5", "cpu1", "cpu2"]
    assert expand_slurm_nodelist("a[9]b") == ["a9b"]
    assert expand_slurm_nodelist("host0 host1") == ["host0", "host1"]


def test_slurm_environment_from_variables(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-04,07]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    env = detect_environment()
    assert isinstance(env, SLURMEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)
    assert env.main_address == "node01"
    assert env.main_port == 15000 + 3456
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # `srun --pty bash`: not a training job
    assert isinstance(detect_environment(), LightningEnvironment)


def test_detection_order_and_torchrun(monkeypatch):
    assert isinstance(detect_environment(), LightningEnvironment)
    for k, v in dict(TORCHELASTIC_RUN_ID="x", RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", GROUP_RANK="1",
                     SLURM_NTASKS="4").items():
        monkeypatch.setenv(k, v)
    env = detect_environment()  # torchrun inside a SLURM allocation: torchrun started the processes
    assert isinstance(env, TorchElasticEnvironment)
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (3, 1, 1, 4)
    assert not KubeflowEnvironment.detect()


def test_lightning_environment_picks_a_free_port():
    env = LightningEnvironment()
    assert not env.creates_processes_externally
    port = env.main_port
    assert 0 < port < 65536 and env.main_port == port


def test_trainer_strategy_flags_and_ranks(monkeypatch):
    t = pl.Trainer(accelerator="cpu", devices=2, logger=False)
    assert isinstance(t.strategy, DDPStrategy) and t.strategy._start_method == "popen"
    assert (t.world_size, t.global_rank, t.num_devices, t.is_global_zero) == (2, 0, 2, True)
    for name, method, unused in (("ddp_spawn", "spawn", None), ("ddp_fork", "fork", None),
                                 ("ddp_notebook", "fork", None), ("ddp_find_unused_parameters_true", "popen", True)):
        s = pl.Trainer(accelerator="cpu", devices=2, strategy=name, logger=False).strategy
        assert s._start_method == method and s._ddp_kwargs.get("find_unused_parameters") == unused
    assert isinstance(pl.Trainer(accelerator="cpu", devices="auto", logger=False).strategy, SingleDeviceStrategy)
    assert pl.Trainer(accelerator="cpu", devices="0,1", logger=False).world_size == 2
    assert pl.Trainer(accelerator="cpu", devices=[0, 1], num_nodes=2, logger=False).world_size == 4
    given = DDPStrategy(static_graph=True, timeout=__import__("datetime").timedelta(seconds=30))
    assert pl.Trainer(accelerator="cpu", devices=2, strategy=given, logger=False).strategy is given
    # ranks come from the environment, and rank_zero_only follows them
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    t = pl.Trainer(accelerator="cpu", devices=2, num_nodes=2, logger=False)
    assert (t.global_rank, t.local_rank, t.node_rank, t.is_global_zero) == (3, 1, 1, False)
    from fulmen.utilities import rank_zero_only

    assert rank_zero_only.rank == 3


def test_strategy_misconfigurations(monkeypatch):
    with pytest.raises(FulmenError, match="did you mean|Did you mean 'ddp_spawn'"):
        pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spwan")
    with pytest.raises(FulmenError, match="single_device"):
        pl.Trainer(accelerator="cpu", devices=2, strategy="single_device")
    with pytest.raises(FulmenError, match="num_nodes"):
        pl.Trainer(accelerator="cpu", num_nodes=0)
    with pytest.raises(FulmenError, match="sync_batchnorm=True needs CUDA"):
        pl.Trainer(accelerator="cpu", devices=2, sync_batchnorm=True)
    with pytest.raises(FulmenError, match="start_method"):
        DDPStrategy(start_method="thread")
    if not torch.cuda.is_available():
        with pytest.raises(FulmenError, match="CUDA"):
            pl.Trainer(accelerator="gpu", devices=2)
    # the cluster disagrees with the flags
    for k, v in dict(TORCHELASTIC_RUN_ID="x", RANK="0", WORLD_SIZE="4", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(FulmenError, match="WORLD_SIZE"):
        pl.Trainer(accelerator="cpu", devices=2, num_nodes=1, strategy="ddp")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_NNODES", "2")
    with pytest.raises(FulmenError, match="num_nodes=2"):
        pl.Trainer(accelerator="cpu", devices=2, num_nodes=1, strategy="ddp")
