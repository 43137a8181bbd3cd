"""Lightning's string enums: compare equal to their (case-insensitive) string values.

Example::

    from fulmen.utilities.enums import GradClipAlgorithmType

    GradClipAlgorithmType("norm") == "NORM"  # True
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class LightningEnum(str, Enum):
    """A ``str`` enum whose members equal their value, ignoring case."""

    @classmethod
    def from_str(cls, value: str, source: str = "key") -> LightningEnum:
        """The member named ``value`` (``source="key"``), whose value is ``value`` (``"value"``), or either (``"any"``)."""
        for member in cls:
            if (source in ("key", "any") and member.name.lower() == value.lower()) or (
                source in ("value", "any") and member.value.lower() == value.lower()
            ):
                return member
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(f"{value!r} is not one of {[m.value for m in cls]}.")

    def __eq__(self, other: Any) -> bool:
        other = other.value if isinstance(other, Enum) else str(other)
        return self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())


class GradClipAlgorithmType(LightningEnum):
    """How ``gradient_clip_val`` clips: by the gradients' total norm or by each value."""

    VALUE = "value"
    NORM = "norm"


__all__ = ["GradClipAlgorithmType", "LightningEnum"]
