"""``fulmen.accelerators``: the Trainer reads ``accelerator=``/``devices=`` through these objects."""

import pytest
import torch

import fulmen as pl
from fulmen.accelerators import (Accelerator, AcceleratorRegistry, CPUAccelerator, CUDAAccelerator,
                                 MPSAccelerator, find_usable_cuda_devices)
from fulmen.demos import BoringModel
from fulmen.errors import MisconfigurationException

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _quiet(**kwargs):
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def test_an_accelerator_instance_is_used_as_given_and_its_setup_runs():
    class Counting(CPUAccelerator):
        setups = 0

        def setup(self, trainer):
            Counting.setups += 1
            assert trainer.accelerator is self

    accelerator = Counting()
    trainer = _quiet(accelerator=accelerator, devices=1, max_steps=2)
    assert trainer.accelerator is accelerator and trainer.strategy.root_device == torch.device("cpu")
    trainer.fit(BoringModel())
    assert Counting.setups == 1 and trainer.global_step == 2


@pytest.mark.parametrize("devices, ids", [(1, [0]), ("2", [0, 1]), ([0, 1], [0, 1]), ("0,1,2", [0, 1, 2]),
                                          ("auto", [0]), (-1, [0])])
def test_cpu_devices_are_counted(devices, ids):
    trainer = _quiet(accelerator="cpu", devices=devices)
    assert type(trainer.accelerator) is CPUAccelerator
    assert trainer.device_ids == ids and trainer.num_devices == len(ids)
    if len(ids) > 1:  # the strategy gets the same object, as in Lightning
        assert trainer.strategy.accelerator is trainer.accelerator
        assert trainer.strategy.parallel_devices == [torch.device("cpu")] * len(ids)


@pytest.mark.parametrize("devices, fix", [(0, "positive number"), (True, "a number of devices"),
                                          ([0, 0], "each device index once"), ("a,b", "'0,1'")])
def test_bad_devices_say_what_to_pass(devices, fix):
    with pytest.raises(MisconfigurationException, match=fix):
        _quiet(accelerator="cpu", devices=devices)


@no_cuda
def test_without_cuda():
    assert CPUAccelerator.parse_devices("3") == 3
    assert CPUAccelerator.get_parallel_devices(2) == [torch.device("cpu")] * 2
    assert not CUDAAccelerator.is_available() and CUDAAccelerator.auto_device_count() == 0
    assert type(_quiet(accelerator="auto").accelerator) is (MPSAccelerator if MPSAccelerator.is_available()
                                                            else CPUAccelerator)
    with pytest.raises(MisconfigurationException, match="asks for 1 GPUs, but torch sees 0"):
        CUDAAccelerator.parse_devices(1)
    with pytest.raises(MisconfigurationException, match="accelerator='cpu'"):
        _quiet(accelerator="cuda")
    # as Lightning: asking for no device is an empty list, asking for any is an error
    assert find_usable_cuda_devices(0) == []
    for n in (-1, 2):
        with pytest.raises(ValueError, match="no CUDA GPU"):
            find_usable_cuda_devices(n)


def test_registry_resolves_names_and_refuses_duplicates():
    assert {"cpu", "cuda", "mps"} <= AcceleratorRegistry.available_accelerators()
    assert isinstance(AcceleratorRegistry.get("cpu"), CPUAccelerator)

    class Renamed(CPUAccelerator):
        def __init__(self, tag):
            self.tag = tag

    AcceleratorRegistry.register("renamed_cpu", Renamed, description="a test", tag="x")
    try:
        trainer = _quiet(accelerator="renamed_cpu")
        assert type(trainer.accelerator) is Renamed and trainer.accelerator.tag == "x"
        with pytest.raises(MisconfigurationException, match="override=True"):
            AcceleratorRegistry.register("renamed_cpu", Renamed)
        AcceleratorRegistry.register("renamed_cpu", Renamed, override=True, tag="y")
        assert AcceleratorRegistry.get("renamed_cpu").tag == "y"
    finally:
        AcceleratorRegistry.remove("renamed_cpu")
    with pytest.raises(MisconfigurationException, match="'cpu', 'cuda', 'mps'"):
        _quiet(accelerator="renamed_cpu")
    with pytest.raises(MisconfigurationException, match="CPUAccelerator()"):
        _quiet(accelerator=3)


def test_a_new_accelerator_needs_its_abstract_methods():
    class Half(Accelerator):
        def setup_device(self, device):
            pass

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_device_stats_monitor_reads_the_accelerators_stats(tmp_path):
    from fulmen.callbacks import DeviceStatsMonitor

    class Fixed(CPUAccelerator):
        def get_device_stats(self, device):
            return {"answer": torch.tensor(42)}

    logged = []

    class Recorder(pl.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            logged.append(metrics)

    trainer = pl.Trainer(accelerator=Fixed(), max_steps=1, log_every_n_steps=1, logger=Recorder(tmp_path),
                         callbacks=[DeviceStatsMonitor(cpu_stats=False)], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(BoringModel())
    stats = {k: v for m in logged for k, v in m.items() if k.startswith("DeviceStatsMonitor")}
    train = {k: v for k, v in stats.items() if ".on_train_batch_" in k}
    assert train == {"DeviceStatsMonitor.on_train_batch_start/answer": 42.0,
                     "DeviceStatsMonitor.on_train_batch_end/answer": 42.0}
    assert set(stats.values()) == {42.0}  # validation's batches (sanity check included) read the same accelerator


def test_an_accelerator_of_your_own_runs_a_fit_on_the_devices_it_names():
    class Mine(Accelerator):
        def setup_device(self, device):
            pass

        def teardown(self):
            pass

        @staticmethod
        def parse_devices(devices):
            return 1

        @staticmethod
        def get_parallel_devices(devices):
            return [torch.device("cpu")]

        @staticmethod
        def auto_device_count():
            return 1

        @staticmethod
        def is_available():
            return True

        @staticmethod
        def name():
            return "mine"

    trainer = _quiet(accelerator=Mine(), precision="bf16-mixed", max_steps=1)
    trainer.fit(BoringModel())  # autocast is asked for the device's type ("cpu"), not the accelerator's name
    assert trainer.global_step == 1 and trainer.strategy.root_device == torch.device("cpu")
