"""MkDocs hooks: fill the parts of the docs that are generated from the repository.

A page asks for generated content with a line ``<!-- generated: KIND ARGUMENT -->``; before the page is
converted, the line is replaced by Markdown computed from the same sources the tests use, so a table in the
docs cannot drift from what the tests assert:

- ``api MODULE``: one mkdocstrings entry per public name of ``MODULE`` (its ``__all__``); a core class
  (``CLASS_PAGES``) gets a link to its own page instead.
- ``class PATH``: a core class's own page, with the members it inherits.
- ``hook-order STAGE``: the order the Trainer calls hooks in ``fit``/``validate``/``test``/``predict``, from the
  expected sequences in ``tests/trainer/test_hook_order.py``.
- ``lightning-api``: every public name of Lightning and where fulmen has it, from ``fulmen._lightning_api``;
  ``lightning-api fabric`` the same for Lightning Fabric.
- ``overhead-table PATH``: the figures of a ``benchmarks/overhead_by_size.py`` run, from the JSON it wrote.
- ``overhead-summary``: the same run's ratios in one sentence, for the pages that quote them.
- ``sharded-table``: the figures of a ``benchmarks/sharded.py --json`` run, from the JSON it wrote.
- ``version``: the version the site was built from (also in every page's footer, set by :func:`on_config`).
- ``extras``: the extras of ``pyproject.toml``, what each is for and what it installs.
- ``output-table``: the Markdown table that the page's last ``Output`` block above holds (a program's checked
  output, shown as a table).
- ``console``: what a default run prints, from a real run (see ``scripts/docs_figures.py``).

The pictures (``assets/figures/NAME``) are made by ``scripts/docs_figures.py`` from real runs and the
benchmarks' output files, and added to the site by :func:`on_files`.

The tests import :func:`public_names` from here, so the docstring test and the API pages walk the same names.
"""

from __future__ import annotations

import ast
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
    "fulmen.errors", "fulmen.utilities", "fulmen.accelerators", "fulmen.fabric",
)

# the core classes, each on its own page (as Lightning's and Keras's references have them): object path -> page
CLASS_PAGES = {
    "fulmen.trainer.trainer.Trainer": "trainer",
    "fulmen.module.LightningModule": "lightning-module",
    "fulmen.datamodule.LightningDataModule": "datamodule",
    "fulmen.callbacks.callback.Callback": "callback",
}

_MARKER = re.compile(r"^<!-- generated: (\S+)(?: (.*?))? -->$", re.MULTILINE)


def public_names(module_name: str) -> list[str]:
    """``__all__`` of the module, or, where it has none, the public names defined in it (not imported)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module_name]


def is_data(obj: object) -> bool:
    """A constant or type alias: documented by a string right after its assignment, not by ``__doc__``."""
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def public_docstring(module_name: str, name: str) -> str | None:
    """The docstring readers see for ``module_name.name``: ``__doc__`` for classes and functions, the string
    literal after the assignment (PEP 257's attribute docstring, what mkdocstrings shows) for data."""
    obj = getattr(importlib.import_module(module_name), name)
    if not is_data(obj):
        return inspect.getdoc(obj)
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    body = tree.body
    for statement, following in zip(body, body[1:]):
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            return inspect.cleandoc(following.value.value)
    return None


def _where(module_name: str, name: str) -> str:
    # document an object where it is defined: the packages re-export names lazily, which static analysis
    # (what mkdocstrings reads) cannot follow
    obj = getattr(importlib.import_module(module_name), name)
    return f"{module_name}.{name}" if is_data(obj) else f"{obj.__module__}.{obj.__qualname__}"


def _home(obj_path: str) -> str:
    """The API page that documents ``obj_path``: its own page for a core class, else the first public module
    exporting it."""
    if obj_path in CLASS_PAGES:
        return CLASS_PAGES[obj_path]
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
        elif where in CLASS_PAGES:
            parts.append(f"## {name}\n\n`{module_name}.{name}` has its own page: [{name}]({home}.md).\n")
        else:  # one entry per object in the whole site; the others link to it
            parts.append(f"## {name}\n\nThe same object as [`fulmen.{'' if home == 'fulmen' else home + '.'}{name}`]"
                         f"({home}.md#{where}).\n")
    return "\n".join(parts)


def _class_page(obj_path: str) -> str:
    """One core class on its own page: signature, parameters, a summary of its members, and the members it
    inherits from fulmen's own mixins (``save_hyperparameters``, the data hooks...). Bases outside the
    documented sources (``torch.nn.Module``) are not loaded, so their members stay out."""
    assert obj_path in CLASS_PAGES, f"{obj_path} has no page in docs_hooks.CLASS_PAGES"
    return (f"::: {obj_path}\n    options:\n      inherited_members: true\n      summary: true\n"
            f"      heading_level: 1\n")


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


def _lightning_api(which: str | None) -> str:
    """Every public name of Lightning (``lightning-api``) or of Lightning Fabric (``lightning-api fabric``) and
    where fulmen has it, from ``fulmen._lightning_api`` (which ``tests/test_lightning_api.py`` checks against
    fulmen itself)."""
    from fulmen import _lightning_api as api

    if which == "fabric":
        return _fabric_api(api)
    rows = list(api.rows())
    supported: dict[str, list[str]] = {}
    left_out: list[tuple[str, str]] = []
    for module, names in api.LIGHTNING_API.items():
        whole_module = api.omission(module)
        if whole_module is not None and not any(f"{module}:{n}" in api.OMITTED for n in names):
            left_out.append((f"`lightning.pytorch.{module}` (the module)", whole_module))
            continue
        for name in names:
            reason = api.omission(module, name)
            if reason is None:
                supported.setdefault(module, []).append(name)
            else:
                left_out.append((f"`{'.'.join(p for p in ('lightning.pytorch', module, name) if p)}`", reason))
    count = sum(1 for r in rows if r["fulmen"])
    out = [
        f"Of the {len(rows)} public names of Lightning {api.LIGHTNING_VERSION} (walked from its installed package), "
        f"{count} import from the same path under `fulmen` (`lightning.pytorch.X.Y` is `fulmen.X.Y`), and "
        f"{len(rows) - count} are left out. The test suite checks both lists against fulmen itself.",
    ]
    return _api_tables(out, left_out, supported, count, api.fulmen_path)


def _fabric_api(api) -> str:
    """The Fabric half: ``lightning.fabric.X.Y`` is ``fulmen.fabric.X.Y``, or the reason it is left out."""
    rows = list(api.fabric_rows())
    supported: dict[str, list[str]] = {}
    left_out: list[tuple[str, str]] = []
    for module, names in api.FABRIC_API.items():
        for name in names:
            reason = api.FABRIC_OMITTED.get(f"{module}:{name}")
            if reason is None:
                supported.setdefault(module, []).append(name)
            else:
                left_out.append((f"`{'.'.join(p for p in ('lightning.fabric', module, name) if p)}`", reason))
    count = sum(1 for r in rows if r["fulmen"])
    out = [
        f"Of the {len(rows)} Lightning Fabric names that `fulmen._lightning_api` lists, {count} import from the "
        f"same path under `fulmen.fabric` (`lightning.fabric.X.Y` is `fulmen.fabric.X.Y`), and {len(rows) - count} "
        "are left out. The same test checks both lists.",
    ]
    return _api_tables(out, left_out, supported, count,
                       lambda module: api.fulmen_path(".".join(p for p in ("fabric", module) if p)))


def _api_tables(out: list[str], left_out: list[tuple[str, str]], supported: dict[str, list[str]], count: int,
                fulmen_path) -> str:
    out += [
        "",
        "| Lightning | left out: what to write instead |",
        "|---|---|",
    ]
    out += [f"| {path} | {reason} |" for path, reason in left_out]
    out += ["", f'??? note "The {count} supported names, by module"', "",
            "    | module | names |", "    |---|---|"]
    out += [f"    | `{fulmen_path(module)}` | {', '.join(f'`{n}`' for n in names)} |"
            for module, names in supported.items()]
    return "\n".join(out) + "\n"


# what each extra of pyproject.toml is for; the packages themselves are read from pyproject.toml
EXTRA_PURPOSES = {
    "cli": "`LightningCLI` and `fulmen fit --config ...`",
    "tensorboard": "`TensorBoardLogger` (and the default logger becomes TensorBoard)",
    "mlflow": "`MLFlowLogger`",
    "wandb": "`WandbLogger`",
    "rich": "`RichProgressBar`, `RichModelSummary`",
    "plot": "`fulmen plot`, `finder.plot()`",
    "metrics": "torchmetrics' `Metric` objects in `self.log`",
    "onnx": "`LightningModule.to_onnx`",
    "vision": "torchvision, for your own image pipelines (pick the release that matches your torch)",
    "http": "checkpoints and logs at `https://` URLs",
    "deepspeed": "`strategy=\"deepspeed_stage_2\"` and the other ZeRO strategies (Linux, a compiler)",
    "examples": "the scripts in `examples/`",
    "docs": "building these docs (`mkdocs serve`)",
    "all": "every extra above except `vision`, `docs` and `test`",
    "test": "running the test suite",
}


def extras() -> dict[str, list[str]]:
    """The optional dependencies of pyproject.toml, by extra."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser under its PyPI name (pip itself vendors it)
        import tomli as tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _extras(_: str | None) -> str:
    lines = ["| extra | what it is for | installs |", "|---|---|---|"]
    for name, packages in extras().items():
        if name not in EXTRA_PURPOSES:
            raise ValueError(f"pyproject.toml's extra {name!r} has no line in docs_hooks.EXTRA_PURPOSES")
        shown = ", ".join(f"`{p}`" for p in packages)
        lines.append(f"| `fulmen[{name}]` | {EXTRA_PURPOSES[name]} | {shown} |")
    return "\n".join(lines) + "\n"


def _sharded_table(_: str | None) -> str:
    """The figures of a ``benchmarks/sharded.py --json`` run (docs/assets/sharded_memory.json)."""
    results = json.loads((ROOT / "docs" / "assets" / "sharded_memory.json").read_text())
    rows = results["rows"]
    ref = next(r for r in rows if r[0]["strategy"] == "ddp")

    def most(reports, key, phase=None):
        return max(r["peaks_mb"][phase] if phase else r[key] for r in reports)

    lines = ["| strategy | start-up base, MB | training peak, MB | peak / DDP's | parameters + optimizer state held, MB "
             "| held / DDP's | step, s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for reports in rows:
        lines.append(
            f"| `{reports[0]['strategy']}` | {most(reports, 'base_mb'):.0f} | {most(reports, None, 'train'):.0f} | "
            f"{most(reports, None, 'train') / most(ref, None, 'train'):.2f} | {most(reports, 'held') / 2**20:.0f} | "
            f"{most(reports, 'held') / most(ref, 'held'):.2f} | {most(reports, 'step_s'):.2f} |")
    hidden, blocks = results["shape"]
    lines += ["", f"{results['params'] / 1e6:.1f}M parameters ({blocks} blocks of width {hidden}), "
                  f"{results['processes']} processes on the {results['accelerator'].upper()}, batch {results['batch']} "
                  f"per process, {results['steps']} steps, Adam; the larger of the two processes' figures. Measured on "
                  f"{results['machine']}."]
    return "\n".join(lines) + "\n"


def version() -> str:
    """fulmen's version, from the one place that holds it."""
    from fulmen._version import __version__

    return __version__


def _version(_: str | None) -> str:
    return f"These pages document fulmen **{version()}**, the version of the source they were built from.\n"


def _figures():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "scripts" / "docs_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _console(_: str | None) -> str:
    text = (_figures().make_all() / "console.txt").read_text()
    return '```text title="Console"\n' + text + "```\n"


def overhead_summary() -> dict[str, float]:
    """The range of each variant's ratio to the hand-written loop over the model sizes of the benchmark's JSON."""
    results = json.loads((ROOT / "docs" / "assets" / "overhead_by_size.json").read_text())
    out = {}
    for variant in results["rows"][0]["ratio"]:
        values = [row["ratio"][variant] for row in results["rows"]]
        out[f"{variant}_min"], out[f"{variant}_max"] = min(values), max(values)
    return out


def _overhead_summary(_: str | None) -> str:
    s = overhead_summary()
    return (f"fulmen takes {s['fulmen_min']:.2f}-{s['fulmen_max']:.2f}x the time of the hand-written loop, "
            f"PyTorch Lightning {s['lightning_min']:.1f}-{s['lightning_max']:.1f}x")


GENERATORS = {"lightning-api": _lightning_api, "api": _api, "class": _class_page, "hook-order": _hook_order, "overhead-table": _overhead_table,
              "overhead-summary": _overhead_summary, "console": _console,
              "extras": _extras, "sharded-table": _sharded_table, "version": _version}


_OUTPUT_BLOCK = re.compile(r'^(?P<indent>[ \t]*)```text title="Output"\n(?P<body>.*?)^(?P=indent)```$', re.M | re.S)


def _output_table(markdown: str, before: int) -> str:
    """The last ``Output`` block above ``before``, which printed a Markdown table, as that table: what the tests
    checked the program prints is what the page shows."""
    blocks = [m for m in _OUTPUT_BLOCK.finditer(markdown) if m.end() <= before]
    if not blocks:
        raise ValueError("<!-- generated: output-table --> needs an Output block above it")
    body = blocks[-1]
    lines = [line[len(body["indent"]):] for line in body["body"].splitlines()]
    if not all(line.startswith("|") for line in lines if line.strip()):
        raise ValueError("the Output block above <!-- generated: output-table --> is not a Markdown table")
    return "\n".join(lines) + "\n"


def expand(markdown: str) -> str:
    def one(match: re.Match) -> str:
        kind, argument = match[1], match[2]
        if kind == "output-table":
            return _output_table(markdown, match.start())
        if kind not in GENERATORS:
            raise ValueError(f"unknown generated block {kind!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[kind](argument)

    return _MARKER.sub(one, markdown)


def on_config(config):  # MkDocs hook: the version in every page's footer
    config["copyright"] = f"fulmen {version()}"
    return config


def on_page_markdown(markdown, page, config, files):  # MkDocs hook
    return expand(markdown)


def on_files(files, config):  # MkDocs hook: the generated pictures become part of the site
    from mkdocs.structure.files import File

    figures = _figures()
    folder = figures.make_all()
    for name in figures.FIGURES:
        if not name.endswith(".txt"):
            files.append(File.generated(config, f"assets/figures/{name}", abs_src_path=str(folder / name)))
    return files
