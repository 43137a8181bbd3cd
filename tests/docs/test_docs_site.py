"""The documentation site builds with ``mkdocs build --strict``, offline, and the pages hold what readers need.

The HTML checks always run where MkDocs is installed (the ``docs`` extra, part of ``test``); the browser check
renders a page in headless Chromium when a ``chromium`` binary is installed and is skipped otherwise.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import docs_hooks
import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


def _nav_pages() -> list[str]:
    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may hold !!python/name tags; the nav needs none of them
    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    pages: list[str] = []

    def walk(items):
        for item in items:
            if isinstance(item, str):
                pages.append(item)
            elif isinstance(item, dict):
                for value in item.values():
                    walk(value) if isinstance(value, list) else pages.append(value)

    walk(config["nav"])
    return pages


def _html_path(site: Path, page: str) -> Path:
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return site / stem.removesuffix("index") / "index.html"
    return site / stem / "index.html"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    # offline: anything that tried the network (fonts, external assets) would fail through a dead proxy
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert not (ROOT / "site").exists() or (ROOT / "site").stat().st_mtime < out.stat().st_mtime
    return out


def test_every_docs_page_is_in_the_nav_and_built(site):
    nav = _nav_pages()
    on_disk = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav) == on_disk, "every page under docs/ belongs in mkdocs.yml's nav, and every nav entry exists"
    for page in nav:
        assert _html_path(site, page).is_file(), page


def test_pages_have_navigation_and_highlighted_code(site):
    page = (site / "getting-started" / "index.html").read_text()
    # the navigation lists every section of the site
    for title in ("Getting started", "Guides", "Coming from PyTorch Lightning", "API reference", "FAQ"):
        assert re.search(rf'class="md-nav__link[^"]*"[^>]*>\s*(<span[^>]*>\s*)?{re.escape(title)}', page) or \
            f">{title}<" in page or f"{title}\n" in html.unescape(re.sub(r"<[^>]+>", "\n", page)), title
    # code blocks are highlighted, with Python tokens
    assert page.count('<div class="language-python highlight">') >= 2
    assert '<span class="k">class</span>' in page and "LightningModule" in page


def test_no_external_assets_and_nothing_left_unexpanded(site):
    for path in site.rglob("*.html"):
        text = path.read_text()
        assert "<!-- generated:" not in text, f"{path}: a generated block was not expanded"
        external = re.findall(r'<(?:link|script|img)[^>]+(?:href|src)="(https?://[^"]+)"', text)
        assert not external, f"{path.relative_to(site)} loads external assets: {external}"
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text


def test_the_api_reference_documents_every_public_name(site):
    for module_name in docs_hooks.PUBLIC_MODULES:
        page_name = module_name.split(".")[-1]
        text = (site / "api" / page_name / "index.html").read_text()
        for name in docs_hooks.public_names(module_name):
            # a heading for every name; its own entry (with the example) lives on exactly one page
            assert re.search(rf'<h2 id="[^"]*\b{re.escape(name)}"', text) or f'id="{name.lower()}"' in text, \
                f"{module_name}.{name} is missing from docs/api/{page_name}.md"
        assert "Example" in text


def test_the_hook_order_table_is_rendered_from_the_tests_expectations(site):
    text = (site / "guides" / "module" / "index.html").read_text()
    rows = docs_hooks.hook_order_rows("fit")
    rendered = re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td><code>([^<]+)</code></td>", text)
    fit = [hook for n, hook in rendered[:len(rows)]]
    assert fit == [hook for hook, _ in rows]
    assert ("on_fit_start", "callbacks, then LightningModule") in rows and ("training_step", "LightningModule") in rows


def _png_size_and_colours(data: bytes) -> tuple[int, int, int]:
    """Width, height and (roughly) how many distinct byte values the image data holds."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, i = b"", 8
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"IDAT":
            chunks += data[i + 8:i + 8 + length]
        i += 12 + length
    return width, height, len(set(zlib.decompress(chunks)[:200_000]))


# the pages a newcomer reads first, and those with the longest code
KEY_PAGES = ("", "getting-started", "installation", "from-lightning", "guides/module", "guides/logging",
             "guides/scaling", "guides/sharded", "guides/fabric", "guides/long-runs", "from-pytorch", "faq", "performance",
             "api/trainer", "api/callbacks", "api/fabric")

# injected into a copy of each page: after the theme's JavaScript ran, measure the page as a reader sees it and
# send the figures to the frame that holds it
_PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const blocks = [...document.querySelectorAll('.md-content pre > code')];
  const longest = c => c.textContent.split('\\n').reduce((a, l) => l.length > a.length ? l : a, '');
  const cut = blocks.filter(c => c.scrollWidth > c.clientWidth + 1).map(c => longest(c).slice(0, 80));
  const wraps = blocks.filter(c => {
    const before = c.style.whiteSpace; c.style.whiteSpace = 'pre';
    const wide = c.scrollWidth > c.clientWidth + 1; c.style.whiteSpace = before; return wide; }).length;
  const images = [...document.querySelectorAll('.md-content img')];
  parent.postMessage({page: document.body.dataset.page, width: window.innerWidth, blocks: blocks.length,
    cut: cut, wraps: wraps,
    column: Math.round(document.querySelector('.md-content').getBoundingClientRect().width),
    pageOverflows: document.documentElement.scrollWidth > window.innerWidth + 1,
    images: images.length, brokenImages: images.filter(i => !i.complete || i.naturalWidth === 0).length}, '*');
}, 500));
</script>"""


def _chromium(tmp_path, *args, timeout=300):
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([*flags, *args], capture_output=True, text=True, timeout=timeout)


def _measure_in_chromium(site: Path, tmp_path: Path, pages, widths) -> list[dict]:
    """Every page at every width, each in a frame of that width (a headless window is never narrower than
    500 px, a frame can be), in one browser run; the frames report what their probe measured."""
    frames = []
    for page in pages:
        source = site / page / "index.html" if page else site / "index.html"
        probe = source.with_name("_probe.html")
        probe.write_text(source.read_text().replace("<body", f'<body data-page="{page or "home"}"', 1)
                         .replace("</body>", _PROBE + "</body>"))
        frames += [f'<iframe src="{probe.as_uri()}" width="{w}" height="800"></iframe>' for w in widths]
    holder = tmp_path / "holder.html"
    holder.write_text("<html><body><pre id='results'></pre><script>const got = [];"
                      "addEventListener('message', e => { got.push(e.data);"
                      " document.getElementById('results').textContent = JSON.stringify(got); });</script>"
                      + "".join(frames) + "</body></html>")
    dom = _chromium(tmp_path, "--window-size=1500,900", "--virtual-time-budget=30000", "--dump-dom",
                    holder.as_uri()).stdout
    for page in pages:
        ((site / page if page else site) / "_probe.html").unlink()
    import json

    found = re.search(r"<pre id=\"results\">(.*?)</pre>", dom, re.S)
    return json.loads(html.unescape(found[1])) if found and found[1] else []


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless check needs Debian's `chromium` package")
def test_key_pages_in_headless_chromium(site, tmp_path):
    """What a reader sees, at 1400 px and at a phone's 420 px: no code block cut off at the right, no page
    wider than the screen, every picture loaded; and screenshots that are not blank. Run with ``-s`` to see
    the figures. (Material adds no copy buttons inside these frames, where a page cannot copy: where the
    button sits on narrow screens is left to extra.css, unchecked here.)"""
    results = _measure_in_chromium(site, tmp_path, KEY_PAGES, (1400, 420))
    assert len(results) == 2 * len(KEY_PAGES), f"only {len(results)} frames reported"
    for r in sorted(results, key=lambda r: (r["width"], r["page"])):
        print(f"{r['width']:>5} px {r['page']:<16} column {r['column']:>4} px, {r['blocks']:>3} code blocks, "
              f"{len(r['cut'])} cut, {r['wraps']:>2} wrapped, "
              f"images {r['images'] - r['brokenImages']}/{r['images']}, page wider than screen: {r['pageOverflows']}")
    for r in results:
        where = f"{r['page']} at {r['width']} px"
        assert r["blocks"] > 0 or r["page"] in ("home", "performance"), where
        assert not r["cut"], f"{where}: code cut off at the right: {r['cut']}"
        assert not r["pageOverflows"], f"{where}: the page is wider than the screen"
        assert r["brokenImages"] == 0, f"{where}: a picture did not load"
        if r["width"] == 1400:
            assert r["column"] >= 1000, f"{where}: the content column is only {r['column']} px"
    # the pictures are there to be seen
    assert sum(r["images"] for r in results if r["width"] == 1400) >= 5
    # screenshots of the first page a newcomer reads, wide and narrow
    for width, page in ((1400, "getting-started"), (420, "guides/module")):
        shot = tmp_path / f"{width}.png"
        target = (site / page / "index.html").as_uri()
        if width < 500:  # narrower than a headless window can be: the page in a frame of that width
            frame = tmp_path / "narrow.html"
            frame.write_text(f'<html><body style="margin:0"><iframe src="{target}" width="{width}" height="900" '
                             f'style="border:0"></iframe></body></html>')
            target = frame.as_uri()
        _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", "--virtual-time-budget=5000", target)
        shot_width, shot_height, values = _png_size_and_colours(shot.read_bytes())
        assert (shot_width, shot_height) == (1400, 900)
        assert values > 20, f"the screenshot of {page} at {width} px is blank"


def _class_section(text: str, obj_path: str) -> str:
    """The HTML of one class's entry: from its heading to the next heading of the same level or higher."""
    start = text.index(f'id="{obj_path}"')
    level = text.rfind("<h", 0, start)
    tag = text[level:level + 3]
    end = min((i for i in (text.find(f"<{tag[1:]}", start), text.find("<h1", start)) if i != -1), default=len(text))
    return text[start:end]


def test_every_public_class_shows_its_signature_and_a_parameter_table(site):
    import enum
    import importlib
    import importlib.util
    import inspect

    formatter = importlib.util.find_spec("black") is not None  # the docs extra's; without it: one long line
    checked, seen = 0, set()
    for module_name in docs_hooks.PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in docs_hooks.public_names(module_name):
            obj = getattr(module, name)
            if not inspect.isclass(obj) or issubclass(obj, (BaseException, enum.Enum)) or obj in seen:
                continue
            seen.add(obj)
            try:
                parameters = inspect.signature(obj).parameters.values()
            except ValueError:  # a builtin's subclass without its own __init__
                continue
            named = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if not named:
                continue
            where = f"{obj.__module__}.{obj.__qualname__}"
            home = docs_hooks._home(where)
            section = _class_section((site / "api" / home / "index.html").read_text(), where)
            signature = re.search(r'<div class="language-python doc-signature highlight">(.*?)</div>', section, re.S)
            assert signature, f"{where}: no signature on api/{home}"
            code = html.unescape(re.sub(r"<[^>]+>", "", signature[1]))
            assert code.startswith(f"{obj.__name__}(") and all(p.name in code for p in named), (where, code)
            if formatter:  # black wraps a long signature to one argument a line: none wider than the column
                assert max(len(line) for line in code.splitlines()) <= 100, (where, code)
            assert '<span class="doc-section-title">Parameters:</span>' in section, f"{where}: no parameter table"
            checked += 1
    assert checked >= 30


def test_core_classes_have_their_own_pages_with_inherited_members(site):
    module_page = (site / "api" / "lightning-module" / "index.html").read_text()
    for member in ("save_hyperparameters", "hparams", "setup", "prepare_data", "train_dataloader",
                   "on_save_checkpoint", "on_load_checkpoint", "transfer_batch_to_device", "log", "training_step"):
        assert f'id="fulmen.module.LightningModule.{member}"' in module_page, member
    trainer_page = (site / "api" / "trainer" / "index.html").read_text()
    for member in ("current_epoch", "is_global_zero", "world_size", "should_stop", "checkpoint_callback", "logger"):
        assert f'id="fulmen.trainer.trainer.Trainer.{member}"' in trainer_page, member
    data_page = (site / "api" / "datamodule" / "index.html").read_text()
    assert 'id="fulmen.datamodule.LightningDataModule.save_hyperparameters"' in data_page
    assert (site / "api" / "callback" / "index.html").is_file()
    # the module page points at them instead of repeating them
    assert 'href="../trainer/"' in (site / "api" / "fulmen" / "index.html").read_text()


def test_every_page_quotes_the_overhead_figures_from_the_benchmark_file():
    """One source: pages read the ratios from docs/assets/overhead_by_size.json at build time; the README, which
    is not built, must state the same range."""
    s = docs_hooks.overhead_summary()
    readme = (ROOT / "README.md").read_text()
    assert f"{s['fulmen_min']:.2f}-{s['fulmen_max']:.2f}x" in readme
    assert f"{s['lightning_min']:.1f}-{s['lightning_max']:.1f}x" in readme
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        # a hand-written ratio to the raw loop ("1.05x the time") instead of the generated sentence
        assert not re.search(r"\b1\.\d\d?x the time", text), f"{page.name} quotes an overhead figure by hand"


FIGURES = {  # picture -> the page that shows it
    "hook_order.svg": "guides/module", "ddp_split.svg": "guides/scaling", "overhead_by_size.svg": "performance",
    "sharded_memory.svg": "guides/sharded", "spike_recovery.svg": "guides/long-runs", "metrics.png": "guides/logging", "lr_find.png": "guides/tuning",
}


def test_the_pictures_are_generated_from_real_runs_and_shown(site):
    figures = site / "assets" / "figures"
    for name, page in FIGURES.items():
        data = (figures / name).read_bytes()
        if name.endswith(".png"):
            width, height, values = _png_size_and_colours(data)
            assert width >= 400 and height >= 300 and values > 20, name
        else:
            assert data.startswith(b"<svg") or b"<svg" in data[:400], name
        assert f"assets/figures/{name}" in (site / page / "index.html").read_text(), f"{page} does not show {name}"
    # the hook diagram lists the calls of the hook-order test, the run's recorded truth
    diagram = (figures / "hook_order.svg").read_text()
    rows = [hook for hook, _ in docs_hooks.hook_order_rows("fit")]
    at = 0
    for hook in rows:  # every row, in order (the validation hooks appear twice: sanity check, then epoch)
        at = diagram.index(f">{hook}</text>", at) + 1
    assert diagram.count("</text>") == 2 * len(rows) + 2  # a badge and a name a row; the title, the legend
    # the console of a default run, captured at build time
    page = html.unescape((site / "getting-started" / "index.html").read_text())
    assert "Trainable params" in page and re.search(r"Epoch 2: 100%.*train_loss=[\d.]+, val_loss=[\d.]+", page)
    assert "`Trainer.fit` stopped: `max_epochs=3` reached." in page
