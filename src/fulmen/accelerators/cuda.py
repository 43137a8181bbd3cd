"""``CUDAAccelerator``: NVIDIA GPUs, by index; ``find_usable_cuda_devices`` picks free ones."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from typing import Any

import torch

from fulmen.accelerators._devices import parse_indices
from fulmen.accelerators.accelerator import Accelerator


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs. ``devices=2`` is GPUs 0 and 1, ``devices=[1, 3]`` or ``"1,3"`` those two, ``-1``/``"auto"`` all.

    Example::

        trainer = fulmen.Trainer(accelerator=CUDAAccelerator(), devices=[0, 1])
    """

    def setup_device(self, device: torch.device) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDAAccelerator runs on CUDA devices, not on {device}; pass torch.device('cuda', i).")
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        torch.cuda.empty_cache()

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return parse_indices(devices, CUDAAccelerator.auto_device_count(), "GPU")

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        ids = devices if isinstance(devices, (list, tuple)) else CUDAAccelerator.parse_devices(devices)
        return [torch.device("cuda", i) for i in ids]

    @staticmethod
    def auto_device_count() -> int:
        return torch.cuda.device_count()

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def name() -> str:
        return "cuda"

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, Any]:
        return torch.cuda.memory_stats(device)


def find_usable_cuda_devices(num_devices: int = -1) -> list[int]:
    """Indices of ``num_devices`` GPUs that accept work now (-1: all that do), for machines where other jobs
    hold some GPUs in exclusive mode.

    Example::

        trainer = fulmen.Trainer(accelerator="cuda", devices=find_usable_cuda_devices(2))
    """
    if num_devices == 0:
        return []
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(
            f"find_usable_cuda_devices({num_devices}) found no CUDA GPU on this machine (torch sees none). Run on a "
            "machine with GPUs, or use accelerator='cpu'."
        )
    if num_devices > count:
        raise ValueError(
            f"find_usable_cuda_devices({num_devices}) asks for {num_devices} GPUs, but this machine has {count}. "
            f"Ask for at most {count}, or -1 for every free one."
        )
    usable = []
    for index in range(count):
        try:  # a GPU held by another process in exclusive mode refuses the allocation
            torch.empty(1, device=torch.device("cuda", index))
        except RuntimeError:
            continue
        usable.append(index)
        if len(usable) == num_devices:
            break
    if num_devices > 0 and len(usable) < num_devices:
        raise RuntimeError(
            f"find_usable_cuda_devices({num_devices}) found only {len(usable)} free GPU(s) ({usable}); the others are "
            "busy. Ask for fewer, or wait for them to be released."
        )
    return usable


def get_nvidia_gpu_stats(device: torch.device | str | int) -> dict[str, float]:
    """Utilisation, memory and temperature of one GPU, read from ``nvidia-smi``.

    Example::

        get_nvidia_gpu_stats(torch.device("cuda", 0))  # {'utilization.gpu (%)': 3.0, 'memory.used (MB)': 517.0, ...}
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise FileNotFoundError("nvidia-smi is not on the PATH; install the NVIDIA driver's tools, or read "
                                "torch.cuda.memory_stats(device) instead.")
    index = torch._utils._get_device_index(device, optional=True)
    fields = [("utilization.gpu", "%"), ("memory.used", "MB"), ("memory.free", "MB"), ("utilization.memory", "%"),
              ("fan.speed", "%"), ("temperature.gpu", "°C"), ("temperature.memory", "°C")]
    result = subprocess.run(
        [smi, f"--query-gpu={','.join(f for f, _ in fields)}", "--format=csv,nounits,noheader", f"--id={index}"],
        capture_output=True, text=True, check=True)
    stats = {}
    for (field, unit), value in zip(fields, result.stdout.strip().split(",")):
        with contextlib.suppress(ValueError):  # "[N/A]": this GPU has no such sensor
            stats[f"{field} ({unit})"] = float(value)
    return stats
