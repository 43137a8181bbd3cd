"""MkDocs hooks: fill the parts of the docs that are generated from the repository.

A page asks for generated content with a line ``<!-- generated: KIND ARGUMENT -->``; before the page is
converted, the line is replaced by Markdown computed from the same sources the tests use, so a table in the
docs cannot drift from what the tests assert:

- ``api MODULE``: one mkdocstrings entry per public name of ``MODULE`` (its ``__all__``).
- ``hook-order STAGE``: the order the Trainer calls hooks in ``fit``/``validate``/``test``/``predict``, from the
  expected sequences in ``tests/trainer/test_hook_order.py``.
- ``overhead-table PATH``: the figures of a ``benchmarks/overhead_by_size.py`` run, from the JSON it wrote.

The tests import :func:`public_names` from here, so the docstring test and the API pages walk the same names.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the modules whose public names the API reference documents and the docstring test checks
PUBLIC_MODULES = (
    "fulmen", "fulmen.callbacks", "fulmen.loggers", "fulmen.strategies", "fulmen.generation", "fulmen.cli",
    "fulmen.errors", "fulmen.utilities",
)

_MARKER = re.compile(r"^<!-- generated: (\S+)(?: (.*?))? -->$", re.MULTILINE)


def public_names(module_name: str) -> list[str]:
    """``__all__`` of the module, or, where it has none, the public names defined in it (not imported)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module_name]


def _where(module_name: str, name: str) -> str:
    # document an object where it is defined: the packages re-export names lazily, which static analysis
    # (what mkdocstrings reads) cannot follow
    obj = getattr(importlib.import_module(module_name), name)
    return f"{obj.__module__}.{obj.__qualname__}" if hasattr(obj, "__qualname__") else f"{module_name}.{name}"


def _home(obj_path: str) -> str:
    """The API page that documents ``obj_path``: the first public module exporting it."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if any(not inspect.ismodule(getattr(module, n)) and _where(module_name, n) == obj_path
               for n in public_names(module_name)):
            return module_name.split(".")[-1]
    raise LookupError(obj_path)


def _api(module_name: str) -> str:
    module = importlib.import_module(module_name)
    page = module_name.split(".")[-1]
    parts = []
    for name in public_names(module_name):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            target = obj.__name__.split(".")[-1]
            parts.append(f"## {name}\n\nThe `{obj.__name__}` module: see [{obj.__name__}]({target}.md).\n")
            continue
        where = _where(module_name, name)
        home = _home(where)
        if home == page:
            parts.append(f"::: {where}\n")
        else:  # one entry per object in the whole site; the others link to it
            parts.append(f"## {name}\n\nThe same object as [`fulmen.{'' if home == 'fulmen' else home + '.'}{name}`]"
                         f"({home}.md#{where}).\n")
    return "\n".join(parts)


def _load_test_module(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hook_order_rows(stage: str) -> list[tuple[str, str]]:
    """(hook, who is called) rows for ``stage``; a callback hook directly followed by the module's same hook
    is one row."""
    calls = _load_test_module("tests/trainer/test_hook_order.py").EXPECTED[stage]
    rows: list[tuple[str, str]] = []
    i = 0
    while i < len(calls):
        call = calls[i]
        if call.startswith("Callback."):
            name = call.removeprefix("Callback.")
            if i + 1 < len(calls) and calls[i + 1] == name:
                rows.append((name, "callbacks, then LightningModule"))
                i += 2
                continue
            rows.append((name, "callbacks"))
        else:
            rows.append((call, "LightningModule"))
        i += 1
    return rows


def _hook_order(stage: str) -> str:
    lines = ["| # | hook | called on |", "|---|---|---|"]
    lines += [f"| {n} | `{hook}` | {who} |" for n, (hook, who) in enumerate(hook_order_rows(stage), 1)]
    return "\n".join(lines) + "\n"


def _overhead_table(path: str) -> str:
    """The table of a benchmarks/overhead_by_size.py run, from the JSON it wrote."""
    with open(ROOT / path) as f:
        results = json.load(f)
    variants = list(results["rows"][0]["ratio"])
    lines = ["| hidden width | parameters | raw loop, µs/step | " + " | ".join(f"{v} / raw" for v in variants) + " |",
             "|---:|---:|---:|" + "---:|" * len(variants)]
    for row in results["rows"]:
        lines.append(f"| {row['hidden']} | {row['params']:,} | {row['raw_us_per_step']:.0f} | "
                     + " | ".join(f"{row['ratio'][v]:.2f}x" for v in variants) + " |")
    lines.append("")
    lines.append(f"Measured on {results['machine']}; median of {results['rounds']} runs per variant, "
                 f"batch size {results['batch_size']}.")
    return "\n".join(lines) + "\n"


GENERATORS = {"api": _api, "hook-order": _hook_order, "overhead-table": _overhead_table}


def expand(markdown: str) -> str:
    def one(match: re.Match) -> str:
        kind, argument = match[1], match[2]
        if kind not in GENERATORS:
            raise ValueError(f"unknown generated block {kind!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[kind](argument)

    return _MARKER.sub(one, markdown)


def on_page_markdown(markdown, page, config, files):  # MkDocs hook
    return expand(markdown)
