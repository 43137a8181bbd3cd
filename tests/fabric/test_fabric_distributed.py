"""Fabric programs in 2 gloo processes (``fabric_script.py``): one launch trains the same loop under DDP, FSDP and
DeepSpeed ZeRO-2 against a raw single-process loop, a tensor-parallel program against one process, pretrains a small GPT built with ``init_module`` on FSDP, and
saves mid-epoch; a second launch resumes from that checkpoint, bitwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("fabric_script.py")


def _launch(out: Path, *args: str, command: tuple[str, ...] = ()) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "LT_CLI_USED")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *command, str(SCRIPT), str(out), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _strategies() -> list[str]:
    from fulmen._utils import package_available

    return ["ddp", "fsdp"] + (["deepspeed_stage_2"] if package_available("deepspeed") else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fabric")
    strategies = _strategies()
    _launch(out, "train", ",".join(strategies))
    _launch(out, "resume")  # new processes, from the checkpoint part 1 saved mid-epoch
    from fulmen.strategies.environments import find_free_network_port

    _launch(out, "cli", command=("-m", "fulmen", "run", "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp",
                                 "--main-port", str(find_free_network_port())))
    load = lambda p: torch.load(p, weights_only=False)  # noqa: E731 - written by our own script
    return (strategies, [load(out / f"train_rank{r}.pt") for r in (0, 1)],
            [load(out / f"resume_rank{r}.pt") for r in (0, 1)], [load(out / f"cli_rank{r}.pt") for r in (0, 1)])


def test_each_strategy_trains_like_a_raw_loop_on_the_combined_batch_and_reloads_its_checkpoint(runs):
    strategies, train, _, _ = runs
    for rank in (0, 1):
        reference = train[rank]["reference"]
        for strategy in strategies:
            weights, reloaded = train[rank][strategy]
            # DeepSpeed too: its own default (gradient_clipping=1.0 when the config leaves it out) shortened this
            # program's third step until the strategy wrote gradient_clipping=0.0 for a run that asks for no clipping
            for name, value in reference.items():
                # the same arithmetic up to the order of the gradient sum over the two processes
                torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=f"{strategy}: {name}")
                assert torch.equal(reloaded[name], weights[name]), f"{strategy}: {name} after fabric.load"


def test_a_tensor_parallel_program_trains_like_one_process_and_its_checkpoint_round_trips(runs):
    _, train, _, _ = runs
    for rank in (0, 1):
        tp, reference = train[rank]["tp"], train[rank]["tp_reference"]
        assert tp["mesh"] == ["data_parallel", "tensor_parallel"]
        assert tp["dtensor"] and tp["local_shape"] == [4, 4]  # parallelize_fn split the first layer's 8 outputs
        assert tp["batches"] == 8  # both ranks of the tensor-parallel group read every batch
        for name, value in reference.items():
            # the same arithmetic, the sums over the split features taken in another order
            torch.testing.assert_close(tp["trained"][name], value, rtol=1e-5, atol=1e-6, msg=name)
            assert torch.equal(tp["loaded"][name], tp["trained"][name]), name
            after, after_loaded = tp["next_step"][0][name], tp["next_step"][1][name]
            assert torch.equal(after_loaded, after), f"{name}: the optimizer's moments were restored too"
            assert not torch.equal(after, tp["trained"][name])
        assert tp["is_dir"] and tp["step"] == 8  # each rank wrote its slices; plain values come back as saved


def test_a_gpt_built_empty_on_the_meta_device_learns_on_fsdp(runs):
    _, train, _, _ = runs
    gpt = train[0]["gpt"]
    assert gpt["meta"]  # init_module(empty_init=True) under FSDP allocates nothing
    assert gpt["last"] < 0.6 * gpt["first"]
    assert gpt["same_loss_everywhere"][0] == gpt["same_loss_everywhere"][1]  # all_reduce/all_gather agree
    assert gpt["norm"] > 0  # clip_gradients returns the total norm over both processes' shards


def test_a_loop_resumed_mid_epoch_with_loader_workers_continues_bitwise(runs):
    _, train, resumed, _ = runs
    for rank in (0, 1):
        seen, weights = train[rank]["uninterrupted"]
        seen_after, weights_after = resumed[rank]["resumed"]
        assert len(seen) == 12 and seen_after == seen[9:]  # the same augmented batches, none read twice
        assert all(torch.equal(weights_after[k], weights[k]) for k in weights)
    assert train[0]["uninterrupted"][0] != train[1]["uninterrupted"][0]  # each rank its own share of the data


def test_a_program_written_for_fabric_run_takes_its_settings_from_fulmen_run(runs):
    *_, cli = runs
    assert [r["world_size"] for r in cli] == [2, 2] and cli[0]["strategy"] == "DDPStrategy"
    assert cli[0]["rewards"] == cli[1]["rewards"] and len(cli[0]["rewards"]) == 2  # broadcast, then all_gather
    assert all(torch.equal(cli[0]["weights"][k], cli[1]["weights"][k]) for k in cli[0]["weights"])  # one policy
