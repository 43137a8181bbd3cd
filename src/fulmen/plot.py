"""Plot a run's metrics into one PNG: its ``metrics.csv`` (:class:`~fulmen.loggers.CSVLogger`) or its
TensorBoard event files (:class:`~fulmen.loggers.TensorBoardLogger`, the default logger when tensorboard is
installed).

Metrics of one family share a subplot: ``train_loss`` / ``val_loss``, ``loss_step`` / ``loss_epoch``,
``train/acc`` / ``val/acc``. The x axis is the trainer's step; epoch-level and sparse series get markers.

Command line::

    fulmen plot logs/lightning_logs/version_0            # -> logs/lightning_logs/version_0/metrics.png
    fulmen plot logs/lightning_logs/version_0 -o run.png
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from fulmen.errors import FulmenError, MissingDependencyError, missing_extra

_STAGES = ("train", "val", "validation", "test", "predict")
_SUFFIXES = ("_step", "_epoch")
_NOT_METRICS = {"step", "epoch"}  # the x axis and the epoch counter the trainer adds to every row
_FEW_POINTS = 30  # below this, a series gets markers so single points stay visible


def plot_run(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Render every metric of ``run_dir`` as curves into one PNG and return its path.

    ``run_dir`` is a logger's version folder holding ``metrics.csv`` or TensorBoard event files
    (``events.out.tfevents.*``); it may also be the CSV file itself. The default output is
    ``run_dir/metrics.png``.

    Example::

        from fulmen.plot import plot_run
        png = plot_run("logs/lightning_logs/version_0")
    """
    csv_path = Path(run_dir)
    if not csv_path.exists():
        raise FulmenError(f"No such run directory: {run_dir}")
    events = sorted(csv_path.rglob("events.out.tfevents.*")) if csv_path.is_dir() else []
    if csv_path.is_dir():
        csv_path = csv_path / "metrics.csv"
    if csv_path.is_file():
        series = _read_series(csv_path)
    elif events:
        series = _read_tensorboard(events)
    else:
        raise FulmenError(
            f"No metrics.csv or TensorBoard event file in {run_dir}; pass the version folder a CSVLogger or "
            "TensorBoardLogger wrote, e.g. lightning_logs/version_0."
        )
    if not series:
        raise FulmenError(f"{run_dir} holds no numeric metrics to plot.")
    out = Path(out_path) if out_path is not None else csv_path.parent / "metrics.png"

    try:
        import matplotlib
    except ImportError:
        raise missing_extra("matplotlib", "plot", "fulmen plot") from None
    matplotlib.use("Agg")  # files only: no display needed, works on headless machines
    import matplotlib.pyplot as plt

    families = _group(series)
    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, (family, names) in zip(axes.flat, families.items()):
        for name in names:
            xs, ys = series[name]
            per_epoch = name.endswith("_epoch") or _stage(name) in ("val", "validation", "test")
            sparse = per_epoch or len(xs) <= _FEW_POINTS
            ax.plot(xs, ys, label=name, marker="o" if sparse else None, markersize=4, linewidth=1.2)
        ax.set_title(family)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    fig.suptitle("/".join(csv_path.parent.parts[-2:]))  # e.g. "lightning_logs/version_0"
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _read_series(csv_path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Each metric column as (steps, values), skipping empty and non-numeric cells."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, row in enumerate(rows):
        step = _number(row.get("step"))
        x = index if step is None else step  # a CSV without a step column: plot against row order
        for name, cell in row.items():
            value = _number(cell)
            if name is None or name in _NOT_METRICS or value is None:
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(x)
            ys.append(value)
    return series


def _read_tensorboard(files: list[Path]) -> dict[str, tuple[list[float], list[float]]]:
    """Each scalar tag of the event files as (steps, values), in step order."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise missing_extra("tensorboard", "tensorboard", "fulmen plot (reading TensorBoard event files)") from None
    points: dict[str, list[tuple[float, float]]] = {}
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            if tag in _NOT_METRICS or tag == "hp_metric":  # the HPARAMS tab's placeholder, not a metric
                continue
            points.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: ([x for x, _ in sorted(p)], [y for _, y in sorted(p)]) for tag, p in points.items()}


def _number(cell: str | None) -> float | None:
    try:
        return float(cell) if cell not in (None, "") else None
    except ValueError:
        return None


def _stage(name: str) -> str | None:
    return next((stage for stage in _STAGES if name.startswith((stage + "_", stage + "/"))), None)


def _family(name: str) -> str:
    """``val_loss_epoch`` -> ``loss``; ``train/acc`` -> ``acc``: what should share axes."""
    stage = _stage(name)
    if stage is not None:
        name = name[len(stage) + 1 :]
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def _group(series: dict[str, tuple[list[float], list[float]]]) -> dict[str, list[str]]:
    """Metric names by family, the loss first (what one looks at first), then alphabetically."""
    families: dict[str, list[str]] = {}
    for name in sorted(series):
        families.setdefault(_family(name), []).append(name)
    return dict(sorted(families.items(), key=lambda item: (item[0] != "loss", item[0])))


def main(argv: list[str] | None = None) -> int:
    """``fulmen plot RUN_DIR [-o OUT]``: returns 0 on success, 2 for bad input, 1 for a missing extra."""
    parser = argparse.ArgumentParser(prog="fulmen plot", description="Plot a run's logged metrics into a PNG.")
    parser.add_argument("run_dir", help="a CSVLogger or TensorBoardLogger version folder (or a metrics.csv)")
    parser.add_argument("-o", "--out", help="output PNG (default: RUN_DIR/metrics.png)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the usage message
        return int(exit_.code or 0)
    try:
        out = plot_run(args.run_dir, args.out)
    except (FulmenError, csv.Error, UnicodeDecodeError) as err:
        print(f"fulmen plot: {err}", file=sys.stderr)
        return 1 if isinstance(err, MissingDependencyError) else 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
