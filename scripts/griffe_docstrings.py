"""A griffe extension for the API pages: fulmen's docstrings write examples as reST literal blocks
(``Example::`` and an indented block); render those as highlighted code, and reST roles as code."""

from __future__ import annotations

import re
import textwrap

import griffe

_LITERAL = re.compile(
    r"^(?P<indent>[ \t]*)(?P<title>[^\n]*?)::[ \t]*\n(?P<blank>(?:[ \t]*\n)+)"
    r"(?P<body>(?:(?P=indent)[ \t]+[^\n]*\n?|[ \t]*\n)+)",
    re.MULTILINE,
)
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|obj|data|exc):`~?([^`]+)`")
_SHELL = re.compile(r"^\s*(?:\$ |python |fulmen |pip |mkdocs |tensorboard |bash |torchrun )")


def convert(text: str) -> str:
    """reST literal blocks become fenced code blocks; ``:func:`name``` and friends become ``name``."""
    def block(match: re.Match) -> str:
        indent, title = match["indent"], match["title"].rstrip()
        body = textwrap.dedent(match["body"]).strip("\n")
        lang = "bash" if all(_SHELL.match(line) or not line.strip() or line.lstrip().startswith("#")
                             for line in body.splitlines()) else "python"
        heading = f"{indent}**{title}**\n\n" if title.strip() else ""
        fenced = "\n".join(indent + line if line else "" for line in [f"```{lang}", *body.splitlines(), "```"])
        return f"{heading}{fenced}\n\n"

    return _ROLE.sub(r"``\1``", _LITERAL.sub(block, text))


class ReSTExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
