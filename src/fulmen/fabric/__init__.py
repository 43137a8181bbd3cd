"""``fulmen.fabric``: Lightning Fabric's API for hand-written loops, on the Trainer's own strategies.

``import fulmen.fabric as L`` (or ``from fulmen.fabric import Fabric``) replaces ``lightning.fabric``.

Example::

    from fulmen.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    model, optimizer = fabric.setup(model, optimizer)
"""

from fulmen.fabric.fabric import Fabric, seed_everything
from fulmen.fabric.wrappers import _FabricDataLoader, _FabricModule, _FabricOptimizer, is_wrapped

__all__ = ["Fabric", "is_wrapped", "seed_everything"]
