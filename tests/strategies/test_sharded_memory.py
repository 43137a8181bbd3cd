"""Sharding shows in memory: under FSDP (its default wrapping, FULL_SHARD and SHARD_GRAD_OP) and DeepSpeed
ZeRO-3 each of 2 processes holds half of the parameters and optimizer state DDP holds once fit (which ends
with a validation) returns, and no operation during fit (set-up, sanity check, training, validation,
checkpoints) creates a tensor the size of the whole model. The same probe sees such a
tensor under DDP (its gradient bucket) and under FSDP with the whole model as one unit, so it can fail.
``memory_script.py`` runs in each process; one launch covers every strategy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fulmen.strategies.deepspeed import deepspeed_available

sys.path.insert(0, str(Path(__file__).parent))
from test_ddp import _env, _ok, _run  # noqa: E402

SCRIPT = str(Path(__file__).with_name("memory_script.py"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("memory")
    runs = ["ddp", "fsdp", "fsdp_grad_op", "fsdp_root"] + (["deepspeed_stage_3"] if deepspeed_available() else [])
    [result] = _run([([sys.executable, SCRIPT, str(out), "--strategies", ",".join(runs)], _env())], out)
    _ok([result])
    return {run: [json.loads((out / f"{run}-rank{r}.json").read_text()) for r in (0, 1)] for run in runs}


def _check_run(reports: list[dict]) -> None:
    for rep in reports:
        assert rep["global_step"] == 4
        assert rep["checkpoints"]  # checkpoints were written during fit, inside the watched span
    assert reports[0]["val_loss"] == reports[1]["val_loss"]  # synced


needs_deepspeed = pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed (fulmen[deepspeed])")


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_grad_op", pytest.param("deepspeed_stage_3", marks=needs_deepspeed)])
def test_sharded_strategy_holds_half_and_never_the_whole_model(reports, strategy):
    _check_run(reports[strategy])
    ddp_held = max(r["held"] for r in reports["ddp"])
    for rep in reports[strategy]:
        # parameters + Adam's two states, split over 2 processes (a few padding bytes aside)
        assert rep["held"] == pytest.approx(ddp_held / 2, rel=0.02), (rep["held"], ddp_held)
        # the largest tensor is one unit's (a Linear: 1/8 of the model), never the model's
        assert rep["largest"] < rep["params_bytes"] * 0.6, rep["where"]


def test_the_probe_sees_whole_model_tensors(reports):
    """DDP's gradient bucket and FSDP's gather of a single unit hold the whole model: the probe reports them.
    Even so, once fit ends (after a validation) the single unit holds only its shard again."""
    for name in ("ddp", "fsdp_root"):
        _check_run(reports[name])
        for rep in reports[name]:
            assert rep["largest"] >= rep["params_bytes"], (name, rep["largest"], rep["where"])
    ddp_held = max(r["held"] for r in reports["ddp"])
    for rep in reports["fsdp_root"]:
        assert "all_gather" in rep["where"], rep["where"]
        assert rep["held"] == pytest.approx(ddp_held / 2, rel=0.02)


def test_default_fsdp_units_are_the_repeated_blocks():
    from torch import nn

    from fulmen.strategies.fsdp import _repeated_blocks

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(32, 8)
            self.blocks = nn.ModuleList(Block() for _ in range(3))
            self.head = nn.Linear(8, 32, bias=False)
            self.head.weight = self.embed.weight  # tied, both in the root

    gpt = GPT()
    # the outermost container's blocks, not the linears inside them; embedding and head stay in the root
    assert _repeated_blocks(gpt) == list(gpt.blocks)

    mlp = nn.Sequential(nn.Linear(256, 256), nn.LayerNorm(256), nn.ReLU(), nn.Linear(256, 256))
    root = nn.Module()
    root.net = mlp
    # a norm holding under 1% of the container's parameters stays in the unit above
    assert _repeated_blocks(root) == [mlp[0], mlp[3]]

    shared = nn.Module()
    shared.net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    shared.out = nn.Linear(8, 8)
    shared.out.weight = shared.net[2].weight  # tied: must live in one unit, the root's
    assert _repeated_blocks(shared) == [shared.net[0], shared.net[1]]

    plain = nn.Module()
    plain.a, plain.b = nn.Linear(4, 4), nn.Linear(4, 1)
    assert _repeated_blocks(plain) == []  # nothing repeated: the root alone, as before
