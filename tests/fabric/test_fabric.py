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
    assert torch.equal(model.generate(x), original(x) + 1)
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
