"""Gradient norms to log, e.g. from ``on_before_optimizer_step``.

Example::

    from fulmen.utilities.grads import grad_norm

    def on_before_optimizer_step(self, optimizer):
        self.log_dict(grad_norm(self.layer, norm_type=2))
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["grad_norm"]


def grad_norm(module: nn.Module, norm_type: float | int | str, group_separator: str = "/") -> dict[str, torch.Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, and of all of them as one vector.

    Keys are Lightning's: ``grad_{p}_norm{sep}{param name}`` and ``grad_{p}_norm_total``, with ``p`` the
    norm as a float (``2.0``, ``inf``). Parameters without a gradient are left out; no gradients give ``{}``.

    Example::

        grad_norm(model, 2)  # {'grad_2.0_norm/layer.weight': tensor(..), ..., 'grad_2.0_norm_total': tensor(..)}
    """
    norm_type = float(norm_type)
    if norm_type <= 0:
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(
            f"grad_norm(norm_type={norm_type}) needs a positive number or 'inf' (the max norm)."
        )
    norms = {
        f"grad_{norm_type}_norm{group_separator}{name}": p.grad.detach().norm(norm_type)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
    if norms:
        norms[f"grad_{norm_type}_norm_total"] = torch.stack(list(norms.values())).norm(norm_type)
    return norms
