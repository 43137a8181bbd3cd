"""Each precision against the same training written in plain PyTorch; the scaler's state in checkpoints;
non-finite losses and detect_anomaly."""

import copy

import pytest
import torch
from torch import nn

from _optim_helpers import Regressor, assert_same_weights, loader, quiet_trainer
from fulmen.errors import MisconfigurationException, NonFiniteLossError
from fulmen.precision import normalize_precision

SGD = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def plain_loop(net, device, precision, epochs=2, clip=None):
    """The hand-written equivalent of Trainer(precision=precision)."""
    net = copy.deepcopy(net).to(device)
    true_dtype = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}.get(precision)
    if true_dtype is not None:
        net = net.to(true_dtype)
    opt = SGD(net.parameters())
    mixed = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device) if precision == "16-mixed" else None
    for _ in range(epochs):
        for x, y in loader():
            x, y = x.to(device), y.to(device)
            if true_dtype is not None:
                x, y = x.to(true_dtype), y.to(true_dtype)
            opt.zero_grad()
            with torch.autocast(device, dtype=mixed, enabled=mixed is not None):
                loss = nn.functional.mse_loss(net(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
    return net


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flag, canonical", [
    ("32-true", "32-true"), (32, "32-true"), ("32", "32-true"),
    ("64-true", "64-true"), (64, "64-true"),
    ("16-mixed", "16-mixed"), (16, "16-mixed"),
    ("bf16-mixed", "bf16-mixed"), ("bf16", "bf16-mixed"),
    ("bf16-true", "bf16-true"), ("16-true", "16-true"),
])
def test_precision_matches_plain_pytorch(device, flag, canonical):
    model = Regressor(SGD)
    expected = plain_loop(model.net, device, canonical, clip=0.5)
    trainer = quiet_trainer(max_epochs=2, precision=flag, accelerator=device, gradient_clip_val=0.5)
    assert trainer.precision == canonical
    trainer.fit(model, loader())
    # the same operations in the same order: equal bit for bit, in every precision
    assert_same_weights(model.net, expected)
    if canonical.endswith("-true") and canonical != "32-true":
        assert model.net[0].weight.dtype == {"64-true": torch.float64, "16-true": torch.float16,
                                             "bf16-true": torch.bfloat16}[canonical]


def test_unknown_precision_names_the_choices():
    with pytest.raises(MisconfigurationException, match="precision='8-mixed'.*'bf16-mixed'"):
        normalize_precision("8-mixed")


@pytest.mark.parametrize("device", DEVICES)
def test_16_mixed_skips_steps_with_inf_gradients_and_lowers_the_scale(device):
    class Spike(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("inf") if batch_idx == 3 else loss

    model = Spike(SGD)
    weights, scales = [], []
    trainer = quiet_trainer(max_epochs=1, precision="16-mixed", accelerator=device)

    def record(out, batch, idx):
        weights.append(model.net[0].weight.detach().clone())
        scales.append(trainer.strategy.precision.scaler.get_scale())

    model.on_train_batch_end = record
    trainer.fit(model, loader())
    assert model.net[0].weight.device.type == device
    assert torch.equal(weights[2], weights[3])  # the inf step changed nothing
    assert not torch.equal(weights[3], weights[4])  # and training went on
    assert torch.isfinite(model.net[0].weight).all()
    # the scaler halved its scale at the overflow (GradScaler's backoff) and kept it for the steps after
    assert scales[3] == scales[2] / 2 and set(scales[4:]) == {scales[3]}
    assert trainer.global_step == len(scales)  # a skipped step still counts, as in Lightning


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_mixed_on_cuda_computes_in_bfloat16_and_ends_close_to_32_true():
    seen = []

    class Watch(Regressor):
        def training_step(self, batch, batch_idx):
            out = self(batch[0])
            seen.append(out.dtype)
            return nn.functional.mse_loss(out.float(), batch[1])

    results = {}
    for precision in ("32-true", "bf16-mixed"):
        model = Watch(SGD)
        quiet_trainer(max_epochs=2, precision=precision, accelerator="cuda").fit(model, loader())
        results[precision] = model.net.cpu()
        assert model.net[0].weight.dtype == torch.float32  # weights stay float32 under mixed precision
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: 16 SGD steps on this problem stay within a few 1e-2 of float32
    assert_same_weights(results["bf16-mixed"], results["32-true"], atol=3e-2, rtol=3e-2)
    assert not torch.equal(results["bf16-mixed"][0].weight, results["32-true"][0].weight)


def test_scaler_state_is_checkpointed_and_resume_continues_exactly(tmp_path):
    model = Regressor(SGD)
    trainer = quiet_trainer(max_epochs=1, precision="16-mixed")
    trainer.fit(model, loader())
    path = tmp_path / "one.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["MixedPrecision"]["scale"] == trainer.strategy.precision.scaler.get_scale() == 32768.0

    resumed = Regressor(SGD)
    trainer2 = quiet_trainer(max_epochs=2, precision="16-mixed")
    trainer2.fit(resumed, loader(), ckpt_path=path)
    straight = Regressor(SGD)
    quiet_trainer(max_epochs=2, precision="16-mixed").fit(straight, loader())
    assert_same_weights(resumed.net, straight.net)
    assert trainer2.strategy.precision.scaler.get_scale() == 32768.0  # restored, not back at 2**16


class Diverging(Regressor):
    """Its loss turns inf at batch ``bad`` and stays NaN after (the weights are NaN then)."""

    def __init__(self, bad):
        super().__init__(SGD)
        self.bad = bad

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if self.global_step == self.bad else loss


def test_non_finite_loss_is_reported_with_its_step_window():
    with pytest.raises(NonFiniteLossError, match=r"between global steps 0 and 4 \(checked every 4 steps\).*detect_anomaly"):
        quiet_trainer(max_epochs=1, log_every_n_steps=4).fit(Diverging(bad=2), loader())


def test_detect_anomaly_names_the_exact_step():
    with pytest.raises(NonFiniteLossError, match=r"became inf at global step 2 \(epoch 0, batch 2\)"):
        quiet_trainer(max_epochs=1, detect_anomaly=True).fit(Diverging(bad=2), loader())


@pytest.mark.filterwarnings("ignore:Error detected")
def test_detect_anomaly_turns_on_autograd_anomaly_detection():
    class NanGrad(Regressor):
        def training_step(self, batch, batch_idx):
            return (self(batch[0]) * 0).sqrt().sum() * 0 + super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="returned nan values"):
        quiet_trainer(max_steps=1, detect_anomaly=True).fit(NanGrad(SGD), loader())
    assert not torch.is_anomaly_enabled()


def test_returning_none_for_non_finite_losses_skips_them():
    class Guarded(Diverging):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if not torch.isfinite(loss) else loss

    model = Guarded(bad=2)
    quiet_trainer(max_epochs=1, detect_anomaly=True).fit(model, loader())
    assert torch.isfinite(model.net[0].weight).all()
