"""Keep ``lightning_utilities``' ``rank_zero_only.rank`` equal to fulmen's.

Published code decorates functions with ``lightning_utilities.core.rank_zero.rank_zero_only`` and expects
the framework to have set ``.rank`` (Lightning does it at import). Importing that package costs ~45 ms,
so fulmen never imports it: it sets the rank when the package is already loaded, and otherwise right
after the package's first import, through a finder that looks at that one module name only.
"""

from __future__ import annotations

import sys
from typing import Any

_MODULE = "lightning_utilities.core.rank_zero"


def mirror_rank(rank: int) -> None:
    """Set ``lightning_utilities``' ``rank_zero_only.rank`` to ``rank`` when that package is loaded."""
    module = sys.modules.get(_MODULE)
    if module is not None and hasattr(module, "rank_zero_only"):
        module.rank_zero_only.rank = rank


class _SetRankOnImport:
    """A ``sys.meta_path`` finder that answers for ``lightning_utilities.core.rank_zero`` only."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_set_rank(module: Any) -> None:
            exec_module(module)
            from fulmen.utilities import rank_zero_only

            if getattr(module.rank_zero_only, "rank", None) is None:  # a framework that set it first wins
                module.rank_zero_only.rank = rank_zero_only.rank

        loader.exec_module = exec_then_set_rank
        return spec


def install(rank: int) -> None:
    """At ``import fulmen``: mirror ``rank`` now, or once ``lightning_utilities`` is imported."""
    if _MODULE in sys.modules:
        module = sys.modules[_MODULE]
        if getattr(getattr(module, "rank_zero_only", None), "rank", None) is None:
            mirror_rank(rank)
    elif not any(isinstance(f, _SetRankOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SetRankOnImport())
