"""Lightning's path ``core.mixins``: ``HyperparametersMixin`` gives any class ``save_hyperparameters``.

Example::

    from fulmen.core.mixins import HyperparametersMixin

    class Config(HyperparametersMixin):
        def __init__(self, width=64):
            super().__init__()
            self.save_hyperparameters()
"""

from fulmen.module import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
