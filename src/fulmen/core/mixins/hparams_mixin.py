"""Lightning's path ``core.mixins.hparams_mixin``.

Example::

    from fulmen.core.mixins.hparams_mixin import HyperparametersMixin
"""

from fulmen.module import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
