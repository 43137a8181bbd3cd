"""``MPSAccelerator``: the GPU of Apple silicon through torch's MPS backend (one device)."""

from __future__ import annotations

from typing import Any

import torch

from fulmen.accelerators._devices import parse_indices
from fulmen.accelerators.accelerator import Accelerator


class MPSAccelerator(Accelerator):
    """Apple silicon's GPU. There is one: ``devices=1`` (or "auto").

    Example::

        trainer = fulmen.Trainer(accelerator="mps", devices=1)
    """

    def setup_device(self, device: torch.device) -> None:
        if torch.device(device).type != "mps":
            raise ValueError(f"MPSAccelerator runs on the MPS device, not on {device}; pass torch.device('mps').")

    def teardown(self) -> None:
        pass

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return parse_indices(devices, MPSAccelerator.auto_device_count() if MPSAccelerator.is_available() else 0,
                             "MPS device")

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        ids = devices if isinstance(devices, (list, tuple)) else MPSAccelerator.parse_devices(devices)
        return [torch.device("mps", i) for i in ids]

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return torch.backends.mps.is_available()

    @staticmethod
    def name() -> str:
        return "mps"

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, float]:
        return get_device_stats(device)


def get_device_stats(device: torch.device | str | int) -> dict[str, float]:
    """Memory the MPS backend has allocated, in bytes.

    Example::

        get_device_stats("mps")  # {'mps.current_allocated_bytes': 1024.0, 'mps.driver_allocated_bytes': ...}
    """
    return {"mps.current_allocated_bytes": float(torch.mps.current_allocated_memory()),
            "mps.driver_allocated_bytes": float(torch.mps.driver_allocated_memory())}
