"""fulmen is layered: a module imports only from its own layer or the layers below (function-local imports
included), the imports form no cycle, and Lightning's compatibility paths hold re-exports only.

The imports are read from the source with ``ast``, so a lazy import inside a function counts as much as
one at the top of a file.
"""

import ast
import pathlib

import fulmen

SRC = pathlib.Path(fulmen.__file__).parent

#: The layers, bottom first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors and helpers", ("fulmen.errors", "fulmen._utils", "fulmen._lightning_utils", "fulmen._version",
                            "fulmen._lightning_api")),
    # callbacks/callback.py is the hook interface a module's hooks mirror (it imports nothing); the profilers
    # and strategies below the trainer ask it which hooks a user overrides
    ("module, data module, checkpoint files", ("fulmen.module", "fulmen.datamodule", "fulmen.checkpoint",
                                               "fulmen.saving", "fulmen.summary", "fulmen.callbacks.callback",
                                               "fulmen.generation", "fulmen.plot")),
    ("precision, accelerators, strategies, profilers", ("fulmen.precision", "fulmen.accelerators", "fulmen.strategies",
                                                        "fulmen.profilers")),
    # checkpointing writes and restores the LoopState of trainer.state, with the loader state trainer.data reads
    ("trainer state, data, checkpoints, optimizers, logging", ("fulmen.trainer.state", "fulmen.trainer.data",
                                                               "fulmen.trainer.elastic",
                                                               "fulmen.trainer.checkpointing",
                                                               "fulmen.trainer.optimizers", "fulmen.trainer.logging",
                                                               "fulmen.trainer.legacy", "fulmen.trainer.types",
                                                               "fulmen.trainer.recovery")),
    ("callbacks, loggers", ("fulmen.callbacks", "fulmen.loggers")),
    # resume (which checkpoint to resume from) and signals (preemption saves) are parts of a run, above the
    # checkpoint callbacks they read; the finders' searches run short fits, and the finder callbacks run them
    # Fabric is the trainer's sibling: the same strategies, its loaders' resume from trainer.data, the flags read by
    # the trainer's resolve_hardware
    ("loops, trainer, fabric", ("fulmen.trainer", "fulmen.finders", "fulmen.callbacks.lr_finder",
                                "fulmen.callbacks.batch_size_finder", "fulmen", "fulmen.fabric")),
    ("tuner, cli, compatibility paths", ("fulmen.tuner", "fulmen.cli", "fulmen.__main__", "fulmen.run_command",
                                         "fulmen.demos")),
]

#: Lightning's module paths that are not where fulmen keeps the code: imports and ``__all__`` only.
COMPATIBILITY = ("fulmen.core", "fulmen.plugins", "fulmen.utilities", "fulmen.trainer.states",
                 "fulmen.strategies.parallel", "fulmen.strategies.single_device", "fulmen.callbacks.checkpoint",
                 "fulmen.callbacks.spike", "fulmen.callbacks.rich_model_summary", "fulmen.profilers.base",
                 "fulmen.tuner.lr_finder", "fulmen.loggers.utilities", "fulmen.strategies.launchers", "fulmen.overrides",
                 "fulmen.fabric.strategies", "fulmen.fabric.plugins", "fulmen.fabric.loggers", "fulmen.fabric.utilities",
                 "fulmen.fabric.accelerators")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ["fulmen", *path.relative_to(SRC).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _under(module: str, prefix: str) -> bool:
    # "fulmen" names the package's __init__ only, so that a new module must be given a layer
    return module == prefix or (prefix != "fulmen" and module.startswith(prefix + "."))


def layer_of(module: str) -> int:
    if any(_under(module, c) for c in COMPATIBILITY):
        return len(LAYERS) - 1
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes if _under(module, p)),
               default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best[1]


def imports_of(module: str) -> list[tuple[str, int]]:
    """The fulmen modules ``module`` imports, with the line, wherever the import stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([base] if base else []))
            # `from fulmen.x import y` imports the module fulmen.x.y when there is one, else fulmen.x
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("fulmen") and name != module:
                found.append((name, node.lineno))
    return found


def test_every_module_imports_only_from_its_layer_or_below():
    upward = []
    for module in sorted(MODULES):
        own = layer_of(module)
        for target, line in sorted(set(imports_of(module))):
            if layer_of(target) > own:
                upward.append(f"{MODULES[module].relative_to(SRC.parent)}:{line} {module} ({LAYERS[own][0]}) imports "
                              f"{target} ({LAYERS[layer_of(target)][0]}): move what it needs down to layer "
                              f"{LAYERS[own][0]!r} or below")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_imports_form_no_cycle():
    graph = {m: sorted({t for t, _ in imports_of(m)}) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not cycles, "modules that import each other (one of them must not): " + "; ".join(map(str, cycles))


def test_compatibility_paths_hold_imports_and_all_only():
    code = []
    for module, path in sorted(MODULES.items()):
        if not any(_under(module, c) for c in COMPATIBILITY):
            continue
        for i, node in enumerate(ast.parse(path.read_text()).body):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and (node.targets[0].id == "__all__" or isinstance(node.value, (ast.Name, ast.Attribute)))):
                continue  # __all__, or an alias of an imported name
            code.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {type(node).__name__}")
    assert not code, ("compatibility paths hold code; move it where fulmen keeps it and re-export it:\n"
                      + "\n".join(code))


def test_the_reader_sees_function_local_imports_and_every_module_has_one_layer():
    # saving imports the checkpoint IO only inside its functions
    top = {n.module for n in ast.parse(MODULES["fulmen.saving"].read_text()).body if isinstance(n, ast.ImportFrom)}
    assert "fulmen.checkpoint" not in top and "fulmen.checkpoint" in {t for t, _ in imports_of("fulmen.saving")}
    prefixes = [p for _, ps in LAYERS for p in ps]
    assert len(prefixes) == len(set(prefixes)), "a prefix stands in two layers"
    assert layer_of("fulmen.trainer.loops") > layer_of("fulmen.trainer.data") > layer_of("fulmen.module")
    try:
        layer_of("fulmen.not_a_module")
    except AssertionError as err:
        assert "add it to LAYERS" in str(err)
    else:
        raise AssertionError("a module outside the table got a layer")
