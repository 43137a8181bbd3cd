"""Lightning 1.x hooks, signatures and Trainer flags fail early with the 2.x way to write them."""

import pytest

import fulmen as pl
from fulmen.errors import FulmenError, LegacyAPIError, UnknownArgumentError
from helpers import BoringModel, make_loader, quiet_trainer


class MultiOptimizer1x(BoringModel):
    def training_step(self, batch, batch_idx, optimizer_idx):
        return super().training_step(batch, batch_idx)


class TrainingEpochEnd(BoringModel):
    def training_epoch_end(self, outputs):
        pass


class ValidationEpochEnd(BoringModel):
    def validation_epoch_end(self, outputs):
        pass


class EvalTestEpochEnd(BoringModel):
    def test_epoch_end(self, outputs):
        pass


class EpochEndWithOutputs(BoringModel):
    def on_train_epoch_end(self, outputs):
        pass


class OptimizerStep1x(BoringModel):
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure, on_tpu, using_lbfgs):
        optimizer.step(closure=optimizer_closure)


@pytest.mark.parametrize("model_cls, run, match", [
    (MultiOptimizer1x, "fit", r"takes `optimizer_idx`.*automatic_optimization = False.*self.optimizers\(\)"),
    (TrainingEpochEnd, "fit", r"`training_epoch_end`.*Use `on_train_epoch_end\(self\)`"),
    (ValidationEpochEnd, "fit", r"`validation_epoch_end`.*Use `on_validation_epoch_end\(self\)`"),
    (ValidationEpochEnd, "validate", r"`validation_epoch_end`.*Use `on_validation_epoch_end\(self\)`"),
    (EvalTestEpochEnd, "test", r"`test_epoch_end`.*Use `on_test_epoch_end\(self\)`"),
    (EpochEndWithOutputs, "fit", r"on_train_epoch_end takes `outputs`.*Write `on_train_epoch_end\(self\)`"),
    (OptimizerStep1x, "fit", r"optimizer_step takes `optimizer_idx`.*optimizer_step\(self, epoch, batch_idx, optimizer, "
                             r"optimizer_closure\)"),
])
def test_legacy_module_hooks_fail_before_any_step_with_the_2x_way(model_cls, run, match):
    model = model_cls()
    trainer = quiet_trainer(max_epochs=1)
    with pytest.raises(LegacyAPIError, match=match) as err:
        getattr(trainer, run)(model, make_loader())
    assert isinstance(err.value, FulmenError) and isinstance(err.value, NotImplementedError)
    assert trainer.global_step == 0


def test_legacy_callback_hooks_and_signatures():
    class OnEpochEnd(pl.Callback):
        def on_epoch_end(self, trainer, pl_module):
            pass

    class OnTrainEpochEndWithOutputs(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module, outputs):
            pass

    class Fine(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            self.ran = True

    # Lightning 2.x skips a removed callback hook and goes on: a warning, and the run ends normally
    with pytest.warns(UserWarning, match=r"Callback OnEpochEnd defines `on_epoch_end`.*on_train_epoch_end"):
        trainer = quiet_trainer(max_epochs=1, callbacks=[OnEpochEnd()])
        trainer.fit(BoringModel(), make_loader())
    assert trainer.global_step == 8
    with pytest.raises(LegacyAPIError, match=r"takes `outputs`.*on_train_epoch_end\(self, trainer, pl_module\)"):
        quiet_trainer(max_epochs=1, callbacks=[OnTrainEpochEndWithOutputs()]).fit(BoringModel(), make_loader())
    fine = Fine()
    quiet_trainer(max_epochs=1, callbacks=[fine]).fit(BoringModel(), make_loader())
    assert fine.ran


@pytest.mark.parametrize("flag, match", [
    ("gpus", r"accelerator='gpu', devices=N"),
    ("auto_lr_find", r"Tuner\(trainer\).lr_find\(model\)"),
    ("auto_scale_batch_size", r"Tuner\(trainer\).scale_batch_size\(model\)"),
    ("resume_from_checkpoint", r"trainer.fit\(model, ckpt_path="),
    ("replace_sampler_ddp", r"use_distributed_sampler="),
    ("track_grad_norm", r"grad_norm"),
    ("amp_backend", r"precision='16-mixed'"),
])
def test_removed_trainer_flags_say_what_to_write(flag, match):
    with pytest.raises(UnknownArgumentError, match=rf"`Trainer\({flag}=...\)` was removed in Lightning 2.0.*{match}") as err:
        pl.Trainer(**{flag: 1})
    assert isinstance(err.value, TypeError)  # what Lightning (and Python) raise for an unknown argument
