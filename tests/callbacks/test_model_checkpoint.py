"""ModelCheckpoint: files on disk and best/last bookkeeping, compared with what Lightning 2.6 produced for the
same settings (recorded with pytorch-lightning 2.6 on this very script's model and schedule)."""

import os
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import ModelCheckpoint
from fulmen.checkpoint import get_filesystem, load_checkpoint
from fulmen.errors import MisconfigurationException

VAL = [0.5, 0.3, 0.4, 0.2, 0.6, 0.1]  # scripted val_loss per epoch


class Scripted(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.l(batch[0]).pow(2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(VAL[self.current_epoch % len(VAL)]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader():
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches per epoch


def _fit(callbacks, epochs=4, **trainer_kwargs):
    torch.manual_seed(0)
    kw = dict(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
              num_sanity_val_steps=0, callbacks=callbacks)
    kw.update(trainer_kwargs)
    trainer = pl.Trainer(**kw)
    trainer.fit(Scripted(), _loader(), _loader())
    return trainer


# Recorded from pytorch-lightning 2.6 (4 epochs x 4 steps): files left in dirpath, best/last paths, scores.
LIGHTNING = {
    'all': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=0-step=4.ckpt', 'epoch=1-step=8.ckpt', 'epoch=2-step=12.ckpt', 'epoch=3-step=16.ckpt']},
    'all_monitor': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=0-step=4.ckpt', 'epoch=1-step=8.ckpt', 'epoch=2-step=12.ckpt', 'epoch=3-step=16.ckpt'], 'kth': 'epoch=0-step=4.ckpt', 'score': 0.2, 'topk': {'epoch=0-step=4.ckpt': 0.5, 'epoch=1-step=8.ckpt': 0.3, 'epoch=2-step=12.ckpt': 0.4, 'epoch=3-step=16.ckpt': 0.2}},
    'default': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=3-step=16.ckpt']},
    'every2': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=1-step=8.ckpt', 'epoch=3-step=16.ckpt']},
    'last': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=3-step=16.ckpt', 'last.ckpt'], 'kth': 'epoch=3-step=16.ckpt', 'last': 'last.ckpt', 'score': 0.2, 'topk': {'epoch=3-step=16.ckpt': 0.2}},
    'link': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=3-step=16.ckpt', 'last.ckpt'], 'kth': 'epoch=3-step=16.ckpt', 'last': 'last.ckpt', 'links': {'last.ckpt': 'epoch=3-step=16.ckpt'}, 'score': 0.2, 'topk': {'epoch=3-step=16.ckpt': 0.2}},
    'none_last': {'files': ['last.ckpt'], 'last': 'last.ckpt'},
    'same_name': {'best': 'fixed.ckpt', 'files': ['fixed.ckpt']},
    'same_name_nover': {'best': 'fixed.ckpt', 'files': ['fixed.ckpt']},
    'steps': {'best': 'epoch=3-step=15.ckpt', 'files': ['epoch=0-step=3.ckpt', 'epoch=1-step=6.ckpt', 'epoch=2-step=12.ckpt', 'epoch=2-step=9.ckpt', 'epoch=3-step=15.ckpt']},
    'template': {'best': 'epoch=3-val_loss=0.20.ckpt', 'files': ['epoch=1-val_loss=0.30.ckpt', 'epoch=3-val_loss=0.20.ckpt'], 'kth': 'epoch=1-val_loss=0.30.ckpt', 'score': 0.2, 'topk': {'epoch=1-val_loss=0.30.ckpt': 0.3, 'epoch=3-val_loss=0.20.ckpt': 0.2}},
    'template_noauto': {'best': 'e03-vl0.200.ckpt', 'files': ['e03-vl0.200.ckpt'], 'kth': 'e03-vl0.200.ckpt', 'score': 0.2, 'topk': {'e03-vl0.200.ckpt': 0.2}},
    'top2_max': {'best': 'epoch=0-step=4.ckpt', 'files': ['epoch=0-step=4.ckpt', 'epoch=2-step=12.ckpt'], 'kth': 'epoch=2-step=12.ckpt', 'score': 0.5, 'topk': {'epoch=0-step=4.ckpt': 0.5, 'epoch=2-step=12.ckpt': 0.4}},
    'top2_min': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=1-step=8.ckpt', 'epoch=3-step=16.ckpt'], 'kth': 'epoch=1-step=8.ckpt', 'score': 0.2, 'topk': {'epoch=1-step=8.ckpt': 0.3, 'epoch=3-step=16.ckpt': 0.2}},
    'trainend': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=2-step=12.ckpt', 'epoch=3-step=16.ckpt'], 'kth': 'epoch=2-step=12.ckpt', 'score': 0.0083, 'topk': {'epoch=2-step=12.ckpt': 0.0126, 'epoch=3-step=16.ckpt': 0.0083}},
    'vci': {'best': 'epoch=3-step=14.ckpt', 'files': ['epoch=0-step=2.ckpt', 'epoch=0-step=4.ckpt', 'epoch=1-step=6.ckpt', 'epoch=1-step=8.ckpt', 'epoch=2-step=10.ckpt', 'epoch=2-step=12.ckpt', 'epoch=3-step=14.ckpt', 'epoch=3-step=16.ckpt'], 'kth': 'epoch=0-step=2.ckpt', 'score': 0.2, 'topk': {'epoch=0-step=2.ckpt': 0.5, 'epoch=0-step=4.ckpt': 0.5, 'epoch=1-step=6.ckpt': 0.3, 'epoch=1-step=8.ckpt': 0.3, 'epoch=2-step=10.ckpt': 0.4, 'epoch=2-step=12.ckpt': 0.4, 'epoch=3-step=14.ckpt': 0.2, 'epoch=3-step=16.ckpt': 0.2}},
    'weights': {'best': 'epoch=3-step=16.ckpt', 'files': ['epoch=3-step=16.ckpt']},
}
SETTINGS = {
    "default": {},
    "top2_min": dict(monitor="val_loss", save_top_k=2),
    "top2_max": dict(monitor="val_loss", save_top_k=2, mode="max"),
    "all": dict(save_top_k=-1),
    "all_monitor": dict(monitor="val_loss", save_top_k=-1),
    "none_last": dict(save_top_k=0, save_last=True),
    "last": dict(monitor="val_loss", save_last=True),
    "link": dict(monitor="val_loss", save_last="link"),
    "template": dict(monitor="val_loss", filename="{epoch}-{val_loss:.2f}", save_top_k=2),
    "template_noauto": dict(monitor="val_loss", filename="e{epoch:02d}-vl{val_loss:.3f}", auto_insert_metric_name=False),
    "steps": dict(every_n_train_steps=3, save_top_k=-1),
    "every2": dict(every_n_epochs=2, save_top_k=-1),
    "weights": dict(save_weights_only=True),
    "same_name": dict(filename="fixed", save_top_k=-1),
    "same_name_nover": dict(filename="fixed", save_top_k=-1, enable_version_counter=False),
    "trainend": dict(save_on_train_epoch_end=True, monitor="train_loss", save_top_k=2),
    "vci": dict(monitor="val_loss", save_top_k=-1),
}
TRAINER = {"vci": dict(val_check_interval=2)}


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_files_and_paths_match_lightning(tmp_path, case):
    cb = ModelCheckpoint(dirpath=tmp_path, **SETTINGS[case])
    _fit([cb], **TRAINER.get(case, {}))
    expected = LIGHTNING[case]
    rel = lambda p: os.path.relpath(p, tmp_path) if p else ""  # noqa: E731
    assert sorted(os.listdir(tmp_path)) == expected["files"]
    assert rel(cb.best_model_path) == expected.get("best", "")
    assert rel(cb.last_model_path) == expected.get("last", "")
    assert rel(cb.kth_best_model_path) == expected.get("kth", "")
    scores = {rel(k): round(float(v), 4) for k, v in cb.best_k_models.items()}
    if case == "trainend":  # train_loss values depend on float details: compare ranks, not digits
        assert sorted(scores) == sorted(expected["topk"])
    else:
        assert scores == expected.get("topk", {})
        assert (None if cb.best_model_score is None else round(float(cb.best_model_score), 4)) == expected.get("score")
    links = {f: os.readlink(tmp_path / f) for f in os.listdir(tmp_path) if os.path.islink(tmp_path / f)}
    assert links == expected.get("links", {})


def test_weights_only_files_hold_no_optimizer_state(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    _fit([cb], epochs=1)
    ckpt = load_checkpoint(cb.best_model_path)
    assert "state_dict" in ckpt and "optimizer_states" not in ckpt and "callbacks" not in ckpt
    full = ModelCheckpoint(dirpath=tmp_path / "full")
    _fit([full], epochs=1)
    ckpt = load_checkpoint(full.best_model_path)
    assert len(ckpt["optimizer_states"]) == 1 and full.state_key in ckpt["callbacks"]


def test_unlogged_monitor_names_the_logged_keys(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")
    with pytest.raises(MisconfigurationException, match=r"val_acc.*\['train_loss', 'val_loss'\].*self.log"):
        _fit([cb], epochs=1)


def test_default_dirpath_follows_logger_or_root(tmp_path):
    trainer = _fit(None, epochs=1, logger=True, default_root_dir=tmp_path / "a")
    ckpt = trainer.checkpoint_callback
    assert ckpt.dirpath == os.path.join(tmp_path, "a", "lightning_logs", "version_0", "checkpoints")
    assert os.listdir(ckpt.dirpath) == ["epoch=0-step=4.ckpt"]
    trainer = _fit(None, epochs=1, default_root_dir=tmp_path / "b")
    assert os.listdir(tmp_path / "b" / "checkpoints") == ["epoch=0-step=4.ckpt"]


def test_version_counter_across_runs(tmp_path):
    _fit([ModelCheckpoint(dirpath=tmp_path, save_last=True)], epochs=1)
    cb = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _fit([cb], epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert cb.last_model_path.endswith("last-v1.ckpt") and cb.best_model_path.endswith("epoch=0-step=4-v1.ckpt")


def test_train_time_interval_saves_by_clock(tmp_path, monkeypatch):
    import fulmen.callbacks.model_checkpoint as mc

    clock = iter(range(0, 10_000, 10))  # every call to monotonic() is 10 s later
    monkeypatch.setattr(mc.time, "monotonic", lambda: next(clock))
    cb = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(seconds=15), save_top_k=-1)
    _fit([cb], epochs=1)
    # start at t=0, batch ends at t=10 (no), 20 (yes: 20 s), 30 (no), 40 (yes)
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]


def test_format_checkpoint_name():
    cb = ModelCheckpoint(dirpath="/ckpts", filename="{epoch}-{val/loss:.2f}-{epoch_acc:.1f}")
    assert cb.format_checkpoint_name({"epoch": 2, "val/loss": 0.1234, "epoch_acc": torch.tensor(0.55)}) == \
        "/ckpts/epoch=2-val/loss=0.12-epoch_acc=0.6.ckpt"  # (0.55 rounds to 0.6 as a float32 0.5500000119)
    cb = ModelCheckpoint(filename="{missing:d}")
    assert cb.format_checkpoint_name({}) == "missing=0.ckpt"
    assert cb.format_checkpoint_name({}, ver=2) == "missing=0-v2.ckpt"


@pytest.mark.parametrize("kwargs, match", [
    # Lightning's words first (matched by code and tests written for it), then fulmen's hint
    (dict(save_top_k=-2), r"^Invalid value for save_top_k=-2\. Must be >= -1"),
    (dict(save_top_k=3), r"^ModelCheckpoint\(save_top_k=3, monitor=None\) is not a valid configuration.*monitor="),
    (dict(every_n_epochs=1, every_n_train_steps=5), "should be mutually exclusive. Pick one"),
    (dict(mode="maximum"), "^`mode` can be min, max but got maximum. Use mode='min' or mode='max'"),
    (dict(every_n_train_steps=-1), r"^Invalid value for every_n_train_steps=-1\. Must be >= 0"),
    (dict(save_last="yes"), "save_last"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        ModelCheckpoint(**kwargs)


def test_missing_monitor_keeps_lightnings_wording_and_type(tmp_path):
    import fulmen as pl
    from fulmen.demos import BoringModel

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ModelCheckpoint(monitor="val_acc")])
    with pytest.raises(RuntimeError, match=r"^`ModelCheckpoint\(monitor='val_acc'\)` could not find the monitored key "
                       r"in the returned metrics: .*HINT: Did you call `log\('val_acc', value\)` in the "
                       r"`LightningModule`\?") as err:
        trainer.fit(BoringModel())
    assert isinstance(err.value, MisconfigurationException)


def test_best_and_last_for_evaluation(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    trainer = _fit([cb], epochs=2)  # val_loss 0.5 then 0.3: best is epoch 1
    seen = []

    class Spy(Scripted):
        def on_validation_start(self):
            seen.append(float(self.l.weight.sum()))

    for which in ("best", "last"):
        ckpt = load_checkpoint(cb.best_model_path if which == "best" else cb.last_model_path)
        model = Spy()
        trainer.validate(model, _loader(), ckpt_path=which, verbose=False)
        assert seen[-1] == pytest.approx(float(ckpt["state_dict"]["l.weight"].sum()))
    assert trainer.checkpoint_callback.best_model_path.endswith("epoch=1-step=8.ckpt")


def test_memory_filesystem_dirpath():
    fs = get_filesystem("memory://")
    cb = ModelCheckpoint(dirpath="memory://mc_run/ckpts", monitor="val_loss", save_top_k=2, save_last=True)
    _fit([cb], epochs=3)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/mc_run/ckpts", detail=False))
    assert names == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt"]
    assert cb.best_model_path == "memory://mc_run/ckpts/epoch=1-step=8.ckpt"
    assert load_checkpoint(cb.best_model_path)["global_step"] == 8
    fs.rm("/mc_run", recursive=True)


def test_state_round_trips_through_checkpoint(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    _fit([cb], epochs=3)
    fresh = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    fresh.load_state_dict(load_checkpoint(cb.last_model_path)["callbacks"][cb.state_key])
    assert fresh.best_model_path == cb.best_model_path and fresh.last_model_path == cb.last_model_path
    assert {k: float(v) for k, v in fresh.best_k_models.items()} == {k: float(v) for k, v in cb.best_k_models.items()}
    moved = ModelCheckpoint(dirpath=tmp_path / "elsewhere", monitor="val_loss", save_top_k=2)
    moved.dirpath = os.path.realpath(tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match="dirpath changed"):
        moved.load_state_dict(load_checkpoint(cb.last_model_path)["callbacks"][cb.state_key])
    assert moved.best_model_path == cb.best_model_path and moved.best_k_models == {}


def test_save_on_exception(tmp_path):
    class Boom(Scripted):
        def training_step(self, batch, batch_idx):
            if self.global_step == 6:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    cb = ModelCheckpoint(dirpath=tmp_path, save_on_exception=True)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[cb])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), _loader(), _loader())
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt"]


def test_failed_save_keeps_earlier_files_and_consistent_bookkeeping(tmp_path, monkeypatch):
    """A save that fails mid-run (here: the directory turns read-only) raises naming the path, and
    top-k/best/last describe only files that are on disk and loadable."""
    import errno

    from fulmen import checkpoint as ck
    from fulmen.errors import CheckpointSaveError

    real_open = os.open

    def read_only_after_epoch_1(path, flags, *args):
        if str(path).startswith(str(tmp_path)) and trainer_ref[0].current_epoch >= 2 and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args)

    trainer_ref = []

    class Keep(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            trainer_ref.append(trainer)

    monkeypatch.setattr(ck.os, "open", read_only_after_epoch_1)
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    with pytest.raises(CheckpointSaveError, match="Permission denied") as info:
        _fit([Keep(), cb], epochs=4)
    assert str(tmp_path) in str(info.value)
    monkeypatch.undo()
    on_disk = sorted(os.listdir(tmp_path))
    assert on_disk == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert sorted(os.path.basename(p) for p in cb.best_k_models) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert os.path.basename(cb.best_model_path) == "epoch=1-step=8.ckpt" and float(cb.best_model_score) == pytest.approx(0.3)
    assert os.path.basename(cb.last_model_path) == "last.ckpt"
    for name in on_disk:
        assert load_checkpoint(tmp_path / name)["global_step"] in (4, 8)
