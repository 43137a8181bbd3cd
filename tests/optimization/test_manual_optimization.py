"""Manual optimization: optimizers(), lr_schedulers(), manual_backward, toggling, clipping, closures, the step
count, and a small GAN that must both train and match the same GAN written in plain PyTorch."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from _optim_helpers import assert_same_weights, loader, make_net, quiet_trainer
from fulmen.errors import MisconfigurationException


class ManualRegressor(pl.LightningModule):
    def __init__(self, clip=None, use_closure=False):
        super().__init__()
        self.automatic_optimization = False
        self.net = make_net()
        self.clip, self.use_closure = clip, use_closure

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        x, y = batch

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(self.net(x), y)
            self.manual_backward(loss)
            if self.clip:
                self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
            return loss

        if self.use_closure:
            loss = opt.step(closure=closure)
        else:
            loss = closure()
            opt.step()
        sched.step()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)]


def _plain(clip=None):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    for x, y in loader():
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), clip)
        opt.step()
        sched.step()
    return net


@pytest.mark.parametrize("clip, use_closure", [(None, False), (0.05, False), (None, True), (0.05, True)])
def test_manual_loop_matches_plain_pytorch(clip, use_closure):
    model = ManualRegressor(clip, use_closure)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, loader())
    assert_same_weights(model.net, _plain(clip))
    assert trainer.global_step == 8


def test_manual_backward_needs_manual_optimization():
    class Auto(ManualRegressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = True

        def training_step(self, batch, batch_idx):
            self.manual_backward(nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    with pytest.raises(MisconfigurationException, match="automatic_optimization = False"):
        quiet_trainer(max_steps=1).fit(Auto(), loader())


def test_accumulation_flag_is_rejected_with_manual_optimization():
    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches"):
        quiet_trainer(max_steps=1, accumulate_grad_batches=2).fit(ManualRegressor(), loader())


def test_gradient_clip_val_is_rejected_with_manual_optimization():
    with pytest.raises(MisconfigurationException, match="clip_gradients"):
        quiet_trainer(max_steps=1, gradient_clip_val=1.0).fit(ManualRegressor(), loader())


# -- a GAN ---------------------------------------------------------------------------------------------
TARGET_MEAN = 2.0


def gan_nets(seed=0):
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    d = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    return g, d


def real_data(n=512):
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(TARGET_MEAN + 0.5 * torch.randn(n, 1, generator=gen))


class GAN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = gan_nets()
        self.toggle_log = []

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 2, generator=self.noise)
        bce = nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones_like(real), torch.zeros_like(real)

        self.toggle_optimizer(opt_g)
        self.toggle_log.append(all(not p.requires_grad for p in self.discriminator.parameters()))
        g_loss = bce(self.discriminator(self.generator(z)), ones)
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        fake = self.generator(z).detach()
        d_loss = (bce(self.discriminator(real), ones) + bce(self.discriminator(fake), zeros)) / 2
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def on_fit_start(self):
        self.noise = torch.Generator().manual_seed(2)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=0.01, betas=(0.5, 0.999)),
                torch.optim.Adam(self.discriminator.parameters(), lr=0.01, betas=(0.5, 0.999))]


def plain_gan(epochs):
    g, d = gan_nets()
    opt_g = torch.optim.Adam(g.parameters(), lr=0.01, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=0.01, betas=(0.5, 0.999))
    noise = torch.Generator().manual_seed(2)
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(epochs):
        for (real,) in DataLoader(real_data(), batch_size=32):
            z = torch.randn(real.shape[0], 2, generator=noise)
            ones, zeros = torch.ones_like(real), torch.zeros_like(real)
            for p in d.parameters():
                p.requires_grad_(False)
            bce(d(g(z)), ones).backward()
            opt_g.step()
            opt_g.zero_grad()
            for p in d.parameters():
                p.requires_grad_(True)
            for p in g.parameters():
                p.requires_grad_(False)
            fake = g(z).detach()
            ((bce(d(real), ones) + bce(d(fake), zeros)) / 2).backward()
            opt_d.step()
            opt_d.zero_grad()
            for p in g.parameters():
                p.requires_grad_(True)
    return g, d


def test_gan_trains_counts_both_optimizers_and_matches_plain_pytorch():
    model = GAN()
    before = model.generator(torch.randn(256, 2)).mean().item()
    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(model, DataLoader(real_data(), batch_size=32))
    assert trainer.global_step == 2 * 16 * 4  # Lightning counts every step of every optimizer
    assert all(model.toggle_log)  # the discriminator was frozen while the generator stepped
    assert all(p.requires_grad for p in model.parameters())  # and untoggling restored everything
    g, d = plain_gan(4)
    assert_same_weights(model.generator, g)
    assert_same_weights(model.discriminator, d)
    samples = model.generator(torch.randn(2048, 2, generator=torch.Generator().manual_seed(5))).detach()
    assert abs(samples.mean().item() - TARGET_MEAN) < 0.5 < abs(before - TARGET_MEAN)
    assert {"g_loss", "d_loss"} <= set(trainer.callback_metrics)


def test_toggle_keeps_parameters_that_were_frozen_before():
    model = GAN()
    model.discriminator[0].bias.requires_grad_(False)
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(model, DataLoader(real_data(64), batch_size=32))
    assert not model.discriminator[0].bias.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "discriminator.0.bias")


def test_16_mixed_manual_clipping_unscales_first_and_matches_plain_amp():
    model = ManualRegressor(clip=0.05)
    trainer = quiet_trainer(max_epochs=1, precision="16-mixed")
    trainer.fit(model, loader())
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    scaler = torch.amp.GradScaler("cpu")
    for x, y in loader():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(net(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), 0.05)
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert_same_weights(model.net, net)
    assert trainer.strategy.precision.scaler.get_scale() == scaler.get_scale() < 2.0**16  # a step was skipped
