"""The CUDA-only paths, run where GPUs are (skipped elsewhere; ``scripts/gpu_check.sh`` runs them with the
GPU benchmark): nccl DDP, FSDP and DeepSpeed on 2 GPUs against one GPU on the combined batch, sync_batchnorm,
16-mixed's grad scaler under DDP, pinned loader memory. ``sharded_script.py --accelerator cuda`` runs in each
process, as the CPU tests in test_sharded.py run it. Single-GPU precision paths (16-mixed's skipped steps and
backoff, bf16-mixed against 32-true, every precision against plain PyTorch) are in
tests/optimization/test_precision_parity.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.errors import MisconfigurationException
from fulmen.strategies.deepspeed import deepspeed_available

sys.path.insert(0, str(Path(__file__).parent))
import sharded_script as script  # noqa: E402
from test_sharded import VALIDATED_AT, _alive, _assert_weights, _launch, _reference  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_2_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")

# GPU kernels may sum in another order than one GPU on twice the batch: equal to float32 rounding, not bitwise
GPU_TOL = 1e-5


@needs_2_gpus
def test_nccl_ddp_fsdp_and_deepspeed_on_2_gpus_train_like_1_gpu_on_the_combined_batch(tmp_path):
    runs = ["ddp", "ddp+bn", "ddp@16-mixed", "fsdp", "fsdp@bf16-mixed", "fsdp+sgd"]
    if deepspeed_available():
        runs += ["deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3+sgd"]
    reports = _launch(tmp_path, runs, full_checks="", accelerator="cuda")
    reference = _reference(accelerator="cuda")
    for run in runs:
        for rep in reports[run]:
            assert rep["device"] == "cuda" and rep["backend"] == "nccl", run
            assert rep["global_step"] == script.STEPS, run
            # the loader's pin_memory=True held when fulmen re-created it with a DistributedSampler
            assert rep["pinned"] and all(rep["pinned"]), run
            assert [tuple(v) for v in rep["validated_at"]] == VALIDATED_AT, run
    for run in [r for r in runs if "@" not in r and "+" not in r]:
        for rep in reports[run]:
            _assert_weights(rep["weights"], reference, GPU_TOL)
    # sync_batchnorm: 2 processes of batch B normalize and track statistics as one GPU with batch 2B
    weights, buffers = _reference(script.BNNet, accelerator="cuda", buffers=True)
    for rep in reports["ddp+bn"]:
        _assert_weights(rep["weights"], weights, GPU_TOL)
        _assert_weights(rep["buffers"], buffers, GPU_TOL)
    assert buffers["bn.running_mean"] != [0.0] * script.FEATURES  # the statistics did move
    # mixed precision: float16 with the grad scaler under DDP, bfloat16 through FSDP's policy
    for rep in reports["ddp@16-mixed"]:
        _assert_weights(rep["weights"], _reference(precision="16-mixed", accelerator="cuda"), 2e-2)
    for rep in reports["fsdp@bf16-mixed"]:
        _assert_weights(rep["weights"], reference, 2e-2)
    # evaluation before and after fit, then a second fit, on GPUs (as on gloo in test_sharded.py)
    sgd_first, sgd_after = _reference(script.SGDNet, then_evaluate=True, accelerator="cuda")
    for run in [r for r in runs if r.endswith("+sgd")]:
        for rep in reports[run]:
            _assert_weights(rep["weights"], sgd_first, GPU_TOL)
            for fn in ("validate_before_fit", "validate", "test"):
                assert rep[fn][0] == pytest.approx(sgd_after[fn][0], rel=1e-4), (run, fn)
            _assert_weights(rep["second_fit_weights"], sgd_after["second_fit_weights"], GPU_TOL)
    assert not _alive(str(tmp_path))


@needs_cuda
def test_pinned_batches_reach_the_gpu_and_train_like_unpinned_ones():
    seen = []

    class Probe(script.Net):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            seen.append(("pinned", batch[0].is_pinned()))
            return batch

        def training_step(self, batch, batch_idx):
            seen.append(("device", batch[0].device.type))
            return super().training_step(batch, batch_idx)

    results = []
    for pin in (True, False):
        seen.clear()
        model = Probe()
        data = TensorDataset(*script.data().tensors)
        pl.Trainer(accelerator="cuda", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False).fit(
            model, DataLoader(data, batch_size=8, pin_memory=pin, num_workers=2))
        assert ("pinned", pin) in seen and ("pinned", not pin) not in seen
        assert set(v for k, v in seen if k == "device") == {"cuda"}
        results.append({n: p.detach().cpu() for n, p in model.named_parameters()})
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name  # pinning changes how bytes travel, not the result


@needs_cuda
def test_accelerator_auto_and_gpu_pick_cuda_and_devices_select_gpus():
    from fulmen.accelerators import CUDAAccelerator, find_usable_cuda_devices

    trainer = pl.Trainer(accelerator="auto", devices=find_usable_cuda_devices(1), logger=False)
    assert isinstance(trainer.accelerator, CUDAAccelerator)
    assert trainer.strategy.root_device.type == "cuda"
    trainer = pl.Trainer(accelerator="gpu", devices=[torch.cuda.device_count() - 1], logger=False)
    assert trainer.strategy.root_device == torch.device("cuda", torch.cuda.device_count() - 1)
    count = torch.cuda.device_count()
    with pytest.raises(MisconfigurationException, match=f"asks for {count + 1} GPUs, but torch sees {count}"):
        pl.Trainer(accelerator="cuda", devices=count + 1)
