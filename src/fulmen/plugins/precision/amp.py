"""Lightning's path ``plugins.precision.amp``: ``MixedPrecision`` (autocast, and gradient scaling for float16).

Example::

    from fulmen.plugins.precision.amp import MixedPrecision
"""

from fulmen.precision import MixedPrecision

__all__ = ["MixedPrecision"]
