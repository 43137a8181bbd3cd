"""Questions about a model class: does it override a hook; build a torchvision model by name.

Example::

    from fulmen.utilities.model_helpers import is_overridden

    is_overridden("validation_step", model)  # True when the model defines its own validation_step
"""

from __future__ import annotations

from typing import Any

from fulmen.utilities import is_overridden as _is_overridden

__all__ = ["get_torchvision_model", "is_overridden"]


def is_overridden(method_name: str, instance: Any = None, parent: type | None = None) -> bool:
    """Whether ``instance`` replaces ``parent.method_name`` (a method set to None counts as not overridden).

    ``parent`` defaults to the fulmen base class of ``instance``: LightningModule, LightningDataModule
    or Callback.

    Example::

        is_overridden("on_train_epoch_end", my_callback)
    """
    if instance is None:
        return False
    if parent is None:
        from fulmen.callbacks.callback import Callback
        from fulmen.datamodule import LightningDataModule
        from fulmen.module import LightningModule

        parent = next((p for p in (LightningModule, LightningDataModule, Callback) if isinstance(instance, p)), None)
        if parent is None:
            from fulmen.errors import MisconfigurationException

            raise MisconfigurationException(
                f"is_overridden({method_name!r}, ...) cannot tell the base class of a {type(instance).__name__}; "
                "pass it as `parent=`."
            )
    if getattr(instance, method_name, None) is None and hasattr(parent, method_name):
        return False
    return _is_overridden(method_name, instance, parent)


def get_torchvision_model(model_name: str, **kwargs: Any) -> Any:
    """``torchvision.models.get_model(model_name, **kwargs)``; torchvision is imported only here.

    Example::

        backbone = get_torchvision_model("resnet18", weights=None)
    """
    try:
        from torchvision.models import get_model
    except ImportError:
        from fulmen.errors import missing_extra

        raise missing_extra("torchvision", "vision", f"get_torchvision_model({model_name!r})") from None
    return get_model(model_name, **kwargs)
