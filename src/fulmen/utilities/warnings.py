"""Warning categories: :class:`PossibleUserWarning` marks warnings about choices that may be intended.

Example::

    import warnings
    from fulmen.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)
"""

from __future__ import annotations

import warnings as _warnings


class PossibleUserWarning(UserWarning):
    """A warning about something that is often a mistake but may be what you want (e.g. few workers)."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Silence every :class:`PossibleUserWarning` (from ``module`` only, when given)."""
    _warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


__all__ = ["PossibleUserWarning", "disable_possible_user_warnings"]
