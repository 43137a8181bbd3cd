"""Whether optional packages are installed, checked without importing them.

Lightning's flag names, which published examples test before importing torchvision or rich.

Example::

    from fulmen.utilities.imports import _TORCHVISION_AVAILABLE

    if _TORCHVISION_AVAILABLE:
        from torchvision import transforms
"""

from fulmen._lightning_utils import (_JSONARGPARSE_AVAILABLE, _OMEGACONF_AVAILABLE, _ONNX_AVAILABLE, _RICH_AVAILABLE,
                                     _TENSORBOARDX_AVAILABLE, _TENSORBOARD_AVAILABLE, _TORCHVISION_AVAILABLE)
from fulmen._utils import package_available

__all__ = [
    "_JSONARGPARSE_AVAILABLE", "_OMEGACONF_AVAILABLE", "_ONNX_AVAILABLE", "_RICH_AVAILABLE",
    "_TENSORBOARDX_AVAILABLE", "_TENSORBOARD_AVAILABLE", "_TORCHVISION_AVAILABLE", "package_available",
]
