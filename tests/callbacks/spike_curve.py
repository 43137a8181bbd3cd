"""Records, from real runs of the spike test program (spike_program.py), the training loss of each batch with a
x1000 spike in batch 6 of every epoch, without SpikeDetection, with ``SpikeDetection(recover=True)``, and for the
run whose dataset never had batches 5 and 6. The docs build draws the Long runs page's figure from the JSON with
:func:`plot` (scripts/docs_figures.py); ``--plot`` draws it by hand for a look.

    python tests/callbacks/spike_curve.py --json docs/assets/spike_recovery.json [--plot spike_recovery.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import spike_program as prog  # noqa: E402
from fulmen.callbacks import SpikeDetection  # noqa: E402

PER_EPOCH = prog.SAMPLES // prog.BATCH


def curve(model: prog.Net, drop: tuple[int, ...] = (), gap: bool = False) -> dict[str, list]:
    """Loss by batch of the fit (epoch * batches per epoch + batch). A batch run twice (replayed after a
    roll-back) shows its last value; batches in ``drop`` (undone by the roll-back) are left out; the spikes
    are returned apart. ``gap``: the run never had batches 5 and 6, so its later batches move two places."""
    by_batch, spikes = {}, []
    for key, loss in model.losses:
        epoch, batch = divmod(key, 1000)
        if gap and batch >= prog.SPIKE_BATCH - 1:
            batch += 2
        x = epoch * PER_EPOCH + batch
        if model.spike_ids and batch == prog.SPIKE_BATCH:
            spikes.append([x, loss])
        elif batch not in drop:
            by_batch[x] = loss
    xs = sorted(by_batch)
    return {"x": xs, "loss": [by_batch[x] for x in xs], "spikes": spikes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    out = Path(tempfile.mkdtemp())
    runs = {}
    plain = prog.Net(prog.spike_ids())
    prog.fit(out / "plain", prog.Regression(), plain, None)
    runs["no SpikeDetection"] = curve(plain)
    recovered, spike = prog.Net(prog.spike_ids()), SpikeDetection(recover=True)
    prog.fit(out / "recovered", prog.Regression(), recovered, spike)
    runs["SpikeDetection(recover=True)"] = curve(recovered, drop=(prog.SPIKE_BATCH - 1,))
    runs["SpikeDetection(recover=True)"]["recoveries"] = spike.recoveries
    reference = prog.Net()
    prog.fit(out / "reference", prog.Regression(prog.excluded(prog.SPIKE_BATCH - 1, prog.SPIKE_BATCH)), reference, None)
    runs["dataset without batches 5-6"] = curve(reference, gap=True)
    for name, run in runs.items():
        print(f"{name:<30} final loss {run['loss'][-1]:.4f}", f"recoveries {run['recoveries']}" if "recoveries" in run else "")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1) + "\n")
    if a.plot:
        plot(runs, a.plot)


def plot(runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {"no SpikeDetection": dict(color="#bbbbbb", lw=1.5), "SpikeDetection(recover=True)": dict(color="#1f77b4", lw=2),
              "dataset without batches 5-6": dict(color="black", lw=1, ls="--")}
    for name, run in runs.items():
        ax.plot(run["x"], run["loss"], label=name, **styles[name])
        if name.startswith("SpikeDetection"):
            xs, ys = zip(*run["spikes"])
            ax.scatter(xs, ys, color="#d62728", marker="x", zorder=3, label="spike: rolled back, batches skipped")
    ax.set_yscale("log")
    ax.set_xlabel("training batch (two epochs)")
    ax.set_ylabel("training loss")
    ax.set_title("A x1000 loss spike in batch 6 of each epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
