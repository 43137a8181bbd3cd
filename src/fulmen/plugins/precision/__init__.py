"""Lightning's path for precision plugins; they live in :mod:`fulmen.precision`.

Example::

    from fulmen.plugins.precision import MixedPrecision

    trainer = fulmen.Trainer(plugins=[MixedPrecision("bf16-mixed", "cpu")])
"""

from fulmen.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision"]
