"""Whether optional packages are installed, checked without importing them.

Lightning's flag names, which published examples test before importing torchvision or rich.

Example::

    from fulmen.utilities.imports import _TORCHVISION_AVAILABLE

    if _TORCHVISION_AVAILABLE:
        from torchvision import transforms
"""

from __future__ import annotations

from importlib.util import find_spec


def package_available(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it.

    Example::

        package_available("rich")  # True when rich is installed
    """
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_TORCHVISION_AVAILABLE = package_available("torchvision")
_RICH_AVAILABLE = package_available("rich")
_OMEGACONF_AVAILABLE = package_available("omegaconf")
_TENSORBOARD_AVAILABLE = package_available("tensorboard")
_TENSORBOARDX_AVAILABLE = package_available("tensorboardX")
_JSONARGPARSE_AVAILABLE = package_available("jsonargparse")
_ONNX_AVAILABLE = package_available("onnx")
