"""Finding and restoring parameters shared between modules (tied weights).

Moving a module between devices (or re-creating its parameters) can break ties such as an embedding
shared with an output layer; find them before and set them again after.

Example::

    from fulmen.utilities.parameter_tying import find_shared_parameters, set_shared_parameters

    shared = find_shared_parameters(model)      # [['embed.weight', 'head.weight']]
    model = set_shared_parameters(model, shared)
"""

from fulmen._lightning_utils import find_shared_parameters, set_shared_parameters

__all__ = ["find_shared_parameters", "set_shared_parameters"]
