"""torch.compile'd modules through fit/validate/checkpoints, and the deterministic/benchmark flags."""

import os

import pytest
import torch

from _optim_helpers import Regressor, assert_same_weights, loader, quiet_trainer
from fulmen.errors import MisconfigurationException


class Validated(Regressor):
    def __init__(self):
        super().__init__()
        self.step_calls = 0

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_module_trains_validates_and_checkpoints_like_the_plain_one(tmp_path):
    plain = Validated()
    quiet_trainer(max_epochs=2).fit(plain, loader(), loader())

    module = Validated()
    compiled = torch.compile(module, backend="eager")  # dynamo tracing without a C++ toolchain
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(compiled, loader(), loader())
    assert trainer.lightning_module is module
    assert module._compiler_ctx["compiler"] == "dynamo"
    assert_same_weights(module.net, plain.net)  # the eager backend runs the same kernels

    trainer.save_checkpoint(tmp_path / "c.ckpt")
    keys = list(torch.load(tmp_path / "c.ckpt", weights_only=False)["state_dict"])
    assert keys == list(plain.state_dict()) and not any("_orig_mod" in k for k in keys)
    [metrics] = trainer.validate(compiled, loader(), verbose=False)
    assert metrics["val_loss"] == pytest.approx(quiet_trainer().validate(plain, loader(), verbose=False)[0]["val_loss"])
    # a later fit of the same compiled object does not wrap twice
    forward = module.forward
    quiet_trainer(max_steps=1).fit(compiled, loader())
    assert module.forward is forward
    # the steps it does not define stay "not overridden", so the loops skip them as before
    assert "test_step" not in module.__dict__ and "training_step" in module.__dict__


def test_compiled_plain_module_is_rejected():
    with pytest.raises(MisconfigurationException, match="compiled fulmen.LightningModule"):
        quiet_trainer(max_steps=1).fit(torch.compile(torch.nn.Linear(1, 1), backend="eager"), loader())


@pytest.fixture
def restore_torch_flags():
    saved = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    if saved[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[3]


# observed with pytorch-lightning 2.6, starting from benchmark=False, deterministic algorithms off
@pytest.mark.parametrize("kwargs, benchmark, deterministic, warn_only, cublas", [
    ({}, False, False, False, None),
    ({"deterministic": True}, False, True, False, ":4096:8"),
    ({"benchmark": True}, True, False, False, None),
    ({"deterministic": "warn"}, False, True, True, ":4096:8"),
    ({"deterministic": False, "benchmark": False}, False, False, False, None),
])
def test_deterministic_and_benchmark_set_torch_flags_as_lightning(restore_torch_flags, kwargs, benchmark,
                                                                  deterministic, warn_only, cublas):
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(False)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    quiet_trainer(**kwargs)
    assert torch.backends.cudnn.benchmark is benchmark
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == cublas


def test_benchmark_default_leaves_a_user_setting_alone(restore_torch_flags):
    torch.backends.cudnn.benchmark = True
    quiet_trainer()
    assert torch.backends.cudnn.benchmark is True


def test_bad_deterministic_value_is_rejected():
    with pytest.raises(MisconfigurationException, match="deterministic='yes'"):
        quiet_trainer(deterministic="yes")
