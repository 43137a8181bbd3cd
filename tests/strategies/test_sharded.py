"""FSDP2 and DeepSpeed ZeRO on 2 gloo processes (CPU): the same weights as DDP, sharded checkpoints saved by 2
processes and loaded by 2 and by 1, conversion to one file, exact mid-epoch resume. ``sharded_script.py`` runs
in each process (one launch per engine checks many things, because starting processes costs seconds); the
rest runs here in one process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.errors import CheckpointError, MisconfigurationException, MissingDependencyError
from fulmen.strategies import sharded_checkpoint
from fulmen.strategies.deepspeed import DeepSpeedStrategy, deepspeed_available
from fulmen.strategies.fsdp import FSDPStrategy, _select

sys.path.insert(0, str(Path(__file__).parent))
import sharded_script as script  # noqa: E402
from test_ddp import _alive, _env, _ok, _run  # noqa: E402

SCRIPT = str(Path(__file__).with_name("sharded_script.py"))
needs_deepspeed = pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed (fulmen[deepspeed])")


def _launch(out: Path, runs: list[str], full_checks: str, accelerator: str = "cpu") -> dict[str, list[dict]]:
    cmd = [sys.executable, SCRIPT, str(out), "--strategies", ",".join(runs), "--full-checks", full_checks,
           "--accelerator", accelerator]
    [result] = _run([(cmd, _env())], out)
    _ok([result])
    # quiet by default: no INFO lines or banners from DeepSpeed or torch.distributed
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if "[INFO" in line or "DeepSpeed" in line or "Setting accelerator" in line or "is deprecated" in line]
    assert not noise, noise[:5]
    return {run: [json.loads((out / f"{run}-rank{r}.json").read_text()) for r in (0, 1)] for run in runs}


def _reference(model_cls: type = script.Net, precision: str | None = None, clip: bool = True,
               then_evaluate: bool = False, accelerator: str = "cpu", buffers: bool = False) -> Any:
    """One process, batch 2B over the same samples, validating as the script does: what 2 processes with batch
    B each must reproduce. With ``then_evaluate``, also what ``script.validate_before_fit`` and
    ``evaluate_then_fit_again`` report; with ``buffers``, also the floating-point buffers."""
    torch.set_num_threads(1)
    model = model_cls()
    accumulate = script.ACCUMULATE if model.automatic_optimization else 1
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=script.STEPS, logger=False,
                         precision=precision, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=2, val_check_interval=accumulate,
                         accumulate_grad_batches=accumulate,
                         gradient_clip_val=0.5 if model.automatic_optimization and clip else None)
    batch = 2 * script.BATCH
    before = script.validate_before_fit(trainer, model, batch) if then_evaluate else None
    trainer.fit(model, DataLoader(script.data(), batch_size=batch), DataLoader(script.data(1), batch_size=batch))
    weights = {n: p.detach().float().flatten().tolist() for n, p in model.named_parameters()}
    if buffers:
        return weights, {n: b.float().flatten().tolist() for n, b in model.named_buffers() if b.is_floating_point()}
    if then_evaluate:
        return weights, {"validate_before_fit": before, **script.evaluate_then_fit_again(trainer, model, batch)}
    return weights


# the user's order in every run: a 2-batch sanity check at step 0, then 2 validation batches after each step
VALIDATED_AT = [(True, 0)] * 2 + [(False, step) for step in range(1, script.STEPS + 1) for _ in range(2)]


def _check_evaluations_around_fits(reports: list[dict]) -> None:
    """validate before fit, then validate/test/predict after it, on 2 processes match one process, and each fit
    trains on from there (evaluation left no inference tensors in the parameters or the strategy's copies)."""
    first, want = _reference(script.SGDNet, then_evaluate=True)
    for rep in reports:
        _assert_weights(rep["weights"], first, 1e-6)
        for fn in ("validate_before_fit", "validate", "test"):
            [metrics] = rep[fn]
            [expected] = want[fn]
            assert metrics == pytest.approx(expected, rel=1e-5), fn
        # every process gets all predictions back, in sample order (in batches of its own loader's size)
        got = [v for batch in rep["predict"] for v in batch]
        assert got == pytest.approx([v for batch in want["predict"] for v in batch], abs=1e-6)
        assert rep["grad_enabled_after_eval"] is True
        assert rep["second_fit_steps"] == 2 * script.STEPS
        _assert_weights(rep["second_fit_weights"], want["second_fit_weights"], 1e-6)
        assert rep["second_fit_weights"] != rep["weights"]


def _assert_weights(got: dict[str, list[float]], want: dict[str, list[float]], tol: float) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=tol), name


def _check_checkpoints(reports: list[dict], tmp_path: Path, kind: str) -> None:
    """What the run with full checks reported, then loading its directories in this one process."""
    for rep in reports:
        assert rep == reports[0]  # every rank saw the same weights, paths and metrics
        # top-k kept one directory (the older ones were removed, directories and all) and the last one
        assert rep["ckpt_dir"] == sorted([os.path.basename(rep["best"]), "last.ckpt"])
        assert rep["resume_bitwise"] and rep["resume_changed"] and rep["resume_steps"] == [16, 16]
        assert rep["mid_is_dir"]
    best, last = reports[0]["best"], reports[0]["last"]
    assert sharded_checkpoint.kind(best) == sharded_checkpoint.kind(last) == reports[0]["after_fit_kind"] == kind

    # loads in 1 process: a plain single-device Trainer reads the directory written by 2
    model = script.Net()
    [metrics] = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=2).validate(
        model, DataLoader(script.data(1), batch_size=2 * script.BATCH), ckpt_path=best, verbose=False)
    assert metrics["val_loss"] == pytest.approx(reports[0]["validate"][0]["val_loss"], rel=1e-5)

    # one file: the command writes it; load_from_checkpoint and plain torch.load read it
    from fulmen.__main__ import main

    out = tmp_path / "last-consolidated.ckpt"
    assert main(["consolidate", last, "-o", str(out)]) == 0
    restored = script.Net.load_from_checkpoint(str(out))
    final = {n: p.detach().flatten().tolist() for n, p in restored.named_parameters()}
    _assert_weights(final, reports[0]["weights"], 1e-6)  # last.ckpt was written after the last step
    raw = torch.load(out)  # the default weights_only=True: nothing but plain data inside
    assert raw["global_step"] == script.STEPS and raw["hyper_parameters"] == {"dropout": 0.0, "lr": 0.05}
    assert sorted(raw["state_dict"]) == sorted(dict(script.Net().named_parameters()))
    if kind == "fsdp":  # FSDP's optimizer shards become a torch.optim state, parameters by position
        shapes = [p.shape for p in script.Net().parameters()]
        state = raw["optimizer_states"][0]
        assert [state["state"][i]["exp_avg"].shape for i in range(len(shapes))] == shapes
        assert state["param_groups"][0]["params"] == list(range(len(shapes)))
    else:  # ZeRO's optimizer partitions have no single-process form: weights and training state only
        assert "optimizer_states" not in raw


def test_fsdp_trains_like_ddp_and_its_sharded_checkpoints_load_in_1_and_2_processes(tmp_path):
    runs = ["ddp", "fsdp", "fsdp_cpu_offload", "fsdp+ckpt", "fsdp+no_shard", "fsdp+hybrid", "fsdp@bf16-mixed",
            "fsdp+manual", "fsdp+meta", "fsdp+sgd"]
    reports = _launch(tmp_path, runs, full_checks="fsdp")
    for run in runs:
        assert [tuple(v) for v in reports[run][0]["validated_at"]] == VALIDATED_AT, run
    reference = _reference()
    assert reference != _reference(clip=False)  # gradient clipping acts in these steps (over all shards' norm)
    for run in ("ddp", "fsdp", "fsdp_cpu_offload", "fsdp+ckpt", "fsdp+no_shard", "fsdp+hybrid"):
        for rep in reports[run]:
            assert rep["global_step"] == script.STEPS
            _assert_weights(rep["weights"], reference, 1e-6)
    # activation checkpointing runs each Block forward again in backward: 6 training batches, 8 validation ones
    assert reports["fsdp"][0]["block_calls"] == 6 + 8 and reports["fsdp+ckpt"][0]["block_calls"] == 2 * 6 + 8
    assert reports["fsdp"][0]["strategy"] == "FSDPStrategy"
    # the whole step (and clip_gradients' norm over all shards) in manual optimization
    manual = _reference(script.ManualNet)
    for rep in reports["fsdp+manual"]:
        _assert_weights(rep["weights"], manual, 1e-6)
    # bf16-mixed: bfloat16 compute through FSDP's mixed-precision policy, float32 shards
    for rep in reports["fsdp@bf16-mixed"]:
        _assert_weights(rep["weights"], reference, 2e-2)
        assert rep["weights"] != reports["fsdp"][0]["weights"]
    # built on the meta device in configure_model, each process initializing its own (different) shard
    for rep in reports["fsdp+meta"]:
        assert rep["built_on"] == "meta"
        w = torch.tensor(rep["weights"]["block.0.weight"]).view(64, script.FEATURES)
        assert torch.isfinite(w).all() and not torch.equal(w[:32], w[32:])
    assert reports["fsdp+meta"][0]["weights"] == reports["fsdp+meta"][1]["weights"]
    _check_evaluations_around_fits(reports["fsdp+sgd"])
    _check_checkpoints(reports["fsdp"], tmp_path, "fsdp")
    # a full (single-file) checkpoint gathered on rank 0 reads back in both processes
    rep = reports["fsdp"][0]
    assert rep["validate_full"] == rep["validate"]
    full = torch.load(tmp_path / "fsdp" / "full.ckpt", weights_only=False)
    assert sorted(full["state_dict"]) == sorted(dict(script.Net().named_parameters()))
    assert not _alive(str(tmp_path))


@needs_deepspeed
def test_deepspeed_stages_train_like_ddp_and_checkpoint_resume_exactly(tmp_path):
    runs = ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
            "deepspeed_stage_3_offload", "deepspeed_stage_2@bf16-mixed", "deepspeed_stage_2+manual",
            "deepspeed_stage_3+sgd"]
    reports = _launch(tmp_path, runs, full_checks="deepspeed_stage_3")
    for run in runs:
        assert [tuple(v) for v in reports[run][0]["validated_at"]] == VALIDATED_AT, run
    reference = _reference()
    for run in runs[:5]:
        for rep in reports[run]:
            assert rep["strategy"] == "DeepSpeedStrategy" and rep["global_step"] == script.STEPS
            _assert_weights(rep["weights"], reference, 1e-6)
    for rep in reports["deepspeed_stage_2@bf16-mixed"]:
        _assert_weights(rep["weights"], reference, 5e-2)
    for rep in reports["deepspeed_stage_2+manual"]:
        _assert_weights(rep["weights"], _reference(script.ManualNet), 1e-6)
    _check_evaluations_around_fits(reports["deepspeed_stage_3+sgd"])
    _check_checkpoints(reports["deepspeed_stage_3"], tmp_path, "deepspeed")
    assert not _alive(str(tmp_path))


# ------------------------------------------------------------------------------------------------------
# one process


def test_without_deepspeed_the_trainer_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` fails as if not installed
    for name in ("deepspeed", "deepspeed_stage_3_offload"):
        with pytest.raises(MissingDependencyError, match=r"pip install 'fulmen\[deepspeed\]'"):
            pl.Trainer(accelerator="cpu", devices=2, strategy=name)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fulmen\[deepspeed\]'"):
        DeepSpeedStrategy(stage=2)
    # reading a DeepSpeed checkpoint needs it too
    (tmp_path / "ck" / "checkpoint").mkdir(parents=True)
    (tmp_path / "ck" / "latest").write_text("checkpoint")
    with pytest.raises(MissingDependencyError, match="pip install"):
        sharded_checkpoint.consolidate_checkpoint(tmp_path / "ck")


def test_strategy_names_map_to_lightnings_settings():
    fsdp = pl.Trainer(accelerator="cpu", devices=2, strategy="fsdp_cpu_offload").strategy
    assert isinstance(fsdp, FSDPStrategy) and fsdp.cpu_offload is True and fsdp.world_size == 2
    if not deepspeed_available():
        return
    imported_before = "deepspeed" in sys.modules
    expected = {"deepspeed": (2, False, False), "deepspeed_stage_1": (1, False, False),
                "deepspeed_stage_2": (2, False, False), "deepspeed_stage_2_offload": (2, True, False),
                "deepspeed_stage_3": (3, False, False), "deepspeed_stage_3_offload": (3, True, True)}
    for name, (stage, offload_opt, offload_params) in expected.items():
        strategy = pl.Trainer(accelerator="cpu", devices=2, strategy=name).strategy
        zero = strategy.config["zero_optimization"]
        assert isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage == stage
        assert ("offload_optimizer" in zero, "offload_param" in zero) == (offload_opt, offload_params)
    assert ("deepspeed" in sys.modules) == imported_before  # choosing the strategy does not import it (seconds)


@needs_deepspeed
@pytest.mark.parametrize("flags, config, message", [
    ({"accumulate_grad_batches": 2}, {"gradient_accumulation_steps": 4},
     r"gradient_accumulation_steps=4.*accumulate_grad_batches=2"),
    ({"gradient_clip_val": 1.0}, {"gradient_clipping": 0.5}, r"gradient_clipping=0.5.*gradient_clip_val=1.0"),
    ({"precision": "16-mixed"}, {"bf16": {"enabled": True}}, r"enables bf16.*precision='16-mixed'"),
    ({"precision": "32-true"}, {"fp16": {"enabled": True}}, r"enables fp16.*precision='32-true'"),
    ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"}, {}, "clips gradients by norm only"),
])
def test_flags_contradicting_the_deepspeed_config_fail_before_any_process_starts(tmp_path, flags, config, message):
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(config=config), logger=False,
                         enable_progress_bar=False, **flags)
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(script.Net(), DataLoader(script.data(), batch_size=4))
    assert not trainer.strategy.launcher.procs  # failed in the launching process, before starting the other


@needs_deepspeed
def test_trainer_flags_are_written_into_the_deepspeed_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True},
                                "gradient_accumulation_steps": 2}))
    strategy = DeepSpeedStrategy(config=str(path), logging_level=logging.ERROR)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, accumulate_grad_batches=2,
                         gradient_clip_val=0.25)
    # what Trainer.fit hands the strategy before launching (the seam Fabric uses too)
    strategy.connect_training_settings(accumulate_grad_batches=trainer.accumulate_grad_batches,
                                       gradient_clip_val=trainer.gradient_clip_val, batch_size=8)
    strategy._merge_settings()
    cfg = strategy.config
    assert (cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) == (2, 0.25)
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and strategy.zero_stage == 3
    assert strategy.precision.name == "bf16-mixed"  # the config's precision, since the Trainer asked for none
    assert json.loads(path.read_text())["gradient_accumulation_steps"] == 2  # the user's file is left alone
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(), precision="bf16-mixed")
    trainer.strategy.connect_training_settings(precision_given=True)
    trainer.strategy._merge_settings()
    assert trainer.strategy.config["bf16"] == {"enabled": True} and "fp16" not in trainer.strategy.config
    # no clipping asked for is no clipping, not DeepSpeed's own default (norm 1.0), for the Trainer and Fabric alike
    assert trainer.strategy.config["gradient_clipping"] == 0.0
    auto = DeepSpeedStrategy(config={"gradient_clipping": "auto", "zero_optimization": {"stage": 2}})
    auto._merge_settings()
    assert auto.config["gradient_clipping"] == 0.0
    with pytest.raises(MisconfigurationException, match="no such file"):
        DeepSpeedStrategy(config=str(tmp_path / "missing.json"))


def test_fsdp_arguments_are_checked():
    with pytest.raises(MisconfigurationException, match="sharding_strategy='HALF_SHARD'"):
        FSDPStrategy(sharding_strategy="HALF_SHARD")
    with pytest.raises(MisconfigurationException, match="state_dict_type='local'"):
        FSDPStrategy(state_dict_type="local")
    with pytest.raises(MisconfigurationException, match="'not_an_option'.*fully_shard does not take"):
        FSDPStrategy(not_an_option=1)
    with pytest.raises(MisconfigurationException, match="use_orig_params=True"):
        FSDPStrategy(use_orig_params=False)
    FSDPStrategy(limit_all_gathers=True, use_orig_params=True, sync_module_states=True)  # FSDP1 names accepted


def test_wrap_policies_pick_submodules_children_first():
    from functools import partial

    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, size_based_auto_wrap_policy

    inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 100))
    root = nn.Sequential(inner, nn.Linear(100, 2))
    assert _select(root, {nn.Linear}, include_root=False) == [root[1], inner[1], inner[0]]
    assert _select(root, ModuleWrapPolicy({nn.Sequential}), include_root=False) == [inner]
    assert _select(root, lambda m: isinstance(m, nn.Linear) and m.out_features == 2, include_root=False) == [root[1]]
    # FSDP1's size-based policy: modules holding at least 400 parameters not already in a chosen child
    chosen = _select(root, partial(size_based_auto_wrap_policy, min_num_params=400), include_root=False)
    assert chosen == [inner[1]]
    with pytest.raises(MisconfigurationException, match="nn.Module classes"):
        _select(root, {"Linear"}, include_root=False)


def test_optimizer_states_convert_between_names_and_positions():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = torch.optim.Adam([{"params": [model[1].weight]}, {"params": [model[0].weight, model[0].bias, model[1].bias]}])
    model(torch.randn(2, 2)).sum().backward()
    opt.step()
    names = ["1.weight", "0.weight", "0.bias", "1.bias"]
    by_name = sharded_checkpoint.optimizer_state_by_name(opt.state_dict(), names)
    assert by_name["param_groups"][1]["params"] == ["0.weight", "0.bias", "1.bias"]
    assert by_name["state"]["1.weight"]["exp_avg"].shape == (1, 3)
    back = sharded_checkpoint.optimizer_state_by_position(by_name)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    assert all(torch.equal(back["state"][i]["exp_avg"], opt.state_dict()["state"][i]["exp_avg"]) for i in range(4))


class _OneProcess:
    is_global_zero = True

    def barrier(self, name: str | None = None) -> None:
        pass


def test_a_failed_directory_write_leaves_the_previous_checkpoint_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    sharded_checkpoint.write_directory(target, lambda tmp: Path(tmp, "a").write_text("1"), _OneProcess())
    assert sorted(os.listdir(target)) == ["a"]

    def broken(tmp: str) -> None:
        Path(tmp, "b").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        sharded_checkpoint.write_directory(target, broken, _OneProcess())
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "1"
    # the next save clears what the failed one left and replaces the directory whole
    sharded_checkpoint.write_directory(target, lambda tmp: Path(tmp, "c").write_text("3"), _OneProcess())
    assert sorted(os.listdir(target)) == ["c"] and sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_directories_that_are_not_sharded_checkpoints_are_named_as_such(tmp_path):
    (tmp_path / "plain").mkdir()
    assert sharded_checkpoint.kind(tmp_path / "plain") is None and sharded_checkpoint.kind(tmp_path / "x") is None
    with pytest.raises(CheckpointError, match="not a sharded checkpoint directory"):
        sharded_checkpoint.consolidate_checkpoint(tmp_path / "plain")
    from fulmen.__main__ import main

    assert main(["consolidate", str(tmp_path / "plain")]) == 2
