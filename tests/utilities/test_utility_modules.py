"""The ``fulmen.utilities`` submodules under Lightning's names behave as Lightning's do."""

import pickle
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.errors import MisconfigurationException, MissingDependencyError


def test_grad_norm_uses_lightnings_keys_and_values():
    from fulmen.utilities.grads import grad_norm

    layer = torch.nn.Linear(3, 2)
    assert grad_norm(layer, 2) == {}
    layer(torch.ones(4, 3)).sum().backward()
    norms = grad_norm(layer, 2)
    w, b = layer.weight.grad, layer.bias.grad
    assert set(norms) == {"grad_2.0_norm/weight", "grad_2.0_norm/bias", "grad_2.0_norm_total"}
    assert norms["grad_2.0_norm/weight"] == pytest.approx(w.norm().item())
    assert norms["grad_2.0_norm_total"] == pytest.approx(torch.cat([w.flatten(), b]).norm().item())
    assert set(grad_norm(layer, "inf", group_separator=".")) == {"grad_inf_norm.weight", "grad_inf_norm.bias",
                                                                "grad_inf_norm_total"}
    with pytest.raises(MisconfigurationException, match="positive"):
        grad_norm(layer, 0)


def test_is_picklable_and_attribute_dict():
    from fulmen.utilities import AttributeDict, is_picklable
    from fulmen.utilities.parsing import AttributeDict as AD

    assert AD is AttributeDict
    assert is_picklable({"lr": 0.1}) and not is_picklable(lambda x: x)
    with open(__file__) as handle:
        assert not is_picklable(handle)


def test_isolate_rng_restores_every_generator():
    import random

    from fulmen.utilities.seed import isolate_rng, seed_everything

    seed_everything(3)
    with isolate_rng():
        inside = (torch.rand(2), random.random())
    assert torch.equal(torch.rand(2), inside[0]) and random.random() == inside[1]


def test_memory_recognises_out_of_memory_errors():
    from fulmen.utilities.memory import garbage_collection_cuda, is_oom_error, recursive_detach

    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not is_oom_error(RuntimeError("shape mismatch")) and not is_oom_error(ValueError("CUDA out of memory"))
    garbage_collection_cuda()
    x = torch.ones(2, requires_grad=True)
    out = recursive_detach({"a": [x * 2]})
    assert not out["a"][0].requires_grad and torch.equal(out["a"][0], torch.full((2,), 2.0))


def test_is_overridden_finds_the_parent_itself_and_treats_none_as_not_overridden():
    from fulmen.demos import BoringModel
    from fulmen.utilities.model_helpers import is_overridden

    model = BoringModel()
    assert is_overridden("training_step", model) and not is_overridden("on_train_epoch_end", model)
    assert is_overridden("on_train_epoch_end", pl.callbacks.EarlyStopping(monitor="x")) is not None
    model.validation_step = None
    assert not is_overridden("validation_step", model)
    assert not is_overridden("training_step", None)
    with pytest.raises(MisconfigurationException, match="parent="):
        is_overridden("forward", torch.nn.Linear(1, 1))


def test_get_torchvision_model_names_the_extra_when_torchvision_is_missing(monkeypatch):
    import sys

    from fulmen.utilities.model_helpers import get_torchvision_model

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fulmen\[vision\]'"):
        get_torchvision_model("resnet18")


def test_imports_flags_do_not_import_the_packages():
    import subprocess
    import sys

    code = ("import sys; from fulmen.utilities.imports import _TORCHVISION_AVAILABLE, _RICH_AVAILABLE; "
            "print(_RICH_AVAILABLE, 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_rank_zero_helpers_and_warning_cache(recwarn):
    from fulmen.utilities.rank_zero import (
        LightningDeprecationWarning,
        WarningCache,
        rank_prefixed_message,
        rank_zero_deprecation,
        rank_zero_only,
    )

    assert rank_zero_only.rank == 0 and rank_prefixed_message("hi", 1) == "[rank: 1] hi"
    cache = WarningCache()
    for _ in range(3):
        cache.warn("once only")
    rank_zero_deprecation("old")
    messages = [(str(w.message), w.category) for w in recwarn]
    assert messages.count(("once only", UserWarning)) == 1 and ("old", LightningDeprecationWarning) in messages


def test_the_warnings_submodule_does_not_hide_python_warnings():
    import fulmen.utilities.warnings  # noqa: F401  (binds fulmen.utilities.warnings)
    from fulmen.utilities import rank_zero_warn
    from fulmen.utilities.warnings import PossibleUserWarning, disable_possible_user_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rank_zero_warn("visible", PossibleUserWarning)
        disable_possible_user_warnings()
        rank_zero_warn("hidden", PossibleUserWarning)
    assert [str(w.message) for w in seen] == ["visible"]


def test_enums_compare_as_their_values():
    from fulmen.utilities import GradClipAlgorithmType
    from fulmen.utilities.enums import LightningEnum

    assert GradClipAlgorithmType("norm") == "NORM" and GradClipAlgorithmType.VALUE == GradClipAlgorithmType("value")
    assert issubclass(GradClipAlgorithmType, LightningEnum) and GradClipAlgorithmType.from_str("Value").value == "value"
    assert pickle.loads(pickle.dumps(GradClipAlgorithmType.NORM)) is GradClipAlgorithmType.NORM


def test_signature_utils_and_data_helpers():
    from fulmen.utilities.data import extract_batch_size, has_len, sized_len
    from fulmen.utilities.signature_utils import is_param_in_hook_signature

    class M:
        def step(self, batch): ...
        def step2(self, batch, batch_idx): ...
        def step3(self, *args): ...

    m = M()
    assert not is_param_in_hook_signature(m.step, "batch_idx") and is_param_in_hook_signature(m.step2, "batch_idx")
    assert is_param_in_hook_signature(m.step3, "batch_idx") and not is_param_in_hook_signature(m.step3, "x", explicit=True)
    assert extract_batch_size({"x": torch.zeros(5, 2)}) == 5
    assert sized_len(iter([])) is None and has_len(DataLoader(range(4))) and not has_len(iter(range(3)))


def test_types_annotate_what_configure_optimizers_returns():
    import typing

    from fulmen.utilities.types import STEP_OUTPUT, LRSchedulerConfig, OptimizerLRScheduler, OptimizerLRSchedulerConfig

    assert torch.optim.Optimizer in typing.get_args(OptimizerLRScheduler)
    assert type(None) in typing.get_args(STEP_OUTPUT)
    assert LRSchedulerConfig(scheduler=None).interval == "epoch"
    assert set(OptimizerLRSchedulerConfig.__annotations__) == {"optimizer", "lr_scheduler", "monitor"}


@pytest.mark.parametrize("mode, expected", [
    ("max_size_cycle", [{"a": 2, "b": 2}] * 3),
    ("min_size", [{"a": 2, "b": 2}]),
    ("max_size", [{"a": 2, "b": 2}, {"a": 2, "b": None}, {"a": 2, "b": None}]),
])
def test_combined_loader_trains_and_evaluates_in_each_mode(mode, expected):
    from fulmen.utilities import CombinedLoader
    from fulmen.utilities.combined_loader import CombinedLoader as CL

    assert CL is CombinedLoader
    a, b = DataLoader(torch.randn(6, 2), batch_size=2), DataLoader(torch.randn(2, 2), batch_size=2)
    shape = lambda batch: {k: None if v is None else v.shape[0] for k, v in batch.items()}  # noqa: E731

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.train_seen, self.val_seen, self.seq_seen = [], [], []

        def training_step(self, batch, batch_idx):
            self.train_seen.append(shape(batch))
            return sum(self.layer(v).sum() for v in batch.values() if v is not None)

        def validation_step(self, batch, batch_idx):
            self.val_seen.append(shape(batch))

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.seq_seen.append((dataloader_idx, batch_idx))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Model()
    trainer = pl.Trainer(max_epochs=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, CombinedLoader({"a": a, "b": b}, mode), CombinedLoader({"a": a, "b": b}, mode))
    if mode != "max_size":  # Lightning trains in max_size mode with None for an exhausted loader, too
        assert model.train_seen == expected
    assert model.val_seen == expected
    trainer.test(model, CombinedLoader([a, b], "sequential"), verbose=False)
    assert model.seq_seen == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_shared_parameters_are_found_and_tied_again():
    from fulmen.utilities import find_shared_parameters, set_shared_parameters

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    assert find_shared_parameters(model) == [["0.weight", "1.weight"]]
    model[1].weight = torch.nn.Parameter(model[0].weight.detach().clone())  # e.g. after a device move
    assert find_shared_parameters(model) == []
    set_shared_parameters(model, [["0.weight", "1.weight"]])
    assert model[1].weight is model[0].weight


def test_measure_flops_counts_forward_and_backward():
    from fulmen.utilities import measure_flops

    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    forward = measure_flops(layer, lambda: layer(x))
    assert forward == 2 * 2 * 4 * 3
    assert measure_flops(layer, lambda: layer(x), lambda y: y.sum()) > forward


def test_suggested_max_num_workers_shares_the_cpus():
    import os

    from fulmen.utilities import suggested_max_num_workers

    cpus = len(os.sched_getaffinity(0))
    assert suggested_max_num_workers(1) == max(1, cpus - 1) and suggested_max_num_workers(10 * cpus) == 1
    with pytest.raises(MisconfigurationException, match="local_world_size"):
        suggested_max_num_workers(0)
