"""Lightning's path for its exceptions: ``MisconfigurationException`` and ``SIGTERMException`` (fulmen's live in
:mod:`fulmen.errors`).

Example::

    from fulmen.utilities.exceptions import MisconfigurationException

    try:
        trainer.fit(model)
    except MisconfigurationException as err:
        print("fix the set-up:", err)
"""

from fulmen.errors import MisconfigurationException, SIGTERMException

__all__ = ["MisconfigurationException", "SIGTERMException"]
