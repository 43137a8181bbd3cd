"""Fault injection: a training run killed with SIGKILL again and again, restarted with ckpt_path="last".

A small model trains for a fixed number of steps, checkpointing every few steps. The driver starts it
(a fork of itself, so a restart costs no interpreter start-up), kills it (SIGKILL: no handler, no
cleanup) at a random moment, half the time exactly while a checkpoint is being written (it watches for
the writer's temporary file), and starts the same training again, with ``ckpt_path="last"``, until the
run completes; then it starts another run until the number of kills is reached. With ``--damage-every K`` it also damages the newest checkpoint after every K-th kill
(cut short or one bit flipped, as a storage fault would), which ``"last"`` must detect and skip.

At the end it compares the final weights with those of an uninterrupted run, bit for bit, and prints:
kills (during a write / elsewhere), damaged checkpoints made and skipped, steps recomputed, restarts
that failed, and whether the weights are equal. Run with and without the background writer::

    python benchmarks/kill_resume.py --kills 50
    python benchmarks/kill_resume.py --kills 50 --async
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time


def child(root: str, steps: int, use_async: bool) -> None:
    """One life of the run: the same command every time."""
    import torch

    torch.set_num_threads(1)
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import fulmen as pl
    from fulmen.callbacks import ModelCheckpoint
    from fulmen.checkpoint import AsyncCheckpointIO

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 4))
            self.register_buffer("ballast", torch.zeros(2_000_000))  # 8 MB: writes take long enough to be hit

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("loss", loss, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    class Progress(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            print(f"start {trainer.global_step}", flush=True)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            print(f"step {trainer.global_step}", flush=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g)
    y = (x[:, :4].argmax(1))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        default_root_dir=root, plugins=[AsyncCheckpointIO()] if use_async else None,
        callbacks=[Progress(), ModelCheckpoint(dirpath=os.path.join(root, "ckpts"), every_n_train_steps=20,
                                               save_top_k=2, monitor="loss", save_last=True)],
    )
    model = Net()
    trainer.fit(model, loader, ckpt_path="last")
    torch.save({k: v for k, v in model.state_dict().items() if k != "ballast"}, os.path.join(root, "final.pt"))
    print(f"done {trainer.global_step}", flush=True)


class _Forked:
    """A life of the run in a forked copy of this process (torch and fulmen already imported, so a restart
    costs no interpreter start-up), with Popen's interface: stdout/stderr pipes, poll, wait, send_signal."""

    def __init__(self, root: str, steps: int, use_async: bool) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: train, then leave without running the parent's clean-up
            os.close(out_r)
            os.close(err_r)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            code = 0
            try:
                child(root, steps, use_async)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        os.close(out_w)
        os.close(err_w)
        self.pid, self.returncode = pid, None
        self.stdout = os.fdopen(out_r, "r")
        self.stderr = os.fdopen(err_r, "r")

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def communicate(self) -> tuple[str, str]:
        out, err = self.stdout.read(), self.stderr.read()
        self.wait()
        return out, err


def _spawn(root: str, steps: int, use_async: bool) -> _Forked:
    return _Forked(root, steps, use_async)


class Life:
    """A running child and what it has printed so far."""

    def __init__(self, proc: _Forked) -> None:
        self.proc, self.start, self.step, self.done = proc, None, 0, False
        self.started = threading.Event()
        self.err: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(proc.stderr), daemon=True).start()

    def _read_out(self) -> None:
        for line in self.proc.stdout:
            kind, _, value = line.partition(" ")
            if kind == "start":
                self.start = self.step = int(value)
                self.started.set()
            elif kind == "step":
                self.step = int(value)
            elif kind == "done":
                self.done = True
        self.started.set()


def _temp_files(ckpt_dir: str) -> set[str]:
    try:
        return {n for n in os.listdir(ckpt_dir) if n.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def _writing(ckpt_dir: str, stale: set[str]) -> bool:
    """A checkpoint write is in progress: a temporary file that an earlier (killed) life did not leave."""
    return bool(_temp_files(ckpt_dir) - stale)


def _damage_newest(ckpt_dir: str, rng: random.Random) -> str | None:
    if not os.path.isdir(ckpt_dir):
        return None
    files = [os.path.join(ckpt_dir, n) for n in os.listdir(ckpt_dir) if n.endswith(".ckpt")]
    files = [f for f in files if not os.path.islink(f)]
    if not files:
        return None
    newest = max(files, key=os.path.getmtime)
    data = bytearray(open(newest, "rb").read())
    if rng.random() < 0.5:
        data = data[: rng.randrange(1, len(data))]
    else:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    with open(newest, "wb") as f:
        f.write(bytes(data))
    return newest


def drive(args: argparse.Namespace) -> int:
    import torch

    import fulmen  # noqa: F401  (imported once here; every life is a fork of this process)

    torch.set_num_threads(1)  # no OpenMP pool in the parent: forks stay safe
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="kill_resume_")
    try:
        t0 = time.perf_counter()
        ref = _spawn(os.path.join(work, "reference"), args.steps, args.use_async)
        ref_out, ref_err = ref.communicate()
        if ref.returncode != 0:
            print(ref_err)
            return 1
        reference_seconds = time.perf_counter() - t0
        reference = torch.load(os.path.join(work, "reference", "final.pt"))
        kills = kills_in_write = damaged = recomputed = failed = lives = jobs = lost = 0
        skipped = 0
        undetected: set[str] = set()  # damaged, not yet reported by a restart
        while kills < args.kills:  # one job: the same command restarted until it completes
            jobs += 1
            root = os.path.join(work, f"job{jobs}")
            ckpt_dir = os.path.join(root, "ckpts")
            last_step_before_kill = None
            while True:
                stale = _temp_files(ckpt_dir)  # left by writes that a kill interrupted
                life = Life(_spawn(root, args.steps, args.use_async))
                lives += 1
                life.started.wait()
                if last_step_before_kill is not None and life.start is not None:
                    recomputed += max(0, last_step_before_kill - life.start)
                if kills < args.kills and life.proc.poll() is None:
                    in_write = rng.random() < 0.5
                    deadline = time.monotonic() + rng.uniform(0.05, args.max_life)
                    while life.proc.poll() is None and time.monotonic() < deadline:
                        if in_write and _writing(ckpt_dir, stale):
                            break
                        time.sleep(0.001 if in_write else 0.01)
                    if life.proc.poll() is None:
                        caught_in_write = _writing(ckpt_dir, stale)
                        life.proc.send_signal(signal.SIGKILL)
                        life.proc.wait()
                        kills += 1
                        kills_in_write += caught_in_write
                        last_step_before_kill = life.step
                        if args.damage_every and kills % args.damage_every == 0:
                            hit = _damage_newest(ckpt_dir, rng)
                            if hit:
                                damaged += 1
                                undetected.add(hit)
                life.proc.wait()
                time.sleep(0.05)  # the reader threads drain the pipes
                for path in set(re.findall(r"skips a damaged checkpoint: Checkpoint '([^']+)'", "".join(life.err))):
                    if path in undetected:  # one damage, reported once (later restarts report it again)
                        undetected.discard(path)
                        skipped += 1
                if life.proc.returncode not in (0, -signal.SIGKILL):
                    failed += 1
                    print("".join(life.err[-20:]), file=sys.stderr)
                    break
                if life.done:
                    break
            final = os.path.join(root, "final.pt")
            ok = os.path.exists(final) and all(torch.equal(reference[k], v) for k, v in torch.load(final).items())
            lost += not ok
            shutil.rmtree(root, ignore_errors=True)
            if failed > 3:
                break
        equal = lost == 0
        print(f"writer: {'async (AsyncCheckpointIO)' if args.use_async else 'synchronous'}; {args.steps} steps, "
              f"a checkpoint every 20 steps; uninterrupted run {reference_seconds:.1f} s")
        print(f"kills: {kills} ({kills_in_write} during a checkpoint write) over {jobs} runs, {lives} starts, "
              f"failed restarts: {failed}")
        print(f"damaged checkpoints made: {damaged}; found and skipped, with a warning naming them, by "
              f"ckpt_path='last': {skipped}; the other {damaged - skipped} were never needed (an intact newer "
              f"checkpoint was chosen) and were replaced later")
        print(f"steps recomputed: {recomputed} ({recomputed / max(kills, 1):.1f} per kill)")
        print(f"runs whose final weights equal the uninterrupted run's bit for bit: {jobs - lost} of {jobs}; "
              f"runs lost: {lost}")
        return 0 if equal and not failed else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--max-life", type=float, default=2.0, help="longest time a life runs before its kill (s)")
    parser.add_argument("--damage-every", type=int, default=5, help="damage the newest checkpoint every K kills")
    parser.add_argument("--async", dest="use_async", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", metavar="ROOT")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.use_async)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
