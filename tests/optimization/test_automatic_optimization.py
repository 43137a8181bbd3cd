"""Automatic optimization: accumulation, clipping, the step/zero_grad/clipping overrides and closures (LBFGS),
each checked bitwise against the same training written as a plain PyTorch loop."""

import pytest
import torch
from torch import nn

from _optim_helpers import Regressor, assert_same_weights, loader, quiet_trainer, reference_loop
from fulmen.errors import MisconfigurationException

SGD = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
ADAM = lambda p: torch.optim.Adam(p, lr=0.01)  # noqa: E731


@pytest.mark.parametrize("opt", [SGD, ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("acc", [1, 3, 4])
def test_accumulation_matches_plain_pytorch(opt, acc):
    model = Regressor(opt)
    dl = loader(4, n=40)  # 10 batches: with acc=3 the epoch ends inside a window, which still steps
    expected = reference_loop(model.net, dl, opt, epochs=2, accumulate=acc)
    trainer = quiet_trainer(max_epochs=2, accumulate_grad_batches=acc)
    trainer.fit(model, dl)
    assert_same_weights(model.net, expected)
    assert trainer.global_step == 2 * -(-10 // acc)


@pytest.mark.parametrize("algorithm", [None, "norm", "value"])
@pytest.mark.parametrize("acc", [1, 4])
def test_gradient_clipping_matches_plain_pytorch(algorithm, acc):
    model = Regressor(SGD)
    dl = loader(8)
    expected = reference_loop(model.net, dl, SGD, epochs=2, accumulate=acc, clip_val=0.05,
                              clip_algorithm=algorithm or "norm")
    quiet_trainer(max_epochs=2, accumulate_grad_batches=acc, gradient_clip_val=0.05,
                  gradient_clip_algorithm=algorithm).fit(model, dl)
    assert_same_weights(model.net, expected)
    unclipped = reference_loop(model.net, dl, SGD)
    assert not torch.equal(unclipped[0].weight, expected[0].weight)  # the clipping did something


def test_configure_gradient_clipping_override_receives_the_flags_and_replaces_clipping():
    seen = []

    class Custom(Regressor):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            seen.append((gradient_clip_val, gradient_clip_algorithm))
            # a value the Trainer's flags already set must agree with them (Lightning raises otherwise)
            self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm="value")

    model = Custom(SGD)
    expected = reference_loop(model.net, loader(), SGD, clip_val=0.01, clip_algorithm="value")
    quiet_trainer(max_epochs=1, gradient_clip_val=0.01).fit(model, loader())
    assert_same_weights(model.net, expected)
    assert seen == [(0.01, None)] * 8  # Lightning passes the algorithm only when it was given

    seen.clear()
    quiet_trainer(max_steps=1, gradient_clip_val=0.5, gradient_clip_algorithm="value").fit(Custom(SGD), loader())
    assert seen == [(0.5, "value")]


def test_clip_gradients_rejects_unknown_algorithm():
    class Bad(Regressor):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, 1.0, "max")

    with pytest.raises(MisconfigurationException, match="'max'.*'norm' or 'value'"):
        quiet_trainer(max_steps=1).fit(Bad(SGD), loader())


def test_optimizer_step_override_for_warmup_matches_plain_pytorch():
    class Warmup(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step(closure=optimizer_closure)
            for g in optimizer.param_groups:
                g["lr"] = 0.1 * min(1.0, (self.trainer.global_step + 2) / 5)

    model = Warmup(SGD)
    net = reference = __import__("copy").deepcopy(model.net)
    opt = SGD(reference.parameters())
    for step, (x, y) in enumerate(loader()):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 0.1 * min(1.0, (step + 2) / 5)
    quiet_trainer(max_epochs=1).fit(model, loader())
    assert_same_weights(model.net, reference)


def test_optimizer_step_override_must_call_the_closure():
    class Forgetful(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step()

    with pytest.raises(MisconfigurationException, match="did not call the closure"):
        quiet_trainer(max_steps=1).fit(Forgetful(SGD), loader())


def test_optimizer_zero_grad_override_keeps_gradients():
    class KeepGrads(Regressor):
        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            if batch_idx == 0:
                optimizer.zero_grad()

    model = KeepGrads(SGD)
    net = __import__("copy").deepcopy(model.net)
    opt = SGD(net.parameters())
    for i, (x, y) in enumerate(loader()):
        if i == 0:
            opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    quiet_trainer(max_epochs=1).fit(model, loader())
    assert_same_weights(model.net, net)


def test_hooks_around_the_step_run_in_lightnings_order():
    order = []

    class Hooked(Regressor):
        def on_before_zero_grad(self, optimizer):
            order.append("on_before_zero_grad")

        def on_before_backward(self, loss):
            order.append("on_before_backward")

        def on_after_backward(self):
            order.append("on_after_backward")

        def on_before_optimizer_step(self, optimizer):
            order.append("on_before_optimizer_step")

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            order.append("configure_gradient_clipping")

        def training_step(self, batch, batch_idx):
            order.append("training_step")
            return super().training_step(batch, batch_idx)

    quiet_trainer(max_steps=1).fit(Hooked(SGD), loader())
    assert order == ["training_step", "on_before_zero_grad", "on_before_backward", "on_after_backward",
                     "on_before_optimizer_step", "configure_gradient_clipping"]


def test_lbfgs_closure_is_reevaluated_and_matches_plain_pytorch():
    lbfgs = lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=5)  # noqa: E731
    calls = []

    class Quasi(Regressor):
        def training_step(self, batch, batch_idx):
            calls.append(batch_idx)
            return super().training_step(batch, batch_idx)

    model = Quasi(lbfgs)
    net = __import__("copy").deepcopy(model.net)
    opt = lbfgs(net.parameters())
    for x, y in loader(16):
        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, loader(16))
    assert_same_weights(model.net, net)
    assert len(calls) > 4 and trainer.global_step == 4  # several evaluations per step, one step per batch


def test_skipping_a_batch_by_returning_none_leaves_weights_alone():
    class Skipper(Regressor):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    model = Skipper(SGD)
    net = __import__("copy").deepcopy(model.net)
    opt = SGD(net.parameters())
    for i, (x, y) in enumerate(loader()):
        if i % 2 == 0:
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    quiet_trainer(max_epochs=1).fit(model, loader())
    assert_same_weights(model.net, net)
