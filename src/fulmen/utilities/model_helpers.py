"""Questions about a model class: does it override a hook; build a torchvision model by name.

Example::

    from fulmen.utilities.model_helpers import is_overridden

    is_overridden("validation_step", model)  # True when the model defines its own validation_step
"""

from fulmen._lightning_utils import get_torchvision_model
from fulmen._utils import is_overridden

__all__ = ["get_torchvision_model", "is_overridden"]
