"""The docs' pictures, made by the build from real runs and from the benchmarks' output files, never drawn by hand.

Each function below writes one file into a folder; :func:`make_all` makes them all and caches them under the
system's temporary folder, keyed by the sources they depend on (fulmen's code, this file, the benchmark
files, the pages they run), so ``mkdocs serve`` rebuilds them only when one of those changes.
``scripts/docs_hooks.py`` adds the files to the site as ``assets/figures/NAME``, and pages show them with
``![...](../assets/figures/NAME)``; ``console.txt`` is placed into a page with ``<!-- generated: console -->``.

Run by hand to look at them: ``python scripts/docs_figures.py OUTDIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OVERHEAD_JSON = DOCS / "assets" / "overhead_by_size.json"
SHARDED_JSON = DOCS / "assets" / "sharded_memory.json"
SPIKE_JSON = DOCS / "assets" / "spike_recovery.json"

# colours of the site's theme (Material's deep orange) and two neutrals; SVG text uses the reader's sans-serif
ORANGE, BLUE, GREY, INK = "#ff5722", "#3f6ad8", "#9e9e9e", "#212121"


# ---------------------------------------------------------------------------------------------------------
# small SVG helpers
def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" font-family="sans-serif" font-size="13" role="img">'
            f"<title>{html.escape(title)}</title>" + "".join(body) + "</svg>\n")


def _text(x: float, y: float, s: str, size: int = 13, weight: str = "normal", fill: str = INK, anchor: str = "start",
          mono: bool = False) -> str:
    family = ' font-family="monospace"' if mono else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" fill="{fill}" '
            f'text-anchor="{anchor}"{family}>{html.escape(s)}</text>')


def _rect(x: float, y: float, w: float, h: float, fill: str, stroke: str = "none", rx: int = 3,
          opacity: float = 1.0) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" fill="{fill}" '
            f'stroke="{stroke}" fill-opacity="{opacity}"/>')


def _load(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------
# the hook order, from a real run's recorded calls
_PHASES = ("fit", "sanity_check", "train", "train_epoch", "train_batch", "validation", "validation_epoch",
           "validation_batch")


def record_fit_hooks(workdir: Path) -> list[str]:
    """The hooks a one-batch ``fit`` calls, recorded by the hook-order test's module and callback."""
    hook_order = _load("tests/trainer/test_hook_order.py", "_docs_figures_hook_order")
    hook_order.calls.clear()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        hook_order._trainer(workdir).fit(hook_order.RecordingModule())
    return list(hook_order.calls)


def hook_order_svg(calls: list[str], path: Path) -> None:
    """One row per hook in the order called, indented by the phases (``on_X_start`` .. ``on_X_end``) it runs
    in; a callback hook followed by the module's hook of the same name is one row, marked C+M."""
    rows: list[tuple[str, str, int]] = []  # (hook, who, depth)
    depth, i = 0, 0
    while i < len(calls):
        call = calls[i]
        who = "M"
        if call.startswith("Callback."):
            call = call.removeprefix("Callback.")
            who = "C"
            if i + 1 < len(calls) and calls[i + 1] == call:
                who, i = "C+M", i + 1
        phase = call.removeprefix("on_").rsplit("_", 1)[0] if call.startswith("on_") else None
        if call.endswith("_end") and phase in _PHASES:
            depth -= 1
        rows.append((call, who, depth))
        if call.endswith("_start") and phase in _PHASES:
            depth += 1
        i += 1
    line, indent, top = 19, 22, 56
    width = 620
    height = top + line * len(rows) + 16
    colours = {"C": BLUE, "M": ORANGE, "C+M": "#7e57c2"}
    body = [_rect(0, 0, width, height, "#ffffff"),
            _text(12, 22, "The hooks of trainer.fit, in the order a real run called them", 15, "bold"),
            _text(12, 42, "C: callbacks   M: LightningModule   C+M: callbacks, then the module", 12, fill="#555")]
    open_at: list[tuple[int, float]] = []
    for n, (hook, who, d) in enumerate(rows):
        y = top + n * line
        phase = hook.removeprefix("on_").rsplit("_", 1)[0]
        if hook.endswith("_start") and phase in _PHASES:
            open_at.append((d, y))
        if hook.endswith("_end") and phase in _PHASES and open_at:
            level, start = open_at.pop()
            x = 14 + level * indent
            body.append(f'<path d="M{x + 6},{start + 5} h-6 v{y - start + 4} h6" fill="none" stroke="{GREY}"/>')
        x = 26 + d * indent
        body.append(_rect(x, y, 34, 15, colours[who], rx=3, opacity=0.9))
        body.append(_text(x + 17, y + 11.5, who, 10, "bold", "#ffffff", "middle"))
        body.append(_text(x + 42, y + 12, hook, 12.5, mono=True))
    path.write_text(_svg(width, height, body, "hook order of fit"))


# ---------------------------------------------------------------------------------------------------------
# how DDP splits the data, from the sampler fulmen installs
def ddp_split_svg(path: Path, samples: int = 11, world: int = 2, batch: int = 2) -> None:
    """Which samples each rank reads in two epochs (torch's DistributedSampler with the seed fulmen gives it),
    and a check, computed here, that the mean of the ranks' gradients is the gradient of the whole batch."""
    import torch
    from torch.utils.data import DistributedSampler

    dataset = list(range(samples))
    epochs = []
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        epochs.append(shards)
    # the reduction: each rank's gradient on its own batch, averaged, against one process on both batches
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 1)
    x, y = torch.randn(world * batch, 3), torch.randn(world * batch, 1)
    grads = []
    for rank in range(world):
        layer.zero_grad()
        torch.nn.functional.mse_loss(layer(x[rank::world]), y[rank::world]).backward()
        grads.append(layer.weight.grad.clone())
    layer.zero_grad()
    torch.nn.functional.mse_loss(layer(x), y).backward()
    gap = (torch.stack(grads).mean(0) - layer.weight.grad).abs().max().item()

    cell, gapx, left = 30, 4, 150
    width = max(left + (cell + gapx) * (samples + 1) + 40, 700)
    body = [_rect(0, 0, width, 10, "#ffffff")]
    y = 24
    body.append(_text(12, y, f"How {world} DDP processes split a data set of {samples} samples (batch size {batch} "
                             "per process)", 15, "bold"))
    y += 26
    body.append(_text(12, y + 19, "data set", 13, "bold"))
    for i in dataset:
        body.append(_rect(left + i * (cell + gapx), y, cell, 28, "#eeeeee", GREY))
        body.append(_text(left + i * (cell + gapx) + cell / 2, y + 19, str(i), 13, anchor="middle", mono=True))
    y += 44
    colours = [ORANGE, BLUE, "#43a047", "#8e24aa"]
    for epoch, shards in enumerate(epochs):
        body.append(_text(12, y + 12, f"epoch {epoch}", 13, "bold"))
        y += 20
        for rank, shard in enumerate(shards):
            body.append(_text(24, y + 19, f"rank {rank}", 13, fill=colours[rank]))
            for k, index in enumerate(shard):
                x = left + k * (cell + gapx) + (k // batch) * 10
                repeated = rank + k * world >= samples  # past the data set's end: the sampler's padding
                body.append(_rect(x, y, cell, 28, colours[rank], opacity=0.4 if repeated else 0.9))
                body.append(_text(x + cell / 2, y + 19, str(index), 13, "bold", "#ffffff", "middle", mono=True))
            y += 34
        y += 8
    padded = -(-samples // world) * world - samples
    notes = [
        f"Every epoch, each rank shuffles all {samples} indices with the same seed (plus the epoch number), and rank r",
        f"takes every {world}. index from position r, so the shards never overlap. As {samples} is not a multiple "
        f"of {world},",
        f"{padded} index repeats (pale) so that every rank runs the same number of batches (gaps separate them).",
        "After each backward, DDP all-reduces the gradients: every rank gets their mean and takes the same step.",
        f"Checked while drawing this: mean of the {world} ranks' gradients minus the gradient of the "
        f"{world * batch}-sample batch: {gap:.1e}.",
    ]
    for note in notes:
        body.append(_text(12, y + 12, note, 12, fill="#444"))
        y += 18
    body[0] = _rect(0, 0, width, y + 10, "#ffffff")
    path.write_text(_svg(width, y + 10, body, "DDP data split"))


# ---------------------------------------------------------------------------------------------------------
# plots from the benchmarks' output files and from fulmen's own plotting code
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "fulmen-docs", "svg.fonttype": "none"})  # the same file on every build
    return plt


def overhead_svg(path: Path) -> None:
    """The overhead-by-size plot, drawn by the benchmark's own plotting function from the JSON it wrote."""
    _pyplot()
    bench = _load("benchmarks/overhead_by_size.py", "_docs_figures_overhead")
    bench.plot(json.loads(OVERHEAD_JSON.read_text()), str(path))


def sharded_memory_svg(path: Path) -> None:
    """Peak memory per process of each strategy, from ``benchmarks/sharded.py --json``."""
    plt = _pyplot()
    results = json.loads(SHARDED_JSON.read_text())
    names, base, train, held = [], [], [], []
    for reports in results["rows"]:
        names.append(reports[0]["strategy"])
        base.append(max(r["base_mb"] for r in reports))
        train.append(max(r["peaks_mb"]["train"] for r in reports))
        held.append(max(r["held"] for r in reports) / 2**20)
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(names) + 2.0), dpi=110)
    ys = range(len(names))
    ax.barh(ys, [t - b for t, b in zip(train, base)], color=ORANGE, label="training peak above the start-up base")
    ax.barh(ys, held, height=0.35, color=BLUE, label="parameters + optimizer state held")
    for y, (t, b) in enumerate(zip(train, base)):
        ax.text(t - b, y, f" {t - b:.0f} MB", va="center", fontsize=9)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("MB per process (the larger of the 2 processes)")
    hidden, blocks = results["shape"]
    ax.set_title(f"{results['params'] / 1e6:.0f}M-parameter MLP, {results['processes']} processes, "
                 f"{results['accelerator'].upper()}, Adam", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, max(t - b for t, b in zip(train, base)) * 1.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def spike_recovery_svg(path: Path) -> None:
    """The loss curves of the spike test program, drawn by ``tests/callbacks/spike_curve.py``'s own plotting
    function from the JSON its real runs wrote (``--json docs/assets/spike_recovery.json``)."""
    plt = _pyplot()
    saved = list(sys.path)  # the script puts its own folder first, to import the test program beside it
    try:
        curve = _load("tests/callbacks/spike_curve.py", "_docs_figures_spike")
    finally:
        sys.path[:] = saved
    curve.plot(json.loads(SPIKE_JSON.read_text()), str(path))
    plt.close("all")


def _quiet_run(fn):
    import logging

    fulmen_logger = logging.getLogger("fulmen")
    level = fulmen_logger.level
    fulmen_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn()
    finally:
        fulmen_logger.setLevel(level)


def metrics_png(workdir: Path, path: Path) -> None:
    """What ``fulmen plot`` draws for a short real run: train and validation loss, and the learning rate."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import fulmen as pl
    from fulmen.callbacks import LearningRateMonitor
    from fulmen.loggers import CSVLogger
    from fulmen.plot import plot_run

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

        def training_step(self, batch, batch_idx):
            loss = F.mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=0.01)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)]

    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    y = x.sum(1, keepdim=True) + 0.3 * torch.randn(320, 1, generator=g)
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=16, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=32)
    logger = CSVLogger(workdir, name="plot")

    def fit():
        pl.seed_everything(0, verbose=False)
        trainer = pl.Trainer(max_epochs=12, logger=logger, log_every_n_steps=4, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[LearningRateMonitor()])
        trainer.fit(Regression(), train, val)
        return plot_run(logger.log_dir, path)

    _pyplot()
    _quiet_run(fit)


def _load_runner():
    """The docs tests' block runner. It is a test module (it imports pytest for its test decorators), and the
    build may run where only the ``docs`` extra is installed: then a stand-in gives it the decorators."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        import types

        class _Mark:
            def __getattr__(self, name):
                return lambda *args, **kwargs: (lambda test: test)

        stand_in = types.ModuleType("pytest")
        stand_in.mark = _Mark()
        sys.modules["pytest"] = stand_in
        try:
            return _load("tests/docs/test_docs_code_blocks.py", "_docs_figures_runner")
        finally:
            del sys.modules["pytest"]
    return _load("tests/docs/test_docs_code_blocks.py", "_docs_figures_runner")


def page_file(page: str, filename: str, workdir: Path, path: Path) -> None:
    """Run a page's Python blocks in order (as the docs tests do) until one of them writes ``filename``: the
    picture then is what the page's own code makes."""
    runner = _load_runner()
    page_dir = workdir / Path(page).stem
    page_dir.mkdir()
    target = page_dir / filename
    cwd = os.getcwd()
    os.chdir(page_dir)
    try:
        blocks = runner.parse((DOCS / page).read_text())
        lines = (DOCS / page).read_text().splitlines()
        last = next(b for b in blocks if filename in b.code and b.lang == "python")
        # the page cut after that block, so the runner stops there
        partial = DOCS / page
        text = "\n".join(lines[:last.line - 1 + last.code.count("\n") + 1])
        short = page_dir / ("_" + partial.name)
        short.write_text(text + "\n")
        _pyplot()
        _quiet_run(lambda: runner.run_page(short, page_dir))
    finally:
        os.chdir(cwd)
    path.write_bytes(target.read_bytes())


CONSOLE_PROGRAM = '''
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


pl.seed_everything(0)
x = torch.randn(320, 8)
data = TensorDataset(x, x.sum(1, keepdim=True))
train, val = torch.utils.data.random_split(data, [256, 64])
trainer = pl.Trainer(max_epochs=3)
trainer.fit(Regression(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=32))
'''


def _console_text(raw: str, workdir: str) -> str:
    """A terminal's final view of ``raw``: of each line redrawn with carriage returns, the last state."""
    lines = [line.split("\r")[-1].rstrip() for line in raw.replace("\r\n", "\n").split("\n")]
    text = "\n".join(line for line in lines if line or True).strip("\n")
    return text.replace(workdir.rstrip("/") + "/", "").replace(workdir, ".")


def console_start(workdir: Path) -> subprocess.Popen:
    """Start the program every new user runs first (``Trainer()`` with its defaults) with its output piped, as
    in a terminal that is not a TTY (CI logs, a notebook's output)."""
    (workdir / "train.py").write_text(CONSOLE_PROGRAM)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               COLUMNS="100")
    return subprocess.Popen([sys.executable, "train.py"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def console_finish(process: subprocess.Popen, workdir: Path, path: Path) -> None:
    out, _ = process.communicate(timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"the console run failed:\n{out}")
    path.write_text("$ python train.py\n" + _console_text(out, str(workdir)) + "\n")


# ---------------------------------------------------------------------------------------------------------
FIGURES = ("hook_order.svg", "ddp_split.svg", "overhead_by_size.svg", "sharded_memory.svg", "spike_recovery.svg",
           "metrics.png", "lr_find.png", "console.txt")


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    files = sorted((ROOT / "src" / "fulmen").rglob("*.py")) + [
        Path(__file__), OVERHEAD_JSON, SHARDED_JSON, SPIKE_JSON, ROOT / "benchmarks" / "overhead_by_size.py",
        ROOT / "tests" / "callbacks" / "spike_curve.py",
        ROOT / "tests" / "trainer" / "test_hook_order.py", ROOT / "tests" / "docs" / "test_docs_code_blocks.py",
        DOCS / "guides" / "tuning.md"]
    for f in files:
        digest.update(str(f.relative_to(ROOT)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def make_all(out: Path | None = None) -> Path:
    """Make every figure (or reuse the cached set for the same sources); return the folder that holds them."""
    if out is None:
        out = Path(tempfile.gettempdir()) / f"fulmen-docs-figures-{_inputs_digest()}"
        if all((out / name).is_file() for name in FIGURES):
            return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fulmen-docs-runs-") as tmp:
        work = Path(tmp)
        (work / "console").mkdir()
        console = console_start(work / "console")  # runs in its own process while the others are drawn
        try:
            hooks_dir = work / "hooks"
            hooks_dir.mkdir()
            hook_order_svg(record_fit_hooks(hooks_dir), out / "hook_order.svg")
            ddp_split_svg(out / "ddp_split.svg")
            overhead_svg(out / "overhead_by_size.svg")
            sharded_memory_svg(out / "sharded_memory.svg")
            spike_recovery_svg(out / "spike_recovery.svg")
            metrics_png(work, out / "metrics.png")
            page_file("guides/tuning.md", "lr_find.png", work, out / "lr_find.png")
        finally:
            console_finish(console, work / "console", out / "console.txt")
    return out


if __name__ == "__main__":
    print(make_all(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
