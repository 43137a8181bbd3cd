"""Every public name has a docstring with an example, and the API reference lists every one of them."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import docs_hooks
import pytest

ROOT = Path(__file__).resolve().parents[2]

# an "Example::"/"Examples:" heading followed by an indented line of code, or a doctest prompt
_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Examples?::?[ \t]*\n(?:[ \t]*\n)*(?P=indent)[ \t]+\S|^\s*>>> ", re.MULTILINE)


def has_example(doc: str | None) -> bool:
    return bool(doc) and _EXAMPLE.search(doc) is not None


@pytest.mark.parametrize("module_name", docs_hooks.PUBLIC_MODULES)
def test_every_public_name_has_a_docstring_with_an_example(module_name):
    module = importlib.import_module(module_name)
    names = docs_hooks.public_names(module_name)
    assert names, f"{module_name} exports nothing"
    missing = [name for name in names if not has_example(docs_hooks.public_docstring(module_name, name))]
    assert not missing, f"{module_name}: these public names have no docstring example (add an Example:: block): {missing}"


def test_constants_are_documented_by_the_string_after_their_assignment(tmp_path, monkeypatch):
    (tmp_path / "docs_sample_constants.py").write_text(
        'LIMIT = 3\n"""How many.\n\nExample::\n\n    LIMIT + 1\n"""\n\nNAMES: dict = {}\nOTHER = 1\n"""Other."""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert has_example(docs_hooks.public_docstring("docs_sample_constants", "LIMIT"))
    assert docs_hooks.public_docstring("docs_sample_constants", "NAMES") is None  # not dict's own __doc__
    assert docs_hooks.public_docstring("docs_sample_constants", "OTHER") == "Other."


def test_has_example_tells_examples_from_prose():
    assert has_example("Do a thing.\n\nExample::\n\n    thing()\n")
    assert has_example("Do a thing.\n\n>>> thing()\n1\n")
    assert has_example("Do a thing.\n\n    Examples:\n        thing()\n")
    assert not has_example("Do a thing, for example with thing().")
    assert not has_example("Example::\n\nno code follows\n")
    assert not has_example(None)


def test_the_api_reference_has_a_page_for_every_public_module():
    pages = {p.stem for p in (ROOT / "docs" / "api").glob("*.md")}
    for module_name in docs_hooks.PUBLIC_MODULES:
        page = module_name.split(".")[-1]
        assert page in pages, f"docs/api/{page}.md is missing"
        assert f"<!-- generated: api {module_name} -->" in (ROOT / "docs" / "api" / f"{page}.md").read_text()


def test_the_faq_explains_every_error_class():
    import fulmen.checkpoint
    import fulmen.errors

    faq = (ROOT / "docs" / "faq.md").read_text()
    classes = [name for name in docs_hooks.public_names("fulmen.errors")
               if isinstance(getattr(fulmen.errors, name), type) and issubclass(getattr(fulmen.errors, name), BaseException)]
    classes.append(fulmen.checkpoint.CheckpointNotFoundError.__name__)
    headings = set(re.findall(r"^### (.+)$", faq, re.MULTILINE))
    missing = [name for name in classes if not any(f"`{name}`" in heading for heading in headings)]
    assert not missing, f"docs/faq.md has no section (### `Name`) for: {missing}"


_ARGS_SECTION = re.compile(r"^(?P<indent>[ \t]*)Args:[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+\S[^\n]*\n|[ \t]*\n(?=(?P=indent)[ \t]+\S))*)",
                           re.MULTILINE)


def documented_arguments(doc: str | None) -> set[str]:
    """The names listed in a Google-style ``Args:`` section (what mkdocstrings turns into the parameter table)."""
    names: set[str] = set()
    for match in _ARGS_SECTION.finditer(doc or ""):
        entry_indent = min(len(line) - len(line.lstrip()) for line in match["body"].splitlines() if line.strip())
        for line in match["body"].splitlines():
            if line.strip() and len(line) - len(line.lstrip()) == entry_indent:
                names.add(re.split(r"[\s(:]", line.strip().lstrip("*"), maxsplit=1)[0])
    return names


def test_documented_arguments_reads_google_args_sections():
    doc = "Do.\n\n    Args:\n        a: one.\n            more about a: still a.\n        b (int): two.\n\n    Example::\n\n        x\n"
    assert documented_arguments(inspect.cleandoc(doc)) == {"a", "b"}
    assert documented_arguments("No section. a: b") == set()


def _public_classes():
    import enum

    seen = {}
    for module_name in docs_hooks.PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in docs_hooks.public_names(module_name):
            obj = getattr(module, name)
            if inspect.isclass(obj) and not issubclass(obj, (BaseException, enum.Enum)):
                seen.setdefault(obj, f"{module_name}.{name}")
    return seen


def test_every_public_class_documents_each_constructor_argument():
    """The API pages show each class's signature and a parameter table made from its ``Args:`` section (the
    class's docstring, or ``__init__``'s): every argument of the constructor needs a line there."""
    missing = {}
    for cls, shown in _public_classes().items():
        try:
            parameters = inspect.signature(cls).parameters.values()
        except (TypeError, ValueError):
            continue
        named = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        documented = documented_arguments(inspect.getdoc(cls))
        if "__init__" in vars(cls):
            documented |= documented_arguments(inspect.getdoc(cls.__init__))
        if gaps := [n for n in named if n not in documented]:
            missing[shown] = gaps
    assert not missing, f"constructor arguments without an Args: entry: {missing}"
