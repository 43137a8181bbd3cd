"""Gradient norms to log, e.g. from ``on_before_optimizer_step``.

Example::

    from fulmen.utilities.grads import grad_norm

    def on_before_optimizer_step(self, optimizer):
        self.log_dict(grad_norm(self.layer, norm_type=2))
"""

from fulmen._lightning_utils import grad_norm

__all__ = ["grad_norm"]
