"""Lightning's path ``plugins.precision.double``: ``DoublePrecision``, float64 parameters and inputs.

Example::

    from fulmen.plugins.precision.double import DoublePrecision
"""

from fulmen.precision import DoublePrecision

__all__ = ["DoublePrecision"]
