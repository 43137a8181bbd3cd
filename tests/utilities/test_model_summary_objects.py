"""fulmen.utilities.model_summary: ModelSummary objects with Lightning's attributes and figures."""

import torch
from torch import nn

from fulmen.demos import BoringModel
from fulmen.utilities.model_summary import (
    LayerSummary,
    ModelSummary,
    get_formatted_model_size,
    get_human_readable_count,
    summarize,
)


class Net(BoringModel):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
        self.block[1].eval()
        self.frozen = nn.Linear(4, 3, bias=False)
        self.frozen.weight.requires_grad_(False)


def test_summary_lists_each_row_and_the_totals_as_lightning_does():
    summary = ModelSummary(Net(), max_depth=1)
    assert summary.layer_names == ["layer", "block", "frozen"]
    assert summary.layer_types == ["Linear", "Sequential", "Linear"]
    assert summary.param_nums == [66, 12 + 8, 12]
    assert summary.training_modes == [True, True, True]
    assert summary.total_training_modes == {"train": 4, "eval": 1}
    assert summary.total_parameters == 98 and summary.trainable_parameters == 86
    assert summary.total_layer_params == 98
    assert summary.model_size == 98 * 4 / 1e6
    assert summary.in_sizes == ["?"] * 3 and summary.total_flops == 0
    deep = summarize(Net(), max_depth=-1)
    assert deep.layer_names == ["layer", "block", "block.0", "block.1", "frozen"]
    assert deep.training_modes[3] is False


def test_example_input_fills_sizes_flops_and_the_callback_columns():
    model = BoringModel()
    model.example_input_array = torch.randn(2, 32)
    summary = summarize(model)
    assert summary.in_sizes == [[2, 32]] and summary.out_sizes == [[2, 2]] and summary.total_flops == 256
    data = dict(summary._get_summary_data())
    assert list(data) == [" ", "Name", "Type", "Params", "Mode", "FLOPs", "In sizes", "Out sizes"]
    assert data["Params"] == ["66  "] and data["FLOPs"] == ["256  "] and data["In sizes"] == ["[2, 32]"]
    assert "layer" in str(summary) and "Trainable params" in str(summary)


def test_counts_and_sizes_spelled_as_lightning():
    assert [get_human_readable_count(n) for n in (0, 123, 1234, 2_000_000, 3e9, 4e12)] == [
        "0  ", "123  ", "1.2 K", "2.0 M", "3.0 B", "4.0 T"]
    # three digits before the unit take no decimal, as in Lightning's "544 K     Total Flops"
    assert [get_human_readable_count(n) for n in (512_000, 544_000, 99_950, 123_456_789, 999_999)] == [
        "512 K", "544 K", "100.0 K", "123 M", "999 K"]
    assert get_formatted_model_size(1.23456) == "1.235"


def test_layer_summary_records_its_first_forward_then_detaches():
    layer = nn.Linear(3, 2)
    row = LayerSummary(layer)
    assert row.in_size == "?" and row.layer_type == "Linear" and row.num_parameters == 8 and row.training
    layer(torch.randn(5, 3))
    assert row.in_size == [5, 3] and row.out_size == [5, 2]
    layer(torch.randn(7, 3))
    assert row.in_size == [5, 3] and not layer._forward_hooks
