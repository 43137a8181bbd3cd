"""Fabric in one process: programs in the style of Lightning's published Fabric examples, the wrappers, saving and
loading, the `fabric run` settings, and misuse errors that say what to write instead."""

from __future__ import annotations

import csv
import threading

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen.fabric as L
from fulmen.errors import CheckpointError, FulmenError, MisconfigurationException
from fulmen.fabric import Fabric
from fulmen.fabric.loggers import CSVLogger
from fulmen.fabric.wrappers import _FabricDataLoader, _FabricModule, _FabricOptimizer


@pytest.fixture(autouse=True)
def _no_cli(monkeypatch):
    for name in ("LT_CLI_USED", "LT_ACCELERATOR", "LT_STRATEGY", "LT_DEVICES", "LT_NUM_NODES", "LT_PRECISION",
                 "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _digits() -> TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return TensorDataset(torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_image_classifier_program_learns_logs_and_checkpoints(tmp_path):
    """Lightning's image-classifier example, on scikit-learn's digits: train, validate with all_gather, log."""
    fabric = Fabric(accelerator="cpu", loggers=CSVLogger(root_dir=tmp_path, name="digits"))
    fabric.seed_everything(0)
    data = _digits()
    train, val = torch.utils.data.random_split(data, [1500, len(data) - 1500], generator=torch.Generator().manual_seed(0))
    train_loader, val_loader = fabric.setup_dataloaders(DataLoader(train, batch_size=64, shuffle=True),
                                                        DataLoader(val, batch_size=128))
    model = Classifier()
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    for epoch in range(3):
        model.train()
        for i, (x, y) in enumerate(train_loader):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            fabric.log("train_loss", loss, step=epoch * len(train_loader) + i)
        model.eval()
        with torch.no_grad():
            correct = sum(fabric.all_reduce((model(x).argmax(1) == y).sum(), reduce_op="sum") for x, y in val_loader)
        fabric.log_dict({"val_acc": correct / len(val), "epoch": epoch}, step=(epoch + 1) * len(train_loader))
    fabric.logger.save()
    assert correct / len(val) > 0.9
    rows = list(csv.DictReader(open(fabric.logger.log_dir + "/metrics.csv")))
    assert len([r for r in rows if r["train_loss"]]) == 3 * len(train_loader)
    assert float([r for r in rows if r["val_acc"]][-1]["val_acc"]) == pytest.approx(float(correct / len(val)))


def test_k_fold_cross_validation_program_resets_a_model_per_fold():
    """Lightning's k-fold example: a fresh model and optimizer per fold, set up each time."""
    fabric = Fabric(accelerator="cpu")
    fabric.seed_everything(1)
    data = _digits()
    folds = torch.arange(len(data)) % 3
    accuracies = []
    for fold in range(3):
        train_idx, val_idx = (folds != fold).nonzero().flatten(), (folds == fold).nonzero().flatten()
        train_loader, val_loader = fabric.setup_dataloaders(
            DataLoader(torch.utils.data.Subset(data, train_idx.tolist()), batch_size=64, shuffle=True),
            DataLoader(torch.utils.data.Subset(data, val_idx.tolist()), batch_size=256))
        model = Classifier()
        model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=1e-2))
        for _ in range(2):
            for x, y in train_loader:
                optimizer.zero_grad()
                fabric.backward(nn.functional.cross_entropy(model(x), y))
                optimizer.step()
        with torch.no_grad():
            acc = torch.cat([model(x).argmax(1) == y for x, y in val_loader]).float().mean()
        accuracies.append(float(acc))
    assert len(set(accuracies)) == 3 and min(accuracies) > 0.85


def test_wrappers_are_what_lightning_returns_and_lead_to_the_original_objects():
    from fulmen import LightningModule

    class Module(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 2)
            self.scale = 1.0

        def forward(self, x):
            return self.layer(x) * self.scale

        def training_step(self, batch, batch_idx):
            return self(batch).sum()

        def generate(self, x):
            return self(x) + 1

    fabric = Fabric(accelerator="cpu", precision="64-true")
    original = Module()
    opt = torch.optim.SGD(original.parameters(), lr=0.1)
    model, optimizer = fabric.setup(original, opt)
    assert isinstance(model, _FabricModule) and isinstance(model, nn.Module) and model.module is original
    assert isinstance(optimizer, _FabricOptimizer) and isinstance(optimizer, torch.optim.SGD)
    assert optimizer.optimizer is opt and optimizer.param_groups is opt.param_groups
    assert list(model.state_dict()) == ["layer.weight", "layer.bias"]  # no wrapper prefix
    assert original.layer.weight.dtype == torch.float64  # the precision converted the module
    x = torch.ones(1, 2, dtype=torch.float64)
    model.scale = 2.0  # attributes are the original's
    assert original.scale == 2.0
    assert torch.equal(model.training_step(x, 0), original.training_step(x, 0))
    model.mark_forward_method("generate")
    assert torch.equal(model.generate(x), (original(x) + 1).float())  # through forward: outputs in float32
    with pytest.raises(MisconfigurationException, match="has no method 'sample'"):
        model.mark_forward_method("sample")
    loader = fabric.setup_dataloaders(DataLoader(torch.arange(6.0), batch_size=4))
    assert isinstance(loader, _FabricDataLoader) and len(loader) == 2 and loader.batch_size == 4
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5]]
    assert fabric.device == torch.device("cpu") and (fabric.world_size, fabric.global_rank) == (1, 0)
    assert fabric.is_global_zero and fabric.local_rank == fabric.node_rank == 0


def test_save_load_restores_live_objects_in_place_with_filters_strict_and_raw(tmp_path):
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    model, opt = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(4, 3)).sum())
    opt.step()
    fabric.save(tmp_path / "a.ckpt", {"model": model, "opt": opt, "step": 7, "note": "x"})
    fabric.save(tmp_path / "b.ckpt", {"model": model}, filter={"model": lambda k, v: k == "weight"})
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    exp_opt = opt.state_dict()

    torch.manual_seed(1)
    other = nn.Linear(3, 1)
    other, other_opt = fabric.setup(other, torch.optim.Adam(other.parameters(), lr=0.1))
    state = {"model": other, "opt": other_opt, "step": 0}
    remainder = fabric.load(tmp_path / "a.ckpt", state)
    assert remainder == {"note": "x"} and state["step"] == 7
    assert all(torch.equal(other.state_dict()[k], v) for k, v in expected.items())
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], exp_opt["state"][0]["exp_avg"])
    assert set(torch.load(tmp_path / "b.ckpt")["model"]) == {"weight"}
    with pytest.raises(CheckpointError, match="holds no 'opt'.*strict=False"):
        fabric.load(tmp_path / "b.ckpt", {"model": other, "opt": other_opt})
    with pytest.raises(RuntimeError, match="bias"):  # the module's own strict loading
        fabric.load(tmp_path / "b.ckpt", {"model": other})
    fabric.load(tmp_path / "b.ckpt", {"model": other, "opt": other_opt}, strict=False)
    assert set(fabric.load(tmp_path / "a.ckpt")) == {"model", "opt", "step", "note"}
    torch.save(nn.Linear(3, 1).state_dict(), tmp_path / "raw.pt")
    fabric.load_raw(tmp_path / "raw.pt", other)
    assert torch.equal(other.weight, torch.load(tmp_path / "raw.pt")["weight"])


def test_a_single_process_loop_resumes_mid_epoch_bitwise_with_workers(tmp_path):
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((2,), float(i)) + torch.randn(2)

    def run(stop: int | None, resume: bool) -> tuple[list[float], torch.Tensor]:
        fabric = Fabric(accelerator="cpu")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Dropout(0.2), nn.Linear(2, 1))
        model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.01))
        loader = fabric.setup_dataloaders(DataLoader(Noisy(), batch_size=3, shuffle=True, num_workers=2))
        state = {"model": model, "opt": opt, "loader": loader, "epoch": 0, "steps": 0}
        if resume:
            fabric.load(tmp_path / "mid.ckpt", state)
        seen = []
        for epoch in range(state["epoch"], 3):
            for x in loader:
                fabric.backward(model(x).sum())
                opt.step()
                opt.zero_grad()
                seen.append(float(x.sum()))
                state.update(epoch=epoch, steps=state["steps"] + 1)
                if state["steps"] == stop:
                    fabric.save(tmp_path / "mid.ckpt", state)
            state["epoch"] = epoch + 1
        return seen, model.module[1].weight.detach().clone()

    seen, weight = run(stop=6, resume=False)  # 4 batches per epoch: saved one batch into the second epoch
    torch.manual_seed(123)  # whatever the new run drew before loading does not matter
    seen_after, weight_after = run(stop=None, resume=True)
    assert seen_after == seen[6:] and torch.equal(weight_after, weight)


def _rank_times_ten(fabric: Fabric, offset: int) -> int:
    return fabric.global_rank * 10 + offset + int(fabric.all_reduce(torch.tensor(1.0), reduce_op="sum"))


def test_spawn_launch_runs_the_function_in_each_process_and_returns_rank_zeros_result():
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    assert fabric.launch(_rank_times_ten, 5) == 7  # rank 0: 0 + 5 + 2 processes


def test_fabric_run_settings_are_the_defaults_and_launch_is_refused_under_it(monkeypatch):
    monkeypatch.setenv("LT_CLI_USED", "1")
    monkeypatch.setenv("LT_ACCELERATOR", "cpu")
    monkeypatch.setenv("LT_DEVICES", "1")
    monkeypatch.setenv("LT_PRECISION", "bf16-mixed")
    monkeypatch.setenv("LT_NUM_NODES", "1")
    fabric = Fabric()
    assert fabric.strategy.precision.name == "bf16-mixed" and type(fabric.accelerator).__name__ == "CPUAccelerator"
    with pytest.raises(FulmenError, match="fulmen run.*Remove the fabric.launch"):
        fabric.launch()


def test_misuse_fails_early_saying_what_to_write():
    with pytest.raises(MisconfigurationException, match="strategy='dpp' is not known. Did you mean 'ddp'.*'fsdp'"):
        Fabric(accelerator="cpu", strategy="dpp")
    with pytest.raises(MisconfigurationException, match="precision='17-mixed' is not supported.*'bf16-mixed'"):
        Fabric(accelerator="cpu", precision="17-mixed")
    fabric = Fabric(accelerator="cpu")
    raw = nn.Linear(2, 1)
    with pytest.raises(FulmenError, match="before any module was set up.*fabric.setup"):
        fabric.backward(raw(torch.ones(1, 2)).sum())
    opt = torch.optim.SGD(raw.parameters(), lr=0.1)
    with pytest.raises(MisconfigurationException, match="clip_gradients\\(\\) needs the module that setup returned"):
        fabric.clip_gradients(raw, opt, max_norm=1.0)
    model, optimizer = fabric.setup(raw, opt)
    with pytest.raises(FulmenError, match="no set-up module computed.*loss = model\\(x\\)"):
        fabric.backward(raw(torch.ones(1, 2)).sum())  # the original module, not what setup returned
    with pytest.raises(MisconfigurationException, match="module that was set up already"):
        fabric.setup(model)
    with pytest.raises(MisconfigurationException, match="optimizer that was set up already"):
        fabric.setup(nn.Linear(2, 1), optimizer)
    with pytest.raises(MisconfigurationException, match="exactly one of clip_val"):
        fabric.clip_gradients(model, optimizer)
    with pytest.raises(MisconfigurationException, match="not its result"):
        fabric.launch(5)
    fabric.launch(lambda f: None)
    with pytest.raises(FulmenError, match="already launched.*Call launch\\(\\) once"):
        fabric.launch()
    with pytest.raises(MisconfigurationException, match=r"state\['lock'\] \(lock\) cannot be saved"):
        fabric.save("never.ckpt", {"model": model, "lock": threading.Lock()})
    with pytest.raises(MisconfigurationException, match="DataLoader that was not set up.*setup_dataloaders"):
        fabric.save("never.ckpt", {"loader": DataLoader(torch.arange(3))})
    ddp = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    with pytest.raises(FulmenError, match="runs 2 processes, which start in fabric.launch\\(\\)"):
        ddp.setup(nn.Linear(2, 1))
    spawn = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    with pytest.raises(MisconfigurationException, match="pass it, fabric.launch\\(train\\)"):
        spawn.launch()


def test_clip_gradients_returns_the_norm_and_no_backward_sync_accepts_only_set_up_modules():
    fabric = Fabric(accelerator="cpu")
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=1.0))
    fabric.backward(model(torch.tensor([[3.0, 4.0]])).sum())  # gradient (3, 4): norm 5
    norm = fabric.clip_gradients(model, opt, max_norm=1.0)
    assert norm.item() == pytest.approx(5.0) and model.weight.grad.norm().item() == pytest.approx(1.0, abs=1e-5)
    with fabric.no_backward_sync(model):
        fabric.backward(model(torch.ones(1, 2)).sum())
    with pytest.raises(MisconfigurationException, match="no_backward_sync\\(\\) needs the module that setup returned"):
        with fabric.no_backward_sync(model.module):
            pass
    assert L.seed_everything(3) == 3


def test_spike_detection_stops_a_fabric_loop_at_the_spike_and_lists_the_batches_to_skip(tmp_path):
    import json

    from fulmen.fabric.utilities.spike import SpikeDetection, TrainingSpikeException

    detector = SpikeDetection(window=3, warmup=1, exclude_batches_path=tmp_path)
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[detector])
    losses = [1.0, 0.9, 0.8, 0.85, 0.7, 9.0, 0.6]  # 0.85 is worse but near the mean; 9.0 is a spike
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))  # the loss is the data's
    seen = []
    with pytest.raises(TrainingSpikeException) as err:
        for batch_idx, value in enumerate(losses):
            batch = torch.tensor([[value ** 0.5]])
            loss = model(batch).pow(2).mean()
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", fabric=fabric, loss=loss, batch=batch, batch_idx=batch_idx)
            seen.append(batch_idx)
    assert err.value.batch_idx == 5 and seen == [0, 1, 2, 3, 4] and isinstance(err.value, RuntimeError)
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [4, 5] == detector.bad_batches
    assert detector.last_val == pytest.approx(0.7)  # the spike was not accepted into the statistics
    # the Trainer callback's rule: the same losses there give the same verdicts
    from fulmen.callbacks.spike_detection import SpikeDetection as TrainerSpikeDetection

    rule = TrainerSpikeDetection(window=3, warmup=1)
    verdicts = []
    for i, v in enumerate(losses):
        verdicts.append(rule._judge(torch.tensor(v), i))
        if not verdicts[-1]:
            rule._accept(v, None)
    assert verdicts == [False] * 5 + [True, False]
    with pytest.raises(TrainingSpikeException):  # NaN counts with finite_only=True (the default)
        SpikeDetection(exclude_batches_path=tmp_path).on_train_batch_end(fabric, torch.tensor(float("nan")), None, 3)


def test_throughput_gives_lightning_fabrics_rates_and_the_monitor_logs_them(tmp_path):
    from fulmen.fabric.utilities import Throughput, ThroughputMonitor, measure_flops

    t = Throughput(available_flops=100.0, world_size=2, window_size=3)
    for i in range(1, 5):  # 2 s a batch of 4 samples (32 tokens), 50 FLOPs per device per batch
        t.update(time=2.0 * i, batches=i, samples=4 * i, lengths=32 * i, flops=50)
    assert t.compute() == {
        "time": 8.0, "batches": 4, "samples": 16, "lengths": 128,
        "device/batches_per_sec": 0.5, "device/samples_per_sec": 2.0, "device/items_per_sec": 16.0,
        "batches_per_sec": 1.0, "samples_per_sec": 4.0, "items_per_sec": 32.0,
        "flops_per_sec": 50.0, "device/flops_per_sec": 25.0, "device/mfu": 0.25}
    with pytest.raises(ValueError, match="running totals"):
        t.update(time=7.0, batches=5, samples=20)  # the clock went back
    t.reset()
    assert t.compute() == {}

    fabric = Fabric(accelerator="cpu", devices=1, loggers=CSVLogger(tmp_path, name="tp"))
    monitor = ThroughputMonitor(fabric, window_size=2)
    monitor.update(time=1.0, batches=1, samples=8)
    monitor.update(time=3.0, batches=2, samples=16)
    assert monitor.compute_and_log() == {"time": 3.0, "batches": 2, "samples": 16, "device/batches_per_sec": 0.5,
                                         "device/samples_per_sec": 4.0}
    fabric.logger.finalize("success")
    rows = list(csv.DictReader(open(fabric.logger.log_dir + "/metrics.csv")))
    assert rows[0]["step"] == "0" and float(rows[0]["device/samples_per_sec"]) == 4.0
    assert measure_flops(nn.Linear(4, 3), lambda: nn.Linear(4, 3)(torch.randn(2, 4))) == 48


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true", "bf16-mixed"])
def test_a_low_precision_modules_outputs_come_back_in_float32_as_in_lightning_fabric(precision):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 2)

        def forward(self, x, labels):
            out = self.layer(x)
            return {"logits": out, "pair": (out * 2, labels), "dtype_inside": x.dtype}

    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    net = Net()
    model = fabric.setup(net)
    x, labels = torch.randn(4, 3), torch.arange(4)
    out = model(x, labels)
    inside = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}.get(precision)
    if inside is not None:
        assert net.layer.weight.dtype == inside and out["dtype_inside"] == inside  # computed in the precision ...
        expected = net.layer(x.to(inside))
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = net.layer(x)
    # ... and handed back in the default dtype, values unchanged; integer tensors untouched
    assert out["logits"].dtype == out["pair"][0].dtype == torch.float32
    assert torch.equal(out["logits"], expected.float()) and torch.equal(out["pair"][0], (expected * 2).float())
    assert out["pair"][1].dtype == torch.int64 and torch.equal(out["pair"][1], labels)
    loss = out["logits"].sum()
    fabric.backward(loss)  # the float32 output still leads back to the module's parameters
    assert net.layer.weight.grad is not None and net.layer.weight.grad.dtype == net.layer.weight.dtype
