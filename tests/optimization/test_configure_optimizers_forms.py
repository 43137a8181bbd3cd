"""Every return form of ``configure_optimizers`` that Lightning accepts, and how schedulers step."""

import pytest
import torch

from _optim_helpers import Regressor, assert_same_weights, loader, make_net, quiet_trainer, reference_loop
from fulmen.errors import MisconfigurationException
from fulmen.trainer.optimizers import parse_optimizers

SGD = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731


@pytest.mark.parametrize("form", ["optimizer", "list", "tuple_of_lists", "dict", "list_of_dicts", "dict_no_sched"])
def test_each_single_optimizer_form_trains_like_plain_pytorch(form):
    def opt_fn(params):
        opt = SGD(params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)  # constant: leaves the numbers alone
        return {
            "optimizer": opt,
            "list": [opt],
            "tuple_of_lists": ([opt], [sched]),
            "dict": {"optimizer": opt, "lr_scheduler": sched},
            "list_of_dicts": [{"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}],
            "dict_no_sched": {"optimizer": opt},
        }[form]

    model = Regressor(opt_fn)
    expected = reference_loop(model.net, loader(), SGD, epochs=2)
    quiet_trainer(max_epochs=2).fit(model, loader())
    assert_same_weights(model.net, expected)


class LrRecorder(Regressor):
    def __init__(self, configure, acc=1):
        super().__init__()
        self._configure = configure
        self.trace = []

    def configure_optimizers(self):
        return self._configure(torch.optim.SGD(self.parameters(), lr=1.0))

    def validation_step(self, batch, batch_idx):
        self.log("vl", torch.tensor(1.0))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.trace.append(("b", self.current_epoch, batch_idx, self.global_step, self.trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self):
        self.trace.append(("e", self.current_epoch, self.global_step, self.trainer.optimizers[0].param_groups[0]["lr"]))


def _run(configure, acc=1, val=False):
    model = LrRecorder(configure)
    trainer = quiet_trainer(max_epochs=2, accumulate_grad_batches=acc, limit_val_batches=1 if val else 0)
    trainer.fit(model, loader(4, n=12), loader(4, n=12) if val else None)
    return model.trace, trainer


def test_epoch_scheduler_steps_before_the_last_batch_end_as_in_lightning():
    trace, _ = _run(lambda o: ([o], [torch.optim.lr_scheduler.StepLR(o, 1, 0.5)]))
    # recorded with pytorch-lightning 2.6 on the same set-up
    assert trace == [("b", 0, 0, 1, 1.0), ("b", 0, 1, 2, 1.0), ("b", 0, 2, 3, 0.5), ("e", 0, 3, 0.5),
                     ("b", 1, 0, 4, 0.5), ("b", 1, 1, 5, 0.5), ("b", 1, 2, 6, 0.25), ("e", 1, 6, 0.25)]


@pytest.mark.parametrize("acc, expected", [
    (1, [("b", 0, 0, 1, 1.0), ("b", 0, 1, 2, 0.5), ("b", 0, 2, 3, 0.5), ("e", 0, 3, 0.5),
         ("b", 1, 0, 4, 0.5), ("b", 1, 1, 5, 0.25), ("b", 1, 2, 6, 0.25), ("e", 1, 6, 0.25)]),
    (2, [("b", 0, 0, 0, 1.0), ("b", 0, 1, 1, 0.5), ("b", 0, 2, 2, 0.5), ("e", 0, 2, 0.5),
         ("b", 1, 0, 2, 0.5), ("b", 1, 1, 3, 0.25), ("b", 1, 2, 4, 0.25), ("e", 1, 4, 0.25)]),
])
def test_step_interval_with_frequency_counts_batches_of_the_epoch(acc, expected):
    cfg = lambda o: {"optimizer": o, "lr_scheduler": {  # noqa: E731
        "scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.5), "interval": "step", "frequency": 2, "name": "my-lr"}}
    trace, trainer = _run(cfg, acc)
    assert trace == expected
    assert trainer.lr_scheduler_configs[0].name == "my-lr"


def test_reduce_on_plateau_steps_on_its_monitored_metric_after_the_epoch():
    def cfg(o):
        return {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0), "monitor": "vl"}

    model = LrRecorder(cfg)
    trainer = quiet_trainer(max_epochs=3, limit_val_batches=1)
    trainer.fit(model, loader(4, n=12), loader(4, n=12))
    # vl is constant: the first epoch sets the best value, each later epoch is "no better" and cuts lr by 10
    epoch_lrs = [r[-1] for r in model.trace if r[0] == "e"]
    assert epoch_lrs == [1.0, 1.0, 0.1]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)


def test_reduce_on_plateau_needs_a_monitor_and_a_logged_metric():
    with pytest.raises(MisconfigurationException, match="monitor"):
        _run(lambda o: {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o)})
    with pytest.raises(MisconfigurationException, match="'missing'.*not logged"):
        _run(lambda o: {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o), "monitor": "missing"})
    with pytest.warns(UserWarning, match="'missing'"):
        trace, _ = _run(lambda o: {"optimizer": o, "lr_scheduler": {
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o), "monitor": "missing", "strict": False}})
    assert trace[-1][-1] == 1.0


def test_lr_scheduler_step_hook_replaces_stepping():
    calls = []

    class Custom(LrRecorder):
        def lr_scheduler_step(self, scheduler, metric):
            calls.append((self.global_step, metric))
            scheduler.step()
            scheduler.step()  # a custom policy: two steps at a time

    model = Custom(lambda o: ([o], [torch.optim.lr_scheduler.StepLR(o, 1, 0.5)]))
    quiet_trainer(max_epochs=2, limit_val_batches=0).fit(model, loader(4, n=12))
    assert calls == [(3, None), (6, None)]
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == 1.0 / 16


def test_two_optimizers_need_manual_optimization():
    class Two(Regressor):
        def configure_optimizers(self):
            return [SGD(self.net[0].parameters()), SGD(self.net[2].parameters())]

    with pytest.raises(MisconfigurationException, match="automatic_optimization = False"):
        quiet_trainer(max_epochs=1).fit(Two(), loader())


def test_none_warns_and_fits_without_changing_weights():
    class NoOpt(Regressor):
        def configure_optimizers(self):
            return None

    model = NoOpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1)
    with pytest.warns(UserWarning, match="returned None.*without an optimizer"):
        trainer.fit(model, loader(4, n=12))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.global_step == 3  # Lightning counts the steps of its stand-in optimizer
    assert model.net[0].weight.grad is not None


@pytest.mark.parametrize("bad, match", [
    ("adam", "not usable"),
    ([torch.nn.Linear(1, 1)], "not usable|not a torch.optim.Optimizer"),
    ({"lr_scheduler": None}, "needs 'optimizer'"),
    ({"optimizer": "OPT", "lr_scheduler": {"interval": "step"}}, "'scheduler' key"),
    ({"optimizer": "OPT", "lr_scheduler": {"scheduler": "SCHED", "interval": "batch"}}, "interval='batch'"),
    ({"optimizer": "OPT", "lr_scheduler": {"scheduler": "SCHED", "frequency": 0}}, "frequency"),
    ({"optimizer": "OPT", "lr_scheduler": {"scheduler": "SCHED", "intervall": "step"}}, "Unknown key"),
])
def test_unusable_returns_name_the_problem(bad, match):
    opt = SGD(make_net().parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)

    def fill(x):
        if x == "OPT":
            return opt
        if x == "SCHED":
            return sched
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        return x

    with pytest.raises(MisconfigurationException, match=match):
        parse_optimizers(fill(bad))


def test_scheduler_config_dict_keeps_every_field():
    opt = SGD(make_net().parameters())
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    _, [cfg] = parse_optimizers({"optimizer": opt, "lr_scheduler": {
        "scheduler": sched, "interval": "step", "frequency": 3, "monitor": "m", "strict": False, "name": "n"}})
    assert (cfg.scheduler, cfg.interval, cfg.frequency, cfg.monitor, cfg.strict, cfg.name, cfg.reduce_on_plateau) == (
        sched, "step", 3, "m", False, "n", True)
    # the top-level "monitor" of the dict form fills in the config's
    _, [cfg] = parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": sched}, "monitor": "val_loss"})
    assert cfg.monitor == "val_loss"
