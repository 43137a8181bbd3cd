"""Make scripts/docs_hooks.py (the MkDocs hooks that generate parts of the docs) importable as ``docs_hooks``,
so the tests check the same public names and tables the site shows."""

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "scripts" / "docs_hooks.py"
if "docs_hooks" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("docs_hooks", _path)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["docs_hooks"] = _module
    _spec.loader.exec_module(_module)
