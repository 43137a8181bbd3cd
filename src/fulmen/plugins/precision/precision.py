"""Lightning's path ``plugins.precision.precision``: ``Precision``, the base precision plugin (float32, changes nothing).

Example::

    from fulmen.plugins.precision.precision import Precision
"""

from fulmen.precision import Precision

__all__ = ["Precision"]
