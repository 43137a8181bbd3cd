"""``ModelParallelStrategy``: a tensor-parallel MLP (ColwiseParallel/RowwiseParallel over DTensor) on 2 gloo
processes trains to the weights of one process, and its distributed checkpoints resume and load. One launch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fulmen as pl
from fulmen.errors import MisconfigurationException

sys.path.insert(0, str(Path(__file__).parent))
import model_parallel_script as script  # noqa: E402

SCRIPT = str(Path(__file__).with_name("model_parallel_script.py"))


def _launch(out: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "LT_", "FULMEN_LAUNCHER", "PL_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, SCRIPT, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:  # never leave a rank behind
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def test_tensor_parallel_trains_like_one_process_and_resumes(tmp_path):
    report = _launch(tmp_path)
    reference = script.MLP()
    ref_trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=script.EPOCHS, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    ref_trainer.fit(reference, *script.loaders())
    expected = script.full_weights(reference)

    assert report["param_type"] == "DTensor" and report["local_shape"] == [8, 8]  # each process holds half
    assert report["mesh"] == ["data_parallel", "tensor_parallel"]
    for name, values in expected.items():
        torch.testing.assert_close(torch.tensor(report["weights"][name]), torch.tensor(values), rtol=1e-5, atol=1e-6)
    assert report["val_loss"] == pytest.approx(float(ref_trainer.callback_metrics["val_loss"]), rel=1e-5)
    # the resumed run continues from the directory checkpoint to the uninterrupted run's weights
    assert report["ckpt_is_dir"] and report["resumed_step"] == ref_trainer.global_step
    assert report["resumed_weights"] == report["weights"]
    # the single file and the directory load into the slices: validation gives the checkpointed model's loss
    assert report["single_is_file"]
    assert report["validate_single"][0]["val_loss"] == pytest.approx(report["val_loss"], rel=1e-5)
    from fulmen.strategies.sharded_checkpoint import load_consolidated

    epoch0 = load_consolidated(tmp_path / "ckpt" / "epoch=0.ckpt")
    assert epoch0["epoch"] == 0 and set(epoch0["state_dict"]) == set(expected)
    assert report["validate_dir"][0]["val_loss"] != pytest.approx(report["val_loss"])  # epoch 0's weights
    # the consolidated epoch-0 weights are what one process validates to the same loss
    single_proc = script.MLP()
    single_proc.load_state_dict(epoch0["state_dict"])
    check = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, enable_checkpointing=False)
    loss = check.validate(single_proc, script.loaders()[1], verbose=False)[0]["val_loss"]
    assert report["validate_dir"][0]["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_misuse_is_named_before_any_process_starts():
    from fulmen.strategies import ModelParallelStrategy

    with pytest.raises(MisconfigurationException, match="'auto'"):
        ModelParallelStrategy(tensor_parallel_size=0)
    strategy = ModelParallelStrategy()
    with pytest.raises(MisconfigurationException, match="configure_model"):
        strategy.device_mesh
    with pytest.raises(MisconfigurationException, match="Override configure_model"):
        strategy.setup_module(pl.demos.BoringModel())
    # Lightning Fabric's form: the function first, or by name; anything else is named
    fn = lambda module, mesh: module  # noqa: E731
    assert ModelParallelStrategy(fn)._parallelize_fn is fn
    assert ModelParallelStrategy(parallelize_fn=fn, tensor_parallel_size=2)._tensor_parallel_size == 2
    with pytest.raises(MisconfigurationException, match="by name"):
        ModelParallelStrategy(fn, 1, 2)
    with pytest.raises(MisconfigurationException, match="not callable"):
        ModelParallelStrategy(parallelize_fn="fn")
    strategy = ModelParallelStrategy(parallelize_fn=lambda module, mesh: None)
    strategy._device_mesh = object()  # what launch() builds; the function is called with it
    with pytest.raises(MisconfigurationException, match="return model"):
        strategy.setup_module(torch.nn.Linear(2, 2))
