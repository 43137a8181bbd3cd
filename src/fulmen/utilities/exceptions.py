"""Lightning's path for its exception: ``MisconfigurationException`` (fulmen's lives in :mod:`fulmen.errors`).

Example::

    from fulmen.utilities.exceptions import MisconfigurationException

    try:
        trainer.fit(model)
    except MisconfigurationException as err:
        print("fix the set-up:", err)
"""

from fulmen.errors import MisconfigurationException

__all__ = ["MisconfigurationException"]
