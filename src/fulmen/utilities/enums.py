"""Lightning's string enums: compare equal to their (case-insensitive) string values.

Example::

    from fulmen.utilities.enums import GradClipAlgorithmType

    GradClipAlgorithmType("norm") == "NORM"  # True
"""

from fulmen._lightning_utils import GradClipAlgorithmType, LightningEnum

__all__ = ["GradClipAlgorithmType", "LightningEnum"]
