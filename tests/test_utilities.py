"""Helpers: walking nested batches, moving them, seeding."""

import os
import random
from collections import OrderedDict, defaultdict, namedtuple
from dataclasses import dataclass

import pytest
import torch

import fulmen as pl
from fulmen.utilities import apply_to_collection, move_data_to_device

Point = namedtuple("Point", "x y")


@dataclass
class Item:
    a: torch.Tensor
    label: str


def test_apply_to_collection_keeps_every_container_type():
    data = {
        "list": [torch.ones(1), 2],
        "tuple": (torch.ones(1),),
        "named": Point(torch.ones(1), "s"),
        "ordered": OrderedDict(k=torch.ones(1)),
        "default": defaultdict(list, k=[torch.ones(1)]),
        "dc": Item(torch.ones(1), "x"),
    }
    out = apply_to_collection(data, torch.Tensor, lambda t: t * 3)
    assert out["list"][0].item() == 3 and out["list"][1] == 2
    assert isinstance(out["named"], Point) and out["named"].x.item() == 3 and out["named"].y == "s"
    assert isinstance(out["ordered"], OrderedDict) and isinstance(out["default"], defaultdict)
    assert isinstance(out["dc"], Item) and out["dc"].a.item() == 3 and out["dc"].label == "x"
    assert data["list"][0].item() == 1  # the input is not modified


def test_move_data_to_device_handles_objects_with_to():
    class Box:
        def __init__(self):
            self.moved_to = None

        def to(self, device):
            self.moved_to = device
            return self

    box = Box()
    out = move_data_to_device({"b": box, "t": torch.ones(1)}, "cpu")
    assert out["b"].moved_to == torch.device("cpu") and out["t"].device.type == "cpu"


def test_seed_everything_repeats_every_generator():
    def draw():
        import numpy as np

        return random.random(), float(np.random.rand()), torch.rand(1).item()

    assert pl.seed_everything(7) == 7
    first = draw()
    pl.seed_everything(7)
    assert draw() == first


@pytest.mark.parametrize("lightning_utilities_first", [False, True])
def test_lightning_utilities_rank_zero_only_rank_is_set(lightning_utilities_first):
    """Published code uses lightning_utilities' rank_zero_only and expects the framework to set its rank;
    fulmen does, without importing that package itself."""
    pytest.importorskip("lightning_utilities")
    import subprocess
    import sys

    code = (
        ("import lightning_utilities.core.rank_zero\n" if lightning_utilities_first else "")
        + "import sys, fulmen\n"
        + ("" if lightning_utilities_first else "assert 'lightning_utilities' not in sys.modules\n")
        + "from lightning_utilities.core.rank_zero import rank_zero_only\n"
        + "ran = []\n"
        + "rank_zero_only(lambda: ran.append(1))()\n"
        + "print(rank_zero_only.rank, ran)\n"
    )
    env = {**os.environ, "RANK": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "1 []"  # rank 1: the decorated function did not run
    env["RANK"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[0] == "0 [1]", out.stderr


def test_info_lines_go_through_the_fulmen_logger_and_show_by_default():
    """As Lightning: its info lines reach stderr out of the box; the "fulmen" logger routes or silences them."""
    import subprocess
    import sys

    run = (
        "import torch, fulmen as pl\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "class M(pl.LightningModule):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.l = torch.nn.Linear(2, 1)\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        return self.l(batch[0]).sum()\n"
        "    def configure_optimizers(self):\n"
        "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,\n"
        "           enable_model_summary=False).fit(M(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))\n"
    )
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == "`Trainer.fit` stopped: `max_epochs=1` reached.\n"
    silenced = run.replace("import torch, fulmen as pl\n", "import logging, torch, fulmen as pl\n"
                           "logging.getLogger('fulmen').setLevel(logging.WARNING)\n")
    out = subprocess.run([sys.executable, "-c", silenced], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "" and out.stdout == ""
