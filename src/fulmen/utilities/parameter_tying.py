"""Finding and restoring parameters shared between modules (tied weights).

Moving a module between devices (or re-creating its parameters) can break ties such as an embedding
shared with an output layer; find them before and set them again after.

Example::

    from fulmen.utilities.parameter_tying import find_shared_parameters, set_shared_parameters

    shared = find_shared_parameters(model)      # [['embed.weight', 'head.weight']]
    model = set_shared_parameters(model, shared)
"""

from __future__ import annotations

from torch import nn

__all__ = ["find_shared_parameters", "set_shared_parameters"]


def find_shared_parameters(module: nn.Module) -> list[list[str]]:
    """The names of each parameter reachable under more than one name, grouped per parameter.

    Example::

        model.head.weight = model.embed.weight
        find_shared_parameters(model)  # [['embed.weight', 'head.weight']]
    """
    names: dict[nn.Parameter, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(param, []).append(name)
    return [group for group in names.values() if len(group) > 1]


def set_shared_parameters(module: nn.Module, shared_params: list[list[str]]) -> nn.Module:
    """Tie again each group of names from :func:`find_shared_parameters` to the first one's parameter."""
    for group in shared_params:
        owner, _, attr = group[0].rpartition(".")
        param = getattr(module.get_submodule(owner) if owner else module, attr)
        for path in group[1:]:
            owner, _, attr = path.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, attr, param)
    return module
