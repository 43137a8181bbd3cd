"""Misuse fails early, with one family of exceptions whose message says what to write instead,
and leaves no half-written run directory behind."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.errors import FulmenError, MisconfigurationException, UnknownArgumentError
from helpers import BoringModel, make_loader, quiet_trainer


def _fit_fails(model, loader=None, match="", root=None, **kwargs):
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, **kwargs)
    with pytest.raises(FulmenError, match=match):
        trainer.fit(model, loader if loader is not None else make_loader())
    return trainer


def _nothing_written(root):
    return not os.path.exists(root) or not any(files for _, _, files in os.walk(root))


def test_missing_training_step(tmp_path):
    class M(pl.LightningModule):
        def configure_optimizers(self):
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    _fit_fails(M(), match="training_step", root=tmp_path / "run")
    assert _nothing_written(tmp_path / "run")


def test_missing_configure_optimizers(tmp_path):
    class M(BoringModel):
        configure_optimizers = pl.LightningModule.configure_optimizers

    _fit_fails(M(), match=r"configure_optimizers.*torch\.optim\.Adam", root=tmp_path / "run")
    assert _nothing_written(tmp_path / "run")


@pytest.mark.parametrize("returned", ["adam", 3, {"lr_scheduler": None}, [1, 2], (["x"], [])])
def test_configure_optimizers_returning_something_unusable(tmp_path, returned):
    class M(BoringModel):
        def configure_optimizers(self):
            return returned

    _fit_fails(M(), match="configure_optimizers", root=tmp_path / "run")
    assert _nothing_written(tmp_path / "run")


@pytest.mark.parametrize("returned, match", [
    (lambda loss: "loss", "training_step returned a str"),
    (lambda loss: [loss], "training_step returned a list"),
    (lambda loss: {"los": loss}, "without 'loss'"),
    (lambda loss: loss.detach(), "does not require grad"),
])
def test_training_step_returning_the_wrong_thing(returned, match):
    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            return returned(super().training_step(batch, batch_idx))

    with pytest.raises(MisconfigurationException, match=match):
        quiet_trainer(max_epochs=1).fit(M(), make_loader())


def test_training_step_returning_none_skips_the_step():
    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 else loss

    model = M()
    before = model.layer.weight.detach().clone()
    steps = []

    class Spy(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            steps.append(trainer.global_step)

    quiet_trainer(max_epochs=1, callbacks=[Spy()]).fit(model, make_loader(64, 8))
    assert len(steps) == 4  # backward ran only for the 4 batches that returned a loss
    assert not torch.equal(before, model.layer.weight)


def test_empty_dataloader_warns_and_trains_nothing(tmp_path):
    # Lightning goes on with an empty loader (a warning, no step); so does fulmen
    empty = DataLoader(TensorDataset(torch.randn(0, 32), torch.zeros(0, dtype=torch.long)), batch_size=4)
    model = BoringModel()
    before = model.layer.weight.detach().clone()
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match=r"training dataloader is empty \(0 batches\)"):
        trainer.fit(model, empty)
    assert trainer.global_step == 0 and torch.equal(before, model.layer.weight)
    with pytest.warns(UserWarning, match=r"test dataloader is empty"):
        assert trainer.test(model, empty, verbose=False) == []


def test_unknown_trainer_argument_suggests_the_closest():
    with pytest.raises(UnknownArgumentError, match="Did you mean `max_epochs`"):
        pl.Trainer(max_epoch=3)
    with pytest.raises(TypeError):  # also what plain Python code expects
        pl.Trainer(no_such_flag=1)


@pytest.mark.parametrize("flag", ["limit_train_batches", "limit_val_batches", "overfit_batches", "val_check_interval"])
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_fraction_outside_range(flag, value):
    with pytest.raises(MisconfigurationException, match=flag):
        pl.Trainer(**{flag: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_accelerator():
    with pytest.raises(MisconfigurationException, match="accelerator='cpu'"):
        pl.Trainer(accelerator="cuda")
    with pytest.raises(MisconfigurationException, match="not known"):
        pl.Trainer(accelerator="tpu-ish")


def test_fraction_that_gives_no_batch():
    with pytest.raises(MisconfigurationException, match=r"limit_train_batches=0.01` of a training dataloader with 2 batches is less than one batch.*limit_train_batches=0.5"):
        quiet_trainer(limit_train_batches=0.01, max_epochs=1).fit(BoringModel(), make_loader(16, 8))


def test_several_optimizers_need_manual_optimization():
    class M(BoringModel):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(MisconfigurationException, match="automatic_optimization = False"):
        quiet_trainer(max_epochs=1).fit(M(), make_loader())


def test_not_a_module():
    with pytest.raises(MisconfigurationException, match="LightningModule"):
        quiet_trainer().fit(torch.nn.Linear(2, 2), make_loader())


def test_loaders_and_datamodule_together():
    with pytest.raises(MisconfigurationException, match="one or the other"):
        quiet_trainer().fit(BoringModel(), make_loader(), datamodule=pl.LightningDataModule())


def test_no_training_data():
    with pytest.raises(MisconfigurationException, match="no training data"):
        quiet_trainer(max_epochs=1).fit(BoringModel())


def test_logging_outside_a_loggable_hook():
    class M(BoringModel):
        def on_fit_start(self):
            self.log("x", 1.0)

    with pytest.raises(MisconfigurationException, match="on_fit_start"):
        quiet_trainer(max_epochs=1).fit(M(), make_loader())


def test_every_error_is_in_the_family():
    for cls in (MisconfigurationException, UnknownArgumentError, pl.errors.CheckpointError):
        assert issubclass(cls, FulmenError)


def test_configuration_errors_begin_with_lightnings_sentences():
    # code and tests written for Lightning match on these sentences; fulmen's fix follows them
    import torch
    from torch.utils.data import DataLoader

    from fulmen.errors import MisconfigurationException

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Manual(M):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    class NoStep(pl.LightningModule):
        def configure_optimizers(self):
            return None

    loader = DataLoader(torch.randn(4, 2))
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    cases = [
        (lambda: pl.Trainer(**quiet).validate(M(), loader),
         r"^trainer.validate\(\) runs `validation_step`, and M has none: define"),
        (lambda: pl.Trainer(**quiet).test(M(), loader), r"^trainer.test\(\) runs `test_step`, and M has none"),
        (lambda: pl.Trainer(max_steps=1, gradient_clip_val=1.0, **quiet).fit(Manual(), loader),
         r"^`Trainer\(gradient_clip_val=1\.0\)` asks for automatic gradient clipping, but .* drop the flag and "
         r".*clip_gradients"),
        (lambda: pl.Trainer(max_steps=1, accumulate_grad_batches=2, **quiet).fit(Manual(), loader),
         r"^`Trainer\(accumulate_grad_batches=2\)` asks for automatic gradient accumulation"),
        (lambda: pl.Trainer(max_steps=1, **quiet).fit(NoStep(), loader),
         r"^trainer.fit needs a training step, and NoStep has none"),
    ]
    for run, match in cases:
        with pytest.raises(MisconfigurationException, match=match):
            run()
