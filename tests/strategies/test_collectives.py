"""``TorchCollective`` misuse and ``SingleDeviceCollective`` in one process (the 2-process run of
TorchCollective is in tests/test_run_command.py, launched by ``fulmen run``)."""

import pytest
import torch

from fulmen.errors import FulmenError
from fulmen.strategies.collectives import SingleDeviceCollective, TorchCollective


def test_single_device_collective_hands_back_its_input():
    collective = SingleDeviceCollective().create_group()
    x = torch.tensor([3.0])
    assert collective.all_reduce(x) is x and collective.broadcast(x, src=0) is x
    assert collective.all_gather([torch.zeros(1)], x) == [x] and collective.all_gather_object([None], 5) == [5]
    assert collective.rank == 0 and collective.world_size == 1
    collective.teardown()
    with pytest.raises(RuntimeError, match="no group to tear down"):
        collective.teardown()


def test_torch_collective_misuse_names_the_fix():
    collective = TorchCollective()
    assert not collective.is_initialized()
    with pytest.raises(FulmenError, match="create_group"):
        collective.teardown()
    with pytest.raises(ValueError, match="'sum', 'product'"):
        TorchCollective._op("mean")
    assert TorchCollective._op("max") == torch.distributed.ReduceOp.MAX
