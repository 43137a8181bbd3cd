"""The hooks are called in Lightning 2.x's order.

The expected tables were written from Lightning 2.6's documented hook pseudo-code and checked
against what Lightning 2.6 records for the same recording module and callback.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl

calls: list[str] = []

CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end", "on_test_start",
    "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "state_dict", "on_save_checkpoint",
]
MODULE_HOOKS = [
    "configure_callbacks", "prepare_data", "setup", "teardown", "configure_model", "configure_optimizers",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_validation_model_eval", "on_validation_model_train",
    "on_validation_model_zero_grad", "on_test_model_eval", "on_test_model_train", "on_predict_model_eval",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer", "optimizer_step",
    "optimizer_zero_grad", "backward", "configure_gradient_clipping", "on_save_checkpoint", "train_dataloader",
    "val_dataloader", "test_dataloader", "predict_dataloader", "training_step", "validation_step", "test_step",
    "predict_step",
]


def _record(owner: type, name: str, prefix: str) -> None:
    original = getattr(owner, name)

    def wrapper(self, *args, **kwargs):
        label = prefix + name
        if name in ("setup", "teardown"):
            stage = kwargs.get("stage", args[-1] if args else None)
            label += f"({stage})"
        calls.append(label)
        return original(self, *args, **kwargs)

    setattr(owner, name, wrapper)


class RecordingCallback(pl.Callback):
    pass


class RecordingModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("v", self.layer(batch[0]).sum())

    def test_step(self, batch, batch_idx):
        self.log("t", self.layer(batch[0]).sum())

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)

    val_dataloader = test_dataloader = predict_dataloader = train_dataloader


for _name in CALLBACK_HOOKS:
    _record(RecordingCallback, _name, "Callback.")
for _name in MODULE_HOOKS:
    _record(RecordingModule, _name, "")

TRANSFER = ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"]


def _eval_batch(stage: str) -> list[str]:
    return [*TRANSFER, f"Callback.on_{stage}_batch_start", f"on_{stage}_batch_start", f"{stage}_step",
            f"Callback.on_{stage}_batch_end", f"on_{stage}_batch_end"]


def _eval_run(stage: str, batches: int) -> list[str]:
    body = [f"Callback.on_{stage}_epoch_start", f"on_{stage}_epoch_start"]
    for _ in range(batches):
        body += _eval_batch(stage)
    return [f"on_{stage}_model_eval", f"Callback.on_{stage}_start", f"on_{stage}_start", *body,
            f"Callback.on_{stage}_epoch_end", f"on_{stage}_epoch_end", f"Callback.on_{stage}_end", f"on_{stage}_end"]


TRAIN_BATCH = [
    *TRANSFER, "Callback.on_train_batch_start", "on_train_batch_start", "optimizer_step", "training_step",
    "Callback.on_before_zero_grad", "on_before_zero_grad", "optimizer_zero_grad", "Callback.on_before_backward",
    "on_before_backward", "backward", "Callback.on_after_backward", "on_after_backward",
    "Callback.on_before_optimizer_step", "on_before_optimizer_step", "configure_gradient_clipping",
    "Callback.on_train_batch_end", "on_train_batch_end",
]


def _trainer(tmp_path, **kwargs):
    from fulmen.callbacks import ModelCheckpoint

    return pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        callbacks=[RecordingCallback(), ModelCheckpoint(dirpath=tmp_path)], **kwargs,
    )


PREDICT_BATCH = [*TRANSFER, "Callback.on_predict_batch_start", "on_predict_batch_start", "predict_step",
                 "Callback.on_predict_batch_end", "on_predict_batch_end"]

# The expected order per entry point; docs/guides/module.md renders its hook-order tables from this dict.
EXPECTED = {
    "fit": [
        "configure_callbacks", "prepare_data", "Callback.setup(fit)", "setup(fit)", "configure_model",
        "configure_optimizers", "Callback.on_fit_start", "on_fit_start",
        "Callback.on_sanity_check_start", "val_dataloader", *_eval_run("validation", 1), "on_validation_model_train",
        "Callback.on_sanity_check_end",
        "train_dataloader", "Callback.on_train_start", "on_train_start",
        "Callback.on_train_epoch_start", "on_train_epoch_start", *TRAIN_BATCH,
        "on_validation_model_zero_grad", *_eval_run("validation", 1), "on_validation_model_train",
        "Callback.on_train_epoch_end", "on_train_epoch_end",
        "Callback.state_dict", "Callback.on_save_checkpoint", "on_save_checkpoint",
        "Callback.on_train_end", "on_train_end", "Callback.on_fit_end", "on_fit_end",
        "Callback.teardown(fit)", "teardown(fit)",
    ],
    "validate": [
        "configure_callbacks", "prepare_data", "Callback.setup(validate)", "setup(validate)", "configure_model",
        "val_dataloader", *_eval_run("validation", 1), "on_validation_model_train",
        "Callback.teardown(validate)", "teardown(validate)",
    ],
    "test": [
        "configure_callbacks", "prepare_data", "Callback.setup(test)", "setup(test)", "configure_model",
        "test_dataloader", *_eval_run("test", 2), "on_test_model_train",
        "Callback.teardown(test)", "teardown(test)",
    ],
    "predict": [
        "configure_callbacks", "prepare_data", "Callback.setup(predict)", "setup(predict)", "configure_model",
        "predict_dataloader", "on_predict_model_eval", "Callback.on_predict_start", "on_predict_start",
        "Callback.on_predict_epoch_start", "on_predict_epoch_start", *PREDICT_BATCH, *PREDICT_BATCH,
        "Callback.on_predict_epoch_end", "on_predict_epoch_end", "Callback.on_predict_end", "on_predict_end",
        "Callback.teardown(predict)", "teardown(predict)",
    ],
}


def test_fit_hook_order(tmp_path):
    calls.clear()
    _trainer(tmp_path).fit(RecordingModule())
    assert calls == EXPECTED["fit"]


def test_validate_hook_order(tmp_path):
    calls.clear()
    _trainer(tmp_path).validate(RecordingModule(), verbose=False)
    assert calls == EXPECTED["validate"]


def test_test_hook_order(tmp_path):
    calls.clear()
    _trainer(tmp_path).test(RecordingModule(), verbose=False)
    assert calls == EXPECTED["test"]


def test_predict_hook_order(tmp_path):
    calls.clear()
    model = RecordingModule()
    preds = _trainer(tmp_path).predict(model)
    assert calls == EXPECTED["predict"]
    assert len(preds) == 2 and preds[0].shape == (2, 1)
    assert model.training  # training mode restored after predict, as in Lightning


def test_steps_run_in_the_right_mode(tmp_path):
    seen = {}

    class Probe(RecordingModule):
        def training_step(self, batch, batch_idx):
            seen["train"] = (self.training, torch.is_grad_enabled())
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen["val"] = (self.training, torch.is_inference_mode_enabled(), torch.is_grad_enabled())
            return super().validation_step(batch, batch_idx)

    model = Probe()
    _trainer(tmp_path).fit(model)
    # validation inside fit runs under no_grad, not inference_mode, as in Lightning
    assert seen == {"train": (True, True), "val": (False, False, False)}
    assert model.training
