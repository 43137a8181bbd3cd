"""Every Python code block in docs/ runs, page by page, so the docs cannot rot.

The python blocks of one page run in order in one namespace (a page reads like one script), inside a fresh
temporary directory. Conventions a page can use (see docs/writing-docs.md):

- ``<!-- docs-test: skip REASON -->`` on the line before a block: not run (needs a GPU, several processes...).
- ``<!-- docs-test: write PATH -->`` before any block (YAML, a module...): its content is written to PATH in
  the page's directory before the python blocks after it run. That directory is importable during the page,
  as the current directory is for ``python script.py``.
- A ``text`` block titled ``Output`` right after a python block is what that block must print; ``...`` stands
  for any text (within a line, or a whole line). The page's temporary directory is written as ``.`` in what a
  block prints (``/tmp/pytest-.../lightning_logs/version_0`` reads ``lightning_logs/version_0``), so outputs
  can show paths as readers see them.
- ``<!-- docs-test: approx REL -->`` before a python block: the numbers with a decimal point in its Output
  match the printed ones within a relative tolerance REL (``approx 0.05``: 5%), for results that vary with
  the platform's floating point or thread count; integers and text still match exactly.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[2]
DOCS = REPOSITORY / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>\w+)\s*(?P<arg>.*?)\s*-->\s*$")
_OUTPUT_TITLE = re.compile(r"""title=["']Output["']""")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the first code line in the page
    info: str = ""
    directives: list[tuple[str, str]] = field(default_factory=list)
    output: str | None = None  # expected stdout, from the Output block that follows


def parse(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, with their directives and expected outputs attached."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        fence = _FENCE.match(lines[i])
        if directive:
            pending.append((directive["kind"], directive["arg"]))
            i += 1
            continue
        if not fence:
            if lines[i].strip():
                pending = []  # a directive applies to the block right after it only
            i += 1
            continue
        indent, marker, info = fence["indent"], fence["fence"], fence["info"].strip()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(marker) and lines[j].strip().strip(marker[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: code block never closed")
        lang = re.split(r"[\s{]", info.lstrip("{."), maxsplit=1)[0].lower() if info else ""
        block = Block(lang=lang, code="\n".join(body) + "\n", line=i + 2, info=info, directives=pending)
        previous = blocks[-1] if blocks else None
        if (lang == "text" and _OUTPUT_TITLE.search(info) and previous is not None and previous.lang in ("python", "py")
                and previous.output is None and not pending and _only_blank_between(lines, previous, i)):
            previous.output = block.code
        else:
            blocks.append(block)
        pending = []
        i = j + 1
    return blocks


def _only_blank_between(lines: list[str], previous: Block, fence_index: int) -> bool:
    end_of_previous = previous.line - 1 + previous.code.count("\n")  # index of its closing fence
    return all(not line.strip() for line in lines[end_of_previous + 1:fence_index])


_DECIMAL = r"[-+]?\d+\.\d+(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+"  # a number with a decimal point or an exponent
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"


def output_matches(expected: str, actual: str, rel: float | None = None) -> bool:
    """``expected`` equals ``actual``, where a line ``...`` stands for any number of lines (none included) and
    ``...`` within a line for any text; trailing spaces and blank lines at either end are ignored. With ``rel``,
    each decimal number of ``expected`` matches a number of ``actual`` within that relative tolerance."""
    def tidy(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    def literal(text: str) -> str:
        if rel is None:
            return re.escape(text)
        out, at = "", 0
        for number in re.finditer(_DECIMAL, text):
            out += re.escape(text[at:number.start()]) + f"({_NUMBER})"
            wanted.append(float(number.group()))
            at = number.end()
        return out + re.escape(text[at:])

    wanted: list[float] = []
    pattern = ""
    for line in tidy(expected).split("\n"):
        if line == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += "".join(".*?" if part == "..." else literal(part) for part in re.split(r"(\.\.\.)", line))
            pattern += r"\n"
    match = re.fullmatch(pattern, tidy(actual) + "\n", flags=re.DOTALL)
    if match is None:
        return False
    return all(abs(float(got) - want) <= rel * abs(want) for got, want in zip(match.groups(), wanted))


def normalise_paths(text: str, workdir: Path) -> str:
    """The page's directory as a reader's current directory: ``<workdir>/x`` becomes ``x``, ``<workdir>`` ``.``."""
    for root in {str(workdir), os.path.realpath(workdir)}:
        text = text.replace(root + os.sep, "").replace(root, ".")
    return text


def run_page(path: Path, workdir: Path) -> int:
    """Run the python blocks of one page in order in one namespace; return how many ran."""
    blocks = parse(path.read_text())
    module = types.ModuleType("docs_page_" + re.sub(r"\W", "_", path.stem))
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # classes defined on the page can be pickled and found by name
    sys.path.insert(0, str(workdir))
    modules_before = set(sys.modules)
    ran = 0
    try:
        for block in blocks:
            kinds = dict(block.directives)
            if "write" in kinds:
                target = workdir / kinds["write"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.code)
            if block.lang not in ("python", "py") or "skip" in kinds or "write" in kinds:
                continue
            source = "\n" * (block.line - 1) + block.code  # tracebacks point at the page's own lines
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                try:
                    exec(compile(source, str(path), "exec"), module.__dict__)
                except BaseException as err:
                    raise AssertionError(f"{path.name}, block at line {block.line} failed: {err!r}") from err
            sys.stdout.write(buffer.getvalue())
            printed = normalise_paths(buffer.getvalue(), workdir)
            rel = float(kinds["approx"]) if "approx" in kinds else None
            if block.output is not None and not output_matches(block.output, printed, rel):
                raise AssertionError(
                    f"{path.name}, block at line {block.line}: printed\n{printed}\n"
                    f"but the page shows\n{block.output}"
                )
            ran += 1
    finally:
        sys.modules.pop(module.__name__, None)
        sys.path.remove(str(workdir))
        for name in set(sys.modules) - modules_before:  # a module the page wrote must not leak to other pages
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(workdir)):
                del sys.modules[name]
    return ran


def _repository_entries() -> dict[str, int]:
    """Every visible entry of the repository root, of docs/ and of any lightning_logs/ or checkpoints/ there,
    with its modification time: a file or run folder written into one of them adds or changes an entry. Whatever
    was there before (the demo's lightning_logs/, a built site/) may stay: the tests never need a clean root."""
    entries = {}
    for folder in (REPOSITORY, DOCS, REPOSITORY / "lightning_logs", REPOSITORY / "checkpoints", DOCS / "lightning_logs"):
        if folder.is_dir():
            for entry in folder.iterdir():
                if not entry.name.startswith("."):  # .pytest_cache, .venv: pytest's and pip's, not the page's
                    entries[str(entry)] = entry.stat().st_mtime_ns
    return entries


@pytest.mark.parametrize("page", PAGES)
def test_page_code_blocks_run(page, tmp_path):
    torch.manual_seed(0)
    before = _repository_entries()
    run_page(DOCS / page, tmp_path)
    # blocks write into their own directory (the current one), never into the repository
    assert _repository_entries() == before
    if (tmp_path / "lightning_logs").exists():  # a Trainer with default paths put its runs here
        assert any((tmp_path / "lightning_logs").iterdir())


def test_a_page_writes_its_runs_into_its_own_directory(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(FIT_PAGE)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # as the suite's conftest does for every test
    before = _repository_entries()
    assert run_page(page, work) == 1
    assert _repository_entries() == before
    assert [p.name for p in (work / "lightning_logs" / "version_0" / "checkpoints").iterdir()] == ["epoch=0-step=2.ckpt"]


# --- the collector itself ---------------------------------------------------------------------------------

FIT_PAGE = '''
```python
import fulmen as pl
from fulmen.demos.boring_classes import BoringModel

pl.Trainer(max_steps=2, limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False,
           logger=pl.loggers.CSVLogger(".")).fit(BoringModel())
```
'''

SAMPLE = '''
Intro.

```python
x = 2
print(x * 21)
```

```text title="Output"
42
```

<!-- docs-test: write conf/a.yaml -->
```yaml
lr: 0.5
```

<!-- docs-test: skip needs a GPU -->
```python
raise RuntimeError("not run")
```

!!! note
    ```python
    print(open("conf/a.yaml").read().strip(), x)
    ```

    ```text title="Output"
    lr: ... 2
    ```
'''


def test_parse_finds_blocks_directives_and_outputs():
    blocks = parse(SAMPLE)
    assert [b.lang for b in blocks] == ["python", "yaml", "python", "python"]
    assert blocks[0].output == "42\n" and blocks[0].line == 5
    assert blocks[1].directives == [("write", "conf/a.yaml")]
    assert blocks[2].directives == [("skip", "needs a GPU")]
    assert blocks[3].code == 'print(open("conf/a.yaml").read().strip(), x)\n' and blocks[3].output == "lr: ... 2\n"


def test_run_page_writes_files_skips_and_checks_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(SAMPLE)
    assert run_page(page, tmp_path) == 2
    page.write_text(SAMPLE.replace("42\n```", "43\n```"))
    with pytest.raises(AssertionError, match="but the page shows"):
        run_page(page, tmp_path)


def test_a_failing_block_names_its_page_line(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text("text\n\n```python\na = 1\n\nb = a / 0\n```\n")
    with pytest.raises(AssertionError, match=r"bad.md, block at line 4") as info:
        run_page(page, tmp_path)
    frames = [f for f in __import__("traceback").extract_tb(info.value.__cause__.__traceback__) if f.filename == str(page)]
    assert frames[-1].lineno == 6  # the traceback points at the page's own line


def test_output_wildcards():
    assert output_matches("a ... c\n...\nend", "a bb c\nx\ny\nend\n")
    assert output_matches("...\nend", "end\n") and output_matches("start\n...", "start")
    assert output_matches("x  \n\n", "\nx")
    assert not output_matches("a ... c", "a b d")
    assert not output_matches("...\nend", "end\nmore")


def test_numbers_within_a_tolerance():
    assert output_matches("loss 0.250, acc 0.91\nsteps 87", "loss 0.2612, acc 0.9\nsteps 87", rel=0.05)
    assert not output_matches("loss 0.250", "loss 0.30", rel=0.05)
    assert not output_matches("steps 87", "steps 88", rel=0.5)  # integers match exactly
    assert not output_matches("loss 0.250", "loss 0.2612")  # without a tolerance, the text itself
    assert output_matches("lr 3.5e-04 ...", "lr 3.3e-04 (suggested)", rel=0.1)


def test_paths_are_shown_relative_to_the_page_directory(tmp_path):
    assert normalise_paths(f"{tmp_path}/lightning_logs/version_0 and {tmp_path}", tmp_path) == \
        "lightning_logs/version_0 and ."
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: approx 0.1 -->\n```python\nimport os\nprint(os.getcwd(), 1.04)\n```\n\n"
                    "```text title=\"Output\"\n. 1.0\n```\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run_page(page, tmp_path) == 1
    finally:
        os.chdir(cwd)
