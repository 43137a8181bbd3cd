"""fulmen.trainer.optimizers: LightningOptimizer works on its own, as in Lightning."""

import torch

from fulmen.core.optimizer import LightningOptimizer


def test_lightning_optimizer_constructed_alone_steps_its_optimizer():
    param = torch.nn.Parameter(torch.tensor([1.0]))
    sgd = torch.optim.SGD([param], lr=0.5)
    opt = LightningOptimizer(sgd)
    assert opt.optimizer is sgd and opt.param_groups is sgd.param_groups and "LightningOptimizer" in repr(opt)
    (param * 2).sum().backward()
    opt.step()
    assert param.item() == 0.0
    opt.zero_grad()
    assert param.grad is None

    lbfgs = LightningOptimizer(torch.optim.LBFGS([param], lr=0.1))

    def closure():
        lbfgs.zero_grad()
        loss = ((param - 3) ** 2).sum()
        loss.backward()
        return loss

    assert lbfgs.step(closure).item() == 9.0  # the closure's loss comes back
    assert param.item() > 0.0
