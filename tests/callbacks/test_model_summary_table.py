"""The model summary: counts, sizes, modes, FLOPs and depth for a known model (Lightning's numbers)."""

import pytest
import torch
from torch import nn

import fulmen as pl
from fulmen.callbacks import ModelSummary
from fulmen.errors import MisconfigurationException
from fulmen.summary import summarize


class Known(pl.LightningModule):
    def __init__(self, example=True):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.BatchNorm1d(64))  # 2112 + 0 + 128
        self.head = nn.Linear(64, 2)  # 130, frozen below
        self.head.requires_grad_(False)
        self.enc[2].eval()
        if example:
            self.example_input_array = torch.zeros(4, 32)

    def forward(self, x):
        return self.head(self.enc(x))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_counts_sizes_and_modes():
    s = summarize(Known(), max_depth=-1)
    assert [(l.name, l.type, l.params, l.training) for l in s.layers] == [
        ("enc", "Sequential", 2240, True), ("enc.0", "Linear", 2112, True), ("enc.1", "ReLU", 0, True),
        ("enc.2", "BatchNorm1d", 128, False), ("head", "Linear", 130, True),
    ]
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (2370, 2240, 130)
    assert s.model_size_mb == pytest.approx(2370 * 4 / 1e6)
    assert (s.train_modules, s.eval_modules) == (4, 1)
    assert [(l.in_size, l.out_size, l.flops) for l in s.layers] == [
        ([4, 32], [4, 64], 16384), ([4, 32], [4, 64], 16384), ([4, 64], [4, 64], 0), ([4, 64], [4, 64], 0),
        ([4, 64], [4, 2], 1024),
    ]
    assert s.total_flops == 17408


def test_printed_table_matches_lightnings_figures():
    model = Known()
    text = str(summarize(model, max_depth=1))
    assert text.splitlines() == [  # exactly what Lightning 2.6 prints for this model
        "  | Name | Type       | Params | Mode  | FLOPs  | In sizes | Out sizes",
        "-" * 76,
        "0 | enc  | Sequential | 2.2 K  | train | 16.4 K | [4, 32]  | [4, 64]  ",
        "1 | head | Linear     | 130    | train | 1.0 K  | [4, 64]  | [4, 2]   ",
        "-" * 76,
        "2.2 K     Trainable params",
        "130       Non-trainable params",
        "2.4 K     Total params",
        "0.009     Total estimated model params size (MB)",
        "4         Modules in train mode",
        "1         Modules in eval mode",
        "17.4 K    Total Flops",
    ]
    assert model.enc[2].training is False and model.enc[0].training is True  # modes restored after tracing


def test_depth_and_no_example_input():
    model = Known(example=False)
    assert [l.name for l in summarize(model, max_depth=2).layers] == ["enc", "enc.0", "enc.1", "enc.2", "head"]
    assert summarize(model, max_depth=0).layers == []
    text = str(summarize(model))
    assert "| FLOPs" in text and "In sizes" not in text and "2.4 K     Total params" in text  # FLOPs always, as Lightning
    with pytest.raises(MisconfigurationException, match="max_depth"):
        summarize(model, max_depth=-2)


def test_callback_prints_at_fit_start(capsys):
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    trainer.fit(Known(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 32)), batch_size=2))
    assert "2.4 K     Total params" in capsys.readouterr().out
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[ModelSummary(max_depth=0)])
    trainer.fit(Known(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 32)), batch_size=2))
    assert capsys.readouterr().out == ""


def test_rich_summary(capsys):
    pytest.importorskip("rich")
    from fulmen.callbacks import RichModelSummary

    RichModelSummary(max_depth=2).summarize(summarize(Known(), max_depth=2))
    out = capsys.readouterr().out
    assert "BatchNorm1d" in out and "2.4 K" in out and "Total params" in out and "eval" in out


def test_summarize_override_with_lightnings_signature_gets_the_table_and_totals(capsys):
    got = {}

    class Capture(ModelSummary):
        @staticmethod
        def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                      total_flops, **summarize_kwargs):
            got.update(data=dict(summary_data), total=total_parameters, trainable=trainable_parameters,
                       size=model_size, modes=total_training_modes, flops=total_flops, kwargs=summarize_kwargs)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[Capture(max_depth=1, extra="x")])
    trainer.fit(Known(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 32)), batch_size=2))
    assert capsys.readouterr().out == ""
    assert got["data"]["Name"] == ["enc", "head"] and got["data"]["Params"] == ["2.2 K", "130  "]
    assert got["data"]["FLOPs"] == ["16.4 K", "1.0 K"] and got["data"]["In sizes"] == ["[4, 32]", "[4, 64]"]
    assert (got["total"], got["trainable"], got["modes"], got["flops"]) == (2370, 2240, {"train": 4, "eval": 1}, 17408)
    assert got["size"] == pytest.approx(2370 * 4 / 1e6) and got["kwargs"] == {"extra": "x"}


def test_default_callback_prints_lightnings_table(capsys):
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    trainer.fit(Known(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 32)), batch_size=2))
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "  | Name | Type       | Params | Mode  | FLOPs  | In sizes | Out sizes",
        "-" * 76,
        "0 | enc  | Sequential | 2.2 K  | train | 16.4 K | [4, 32]  | [4, 64]  ",
        "1 | head | Linear     | 130    | train | 1.0 K  | [4, 64]  | [4, 2]   ",
    ]
    assert "130       Non-trainable params" in lines and "17.4 K    Total Flops" in lines
