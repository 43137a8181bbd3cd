"""Warning categories: :class:`PossibleUserWarning` marks warnings about choices that may be intended.

Example::

    import warnings
    from fulmen.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)
"""

from fulmen._lightning_utils import PossibleUserWarning, disable_possible_user_warnings

__all__ = ["PossibleUserWarning", "disable_possible_user_warnings"]
