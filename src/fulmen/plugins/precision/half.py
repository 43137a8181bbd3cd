"""Lightning's path ``plugins.precision.half``: ``HalfPrecision``, float16 or bfloat16 parameters and inputs.

Example::

    from fulmen.plugins.precision.half import HalfPrecision
"""

from fulmen.precision import HalfPrecision

__all__ = ["HalfPrecision"]
