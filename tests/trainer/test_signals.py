"""Preemption (SIGTERM, SLURM's requeue signal) and Ctrl-C end a fit cleanly and resumably."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fulmen as pl
from fulmen.checkpoint import load_checkpoint
from fulmen.errors import SIGTERMException
from helpers import make_loader, quiet_trainer

CHILD = textwrap.dedent('''
    import os, sys, signal, time
    import torch
    from torch import nn
    from torch.nn import functional as F
    import fulmen as pl
    from torch.utils.data import DataLoader, TensorDataset

    root, mode = sys.argv[1], sys.argv[2]

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.3), nn.Linear(16, 2))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    class Report(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            print("step", trainer.global_step, flush=True)
            if mode == "twice" and trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            if mode == "wait":
                time.sleep(0.05)  # leaves the parent time to send its signal mid-epoch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 16, generator=g)
    loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=8, shuffle=True)
    pl.seed_everything(7)
    model = Net()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=root, callbacks=[Report()])
    trainer.fit(model, loader, ckpt_path="last")
    torch.save(model.state_dict(), os.path.join(root, "final.pt"))
    print("done", trainer.global_step, flush=True)
''')


def _child(tmp_path, root, mode):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), str(root), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _in_process(tmp_path, root, monkeypatch, capsys):
    """The child script run here (same code, same seeds), to spare a process start."""
    import runpy

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    monkeypatch.setattr(sys, "argv", [str(script), str(root), "run"])
    capsys.readouterr()
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out


def test_sigterm_mid_epoch_saves_and_the_resumed_run_is_bit_for_bit(tmp_path, monkeypatch, capsys):
    victim = _child(tmp_path, tmp_path / "victim", "wait")
    seen = 0
    for line in victim.stdout:
        if not line.startswith("step"):
            continue
        seen = int(line.split()[1])
        if seen == 5:  # mid first epoch (12 steps per epoch)
            victim.send_signal(signal.SIGTERM)
            break
    rest = victim.stdout.read()
    assert victim.wait(timeout=120) == 128 + signal.SIGTERM, victim.stderr.read()
    last_done = int(([seen] + [int(l.split()[1]) for l in rest.split("\n") if l.startswith("step")])[-1])
    saved = load_checkpoint(tmp_path / "victim" / "checkpoints" / "preempted.ckpt")
    assert saved["global_step"] == last_done and 5 <= last_done < 12  # the step in progress finished: none redone

    out = _in_process(tmp_path, tmp_path / "victim", monkeypatch, capsys)
    steps = [int(l.split()[1]) for l in out.split("\n") if l.startswith("step")]
    assert steps[0] == last_done + 1 and out.strip().endswith("done 24")
    _in_process(tmp_path, tmp_path / "straight", monkeypatch, capsys)
    a = torch.load(tmp_path / "straight" / "final.pt")
    b = torch.load(tmp_path / "victim" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_sigterm_ends_the_process_at_once(tmp_path):
    child = _child(tmp_path, tmp_path / "run", "twice")
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGTERM, err
    assert "step 4" not in out and not (tmp_path / "run" / "checkpoints" / "preempted.ckpt").exists()


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SendSignal(pl.Callback):
    def __init__(self, at, signum):
        self.at, self.signum, self.seen_exception = at, signum, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)

    def on_exception(self, trainer, pl_module, exception):
        self.seen_exception = exception


def test_slurm_requeue_signal_saves_hpc_checkpoint_and_requeues(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    before = signal.getsignal(signal.SIGUSR1)
    probe = SendSignal(at=3, signum=signal.SIGUSR1)
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[probe])
    with pytest.raises(SIGTERMException) as info:
        trainer.fit(Tiny(), make_loader(64, 8))
    assert info.value.code == 128 + signal.SIGUSR1 and trainer.interrupted
    assert isinstance(probe.seen_exception, SIGTERMException)  # on_exception hooks ran
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert load_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")["global_step"] == 3
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers put back
    # the requeued job runs the same command: on SLURM, Lightning (and fulmen) resume from the hpc checkpoint
    again = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    again.fit(Tiny(), make_loader(64, 8))
    assert again.ckpt_path.endswith("hpc_ckpt_1.ckpt") and again.global_step == 16


def test_sigterm_in_process_checkpoint_is_found_by_last_and_handlers_are_restored(tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        seen = []

        class Look(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                seen.append(signal.getsignal(signal.SIGTERM))

        trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[Look(), SendSignal(5, signal.SIGTERM)])
        with pytest.raises(SIGTERMException) as info:
            trainer.fit(Tiny(), make_loader(64, 8))
        assert info.value.code == 143 and trainer.received_sigterm is False  # fit is over: no handler any more
        assert seen[0] is not mine and signal.getsignal(signal.SIGTERM) is mine
        resumed = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
        resumed.fit(Tiny(), make_loader(64, 8), ckpt_path="last")
        assert resumed.ckpt_path.endswith(os.path.join("checkpoints", "preempted.ckpt")) and resumed.global_step == 16
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_fit_in_a_thread_leaves_signal_handlers_alone(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    result = {}

    def run():
        trainer = quiet_trainer(max_epochs=1)
        trainer.fit(Tiny(), make_loader(32, 8))
        result["steps"] = trainer.global_step

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert result == {"steps": 4} and signal.getsignal(signal.SIGTERM) == before


def test_ranks_vote_on_stopping_every_few_steps_and_read_the_vote_a_step_later():
    """With several processes the flag goes to a vote through the strategy every SYNC_EVERY steps, not on
    every step, and nobody waits for it: its result is read after the next optimizer step."""
    from fulmen.trainer.signals import SYNC_EVERY, Preemption

    started, read = [], []

    class TwoRanks:
        world_size = 2

        def start_boolean_decision(self, decision, all=True):
            vote = len(started)
            started.append((decision, all))
            # the other rank had a signal by the second vote
            return lambda: read.append(vote) or vote == 1

    fake = type("T", (), {"strategy": TwoRanks()})()
    p = Preemption(fake)
    checks = {n: p.check(n) for n in range(1, 2 * SYNC_EVERY + 2)}
    assert [n for n, stop in checks.items() if stop] == [2 * SYNC_EVERY + 1]
    assert started == [(False, False), (False, False)] and read == [0, 1]


def test_ctrl_c_ends_as_in_lightning(tmp_path):
    """KeyboardInterrupt: status interrupted, on_exception hooks, OnExceptionCheckpoint's file, SystemExit(1)."""
    from fulmen.callbacks import OnExceptionCheckpoint

    class Boom(Tiny):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    probe = SendSignal(at=-1, signum=None)
    before = signal.getsignal(signal.SIGINT)
    trainer = quiet_trainer(max_epochs=1, callbacks=[probe, OnExceptionCheckpoint(tmp_path)])
    with pytest.raises(SystemExit) as info:
        trainer.fit(Boom(), make_loader(64, 8))
    assert info.value.code == 1 and trainer.interrupted and trainer.state.status == "interrupted"
    assert isinstance(probe.seen_exception, KeyboardInterrupt)
    assert load_checkpoint(tmp_path / "on_exception.ckpt")["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) == before


DDP_CHILD = textwrap.dedent('''
    import os, signal, sys
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset
    import fulmen as pl

    root = sys.argv[1]
    torch.set_num_threads(1)

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class SignalOnRankOne(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_rank == 1 and trainer.global_step == 3 and not os.path.exists(os.path.join(root, "sent")):
                open(os.path.join(root, "sent"), "w").close()
                os.kill(os.getpid(), signal.SIGTERM)  # only this rank is told

        def on_exception(self, trainer, pl_module, exception):
            # written whole, then renamed: rank 0 waits for rank 1's file to exist, and the launcher may end
            # rank 1 right after, so the file must never exist half-written
            tmp = os.path.join(root, f".stopped{trainer.global_rank}")
            with open(tmp, "w") as f:
                f.write(str(trainer.global_step))
            os.replace(tmp, os.path.join(root, f"stopped{trainer.global_rank}"))
            if trainer.global_rank == 0:  # when rank 0 exits, the launcher ends rank 1: let it report first
                import time

                for _ in range(600):
                    if os.path.exists(os.path.join(root, "stopped1")):
                        break
                    time.sleep(0.05)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=root, callbacks=[SignalOnRankOne()])
    trainer.fit(Net(), loader, ckpt_path="last")
    if trainer.global_rank == 0:
        open(os.path.join(root, "done"), "w").write(str(trainer.global_step))
''')


def test_under_ddp_every_rank_stops_at_the_same_step(tmp_path):
    """Only rank 1 gets SIGTERM; the ranks agree a step after the next sync point, save once and all exit 143."""
    from fulmen.trainer.signals import SYNC_EVERY

    script = tmp_path / "ddp_child.py"
    script.write_text(DDP_CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "FULMEN_LAUNCHER"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    first = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                           timeout=240)
    assert first.returncode == 143, first.stderr[-2000:]
    stopped = {(tmp_path / f"stopped{r}").read_text() for r in (0, 1)}
    # the vote of the first sync point after the signal is read a step later, on both ranks
    assert stopped == {str(SYNC_EVERY + 1)}
    assert load_checkpoint(tmp_path / "checkpoints" / "preempted.ckpt")["global_step"] == SYNC_EVERY + 1
    second = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "done").read_text() == "32"  # 256 samples / (4 per batch x 2 ranks)
