"""``CPUAccelerator``: processes on the CPU, counted rather than indexed."""

from __future__ import annotations

from typing import Any

import torch

from fulmen.accelerators._devices import parse_count
from fulmen.accelerators.accelerator import Accelerator
from fulmen.errors import MissingDependencyError


class CPUAccelerator(Accelerator):
    """The CPU. ``devices=N`` runs N processes (``devices=[0, 1]`` or ``"0,1"`` also mean two).

    Example::

        trainer = fulmen.Trainer(accelerator=CPUAccelerator(), devices=2, strategy="ddp")
        CPUAccelerator.parse_devices("2")  # 2
    """

    def setup_device(self, device: torch.device) -> None:
        if torch.device(device).type != "cpu":
            raise ValueError(f"CPUAccelerator runs on the CPU, not on {device}; pass torch.device('cpu').")

    def teardown(self) -> None:
        pass

    @staticmethod
    def parse_devices(devices: Any) -> int:
        return parse_count(devices)

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cpu")] * parse_count(devices)

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def name() -> str:
        return "cpu"

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, float]:
        return get_cpu_stats()


def get_cpu_stats() -> dict[str, float]:
    """The machine's CPU load and memory use in percent (needs ``psutil``).

    Example::

        get_cpu_stats()  # {'cpu_vm_percent': 41.2, 'cpu_percent': 12.5, 'cpu_swap_percent': 0.0}
    """
    try:
        import psutil
    except ImportError:
        # no fulmen extra carries psutil: name the package itself
        raise MissingDependencyError(
            "CPU statistics (DeviceStatsMonitor on a CPU) need the package `psutil`, which is not installed. "
            "Install it with: pip install psutil") from None
    return {
        "cpu_vm_percent": psutil.virtual_memory().percent,
        "cpu_percent": psutil.cpu_percent(),
        "cpu_swap_percent": psutil.swap_memory().percent,
    }
