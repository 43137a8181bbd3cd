"""``Accelerator``: one kind of hardware (CPU, CUDA GPUs, Apple's MPS) — how to count, name and prepare its devices.

An accelerator answers questions about hardware; it runs nothing. The strategy owns the devices a run uses
(see ``fulmen.strategies.strategy``); the Trainer asks the accelerator which devices ``devices=`` means.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Accelerator(ABC):
    """The base of every accelerator: subclass it for new hardware, or pass an instance as
    ``Trainer(accelerator=...)``.

    Example::

        class MyCPU(Accelerator):
            def setup_device(self, device): pass
            def teardown(self): pass
            @staticmethod
            def parse_devices(devices): return int(devices)
            @staticmethod
            def get_parallel_devices(devices): return [torch.device("cpu")] * devices
            @staticmethod
            def auto_device_count(): return 1
            @staticmethod
            def is_available(): return True
            @staticmethod
            def name(): return "mycpu"

        trainer = fulmen.Trainer(accelerator=MyCPU(), devices=1)
    """

    @abstractmethod
    def setup_device(self, device: torch.device) -> None:
        """Prepare ``device`` for this process (e.g. make it the current CUDA device)."""

    @abstractmethod
    def teardown(self) -> None:
        """Release what ``setup_device`` created."""

    @staticmethod
    @abstractmethod
    def parse_devices(devices: Any) -> Any:
        """What a ``devices=`` flag means on this hardware: a count (CPU) or a list of device indices (GPUs)."""

    @staticmethod
    @abstractmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        """The ``torch.device`` of each process, from what ``parse_devices`` returned."""

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices ``devices="auto"`` uses."""

    @staticmethod
    @abstractmethod
    def is_available() -> bool:
        """Whether this hardware is usable in this process."""

    @staticmethod
    @abstractmethod
    def name() -> str:
        """The accelerator's name in ``Trainer(accelerator=...)`` (``"cpu"``, ``"cuda"``, ``"mps"``)."""

    def setup(self, trainer: Any) -> None:
        """Called by the Trainer before the model reaches the device; nothing to do by default."""

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, Any]:
        """Statistics of ``device`` that ``DeviceStatsMonitor`` logs (memory, load)."""
        raise NotImplementedError(f"{type(self).__name__} reports no device statistics; override get_device_stats.")

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        """Add this class to ``accelerator_registry`` under its ``name()``; override to register other names."""
        accelerator_registry.register(cls.name(), cls, description=cls.__name__)
