"""LightningModule's own API: hyperparameters, properties, printing, logging outside a run."""

from argparse import Namespace

import pytest
import torch
from torch import nn

import fulmen as pl
from fulmen.utilities import AttributeDict
from helpers import BoringModel, make_loader, quiet_trainer


class WithHparams(pl.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.1, backbone=None, **extra):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.layer = nn.Linear(hidden, 1)


class Child(WithHparams):
    def __init__(self, depth: int = 2, **kwargs):
        super().__init__(**kwargs)


def test_save_hyperparameters_all_named_ignored_and_kwargs():
    m = WithHparams(hidden=4, backbone=nn.Linear(1, 1), dropout=0.5)
    assert m.hparams == {"hidden": 4, "lr": 0.1, "dropout": 0.5}
    assert m.hparams.hidden == 4 and isinstance(m.hparams, AttributeDict)


def test_save_hyperparameters_through_a_subclass_records_both_inits():
    m = Child(depth=3, hidden=5)
    assert m.hparams["depth"] == 3 and m.hparams["hidden"] == 5


def test_save_hyperparameters_by_name_and_from_a_dict():
    class Named(pl.LightningModule):
        def __init__(self, a=1, b=2):
            super().__init__()
            self.save_hyperparameters("a")

    class FromDict(pl.LightningModule):
        def __init__(self, cfg):
            super().__init__()
            self.save_hyperparameters(cfg)

    assert Named(a=5).hparams == {"a": 5}
    assert FromDict({"x": 1}).hparams == {"x": 1}
    assert FromDict(Namespace(y=2)).hparams == {"y": 2}
    with pytest.raises(pl.errors.MisconfigurationException, match="not an argument"):
        class Bad(pl.LightningModule):
            def __init__(self, a=1):
                super().__init__()
                self.save_hyperparameters("nope")

        Bad()


def test_hparams_initial_is_unaffected_by_later_edits():
    m = WithHparams()
    m.hparams.lr = 5.0
    assert m.hparams_initial.lr == 0.1


def test_properties_without_and_with_a_trainer():
    m = BoringModel()
    assert (m.current_epoch, m.global_step, m.logger, m.loggers) == (0, 0, None, [])
    assert m.device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        m.trainer
    with pytest.warns(UserWarning, match="not attached"):
        m.log("ignored", 1.0)  # outside a run, as in Lightning, logging does nothing but say so
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(m, make_loader(16, 8))
    assert m.trainer is trainer and m.global_step == 2


def test_print_only_on_rank_zero(capsys, monkeypatch):
    m = BoringModel()
    m.print("hello")
    monkeypatch.setattr(pl.utilities.rank_zero_only, "rank", 1)
    m.print("hidden")
    assert capsys.readouterr().out == "hello\n"


def test_freeze_and_unfreeze():
    m = BoringModel()
    m.freeze()
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    m.unfreeze()
    assert m.training and all(p.requires_grad for p in m.parameters())


def test_log_dict_and_callback_metrics():
    class M(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log_dict({"a": 1.0, "b": torch.tensor(2.0)})

    trainer = quiet_trainer()
    trainer.validate(M(), make_loader(16, 8), verbose=False)
    assert {k: v.item() for k, v in trainer.callback_metrics.items()} == {"a": 1.0, "b": 2.0}


def test_optimizers_and_lr_schedulers_accessors():
    seen = {}

    class M(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

        def on_train_start(self):
            seen["opt"] = self.optimizers()
            seen["sched"] = self.lr_schedulers()

    quiet_trainer(max_epochs=1).fit(M(), make_loader(16, 8))
    assert isinstance(seen["opt"].optimizer, torch.optim.SGD)
    assert isinstance(seen["sched"], torch.optim.lr_scheduler.StepLR)


class _Exportable(pl.LightningModule):
    """A module whose inputs arrive through the batch-transfer hooks, to check exports use them."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.layer(x))

    def on_before_batch_transfer(self, batch, dataloader_idx):
        return batch * 0 + 1 if isinstance(batch, torch.Tensor) else batch


def test_to_torchscript_scripts_and_traces_in_eval_mode_and_saves(tmp_path):
    model = _Exportable()
    x = torch.randn(2, 4)
    scripted = model.to_torchscript(tmp_path / "scripted.pt")
    assert model.training  # the mode is restored
    loaded = torch.jit.load(str(tmp_path / "scripted.pt"))
    expected = model.eval()(x)
    assert torch.allclose(scripted(x), expected) and torch.allclose(loaded(x), expected)  # dropout off: eval mode

    model.train()
    traced = model.to_torchscript(method="trace", example_inputs=torch.randn(5, 4))
    assert torch.allclose(traced(x), model.eval()(x))
    model.example_input_array = torch.randn(1, 4)
    assert isinstance(model.to_torchscript(method="trace"), torch.jit.ScriptModule)

    trainer = quiet_trainer(max_steps=1)
    model2 = BoringModel()
    trainer.fit(model2, make_loader())
    assert torch.allclose(model2.to_torchscript()(torch.ones(1, 32)), model2(torch.ones(1, 32)))  # after fit too


def test_to_torchscript_errors_keep_lightnings_words():
    model = _Exportable()
    with pytest.raises(ValueError, match="The 'method' parameter only supports 'script' or 'trace', but value given"):
        model.to_torchscript(method="compile")
    with pytest.raises(pl.errors.MisconfigurationException,
                       match=r"method='trace'.*example_inputs=.*example_input_array"):
        model.to_torchscript(method="trace")


def test_to_onnx_exports_a_graph_that_computes_the_same(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = _Exportable().eval()
    model.example_input_array = torch.randn(2, 4)
    path = tmp_path / "m.onnx"
    model.train()
    model.to_onnx(path, dynamo=False, input_names=["x"])
    assert model.training
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["x"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    assert any(w.shape == (3, 4) and torch.allclose(torch.from_numpy(w.copy()), model.layer.weight) for w in weights.values())


def test_to_onnx_with_torchs_default_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    model = _Exportable()
    program = model.to_onnx(tmp_path / "d.onnx", torch.randn(2, 4))
    onnx.checker.check_model(onnx.load(str(tmp_path / "d.onnx")))
    assert program is not None  # torch's ONNXProgram


def test_to_onnx_names_what_is_missing(monkeypatch):
    import fulmen._utils as imports

    model = _Exportable()
    present = {"onnx", "onnxscript"}
    monkeypatch.setattr(imports, "package_available", lambda name: name in present)
    with pytest.raises(pl.errors.MisconfigurationException,
                       match="Could not export to ONNX since neither `input_sample` nor `model.example_input_array`"):
        model.to_onnx("x.onnx")
    present.discard("onnxscript")
    with pytest.raises(pl.errors.MissingDependencyError, match=r"onnxscript.*pip install 'fulmen\[onnx\]'"):
        model.to_onnx("x.onnx", torch.randn(1, 4))
    present.discard("onnx")
    with pytest.raises(pl.errors.MissingDependencyError, match=r"`onnx`.*pip install 'fulmen\[onnx\]'"):
        model.to_onnx("x.onnx", torch.randn(1, 4), dynamo=False)


def test_unpicklable_and_module_hparams_are_left_out_of_checkpoints_with_one_warning(tmp_path):
    """A lambda, a local class or an open file among the arguments never breaks the first checkpoint save;
    each is dropped with one warning naming the ignore=[...] fix, as Lightning does. A module argument is
    left out too (its weights are in the state_dict), with Lightning's advice."""
    import warnings

    class Local(nn.Module):  # defined in a function: pickle cannot find it
        pass

    class Hp(BoringModel):
        def __init__(self, act=None, fn=None, handle=None, head=None, width=4):
            super().__init__()
            self.save_hyperparameters()

    handle = open(tmp_path / "notes.txt", "w")
    with pytest.warns(UserWarning, match=r"'head' is an nn.Module.*ignore=\['head'\]"):
        model = Hp(act=Local, fn=lambda x: x, handle=handle, head=nn.Linear(1, 1))
    assert model.hparams.width == 4 and model.hparams.act is Local  # still there while the program runs
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, make_loader(16))
        trainer.save_checkpoint(tmp_path / "again.ckpt")
    removed = sorted(str(w.message).split("'")[1] for w in caught if "cannot be pickled" in str(w.message))
    assert removed == ["act", "fn", "handle"]  # one warning each, over several saves
    assert all(f"ignore=['{k}']" in str(w.message) for k in removed for w in caught if f"'{k}' removed" in str(w.message))
    for path in [trainer.checkpoint_callback.best_model_path, tmp_path / "again.ckpt"]:
        saved = torch.load(path)["hyper_parameters"]
        assert saved == {"width": 4}
    handle.close()
    restored = Hp.load_from_checkpoint(tmp_path / "again.ckpt", head=nn.Linear(1, 1))
    assert restored.hparams.width == 4


def test_clip_gradients_conflicting_with_the_trainers_flags_raises_as_lightning():
    class Clips(BoringModel):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=self.val, gradient_clip_algorithm=self.algorithm)

    model = Clips()
    model.val, model.algorithm = 0.5, None
    with pytest.raises(pl.errors.MisconfigurationException,
                       match=r"You have set `Trainer\(gradient_clip_val=1.0\)` and have passed `clip_gradients\("
                             r"gradient_clip_val=0.5\)`. Please use only one of them."):
        quiet_trainer(max_steps=1, gradient_clip_val=1.0).fit(model, make_loader())
    model.val, model.algorithm = None, "value"
    with pytest.raises(pl.errors.MisconfigurationException, match="gradient_clip_algorithm='norm'"):
        quiet_trainer(max_steps=1, gradient_clip_val=1.0, gradient_clip_algorithm="norm").fit(model, make_loader())
    model.val, model.algorithm = None, None  # the flags' values are used: a clip by value at 1e-4
    quiet_trainer(max_steps=1, gradient_clip_val=1e-4, gradient_clip_algorithm="value").fit(model, make_loader())
