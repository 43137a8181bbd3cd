"""Lightning's path ``core.optimizer``: the optimizer wrapper ``self.optimizers()`` returns.

Example::

    from fulmen.core.optimizer import LightningOptimizer

    opt = LightningOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
"""

from fulmen.trainer.optimizers import LightningOptimizer

__all__ = ["LightningOptimizer"]
