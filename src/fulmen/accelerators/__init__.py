"""The hardware a run can use: ``Accelerator`` and the CPU, CUDA and MPS accelerators.

``Trainer(accelerator=...)`` takes a name from ``AcceleratorRegistry`` ("cpu", "cuda"/"gpu", "mps", "auto") or an
instance; ``trainer.accelerator`` is the object. TPUs (XLA) are not supported.

Example::

    from fulmen.accelerators import CPUAccelerator, find_usable_cuda_devices

    trainer = fulmen.Trainer(accelerator=CPUAccelerator(), devices=2)
"""

from __future__ import annotations

from typing import Any

from fulmen.accelerators.accelerator import Accelerator
from fulmen.accelerators.cpu import CPUAccelerator
from fulmen.accelerators.cuda import CUDAAccelerator, find_usable_cuda_devices
from fulmen.accelerators.mps import MPSAccelerator
from fulmen.accelerators import registry as _registry
from fulmen.errors import MisconfigurationException

AcceleratorRegistry = _registry.AcceleratorRegistry
"""The names ``Trainer(accelerator=...)`` resolves: "cpu", "cuda", "mps" and whatever you register.

Example::

    from fulmen.accelerators import AcceleratorRegistry, CPUAccelerator

    AcceleratorRegistry.register("cpu_again", CPUAccelerator)
    trainer = fulmen.Trainer(accelerator="cpu_again")
"""

for _cls in (CPUAccelerator, CUDAAccelerator, MPSAccelerator):
    _cls.register_accelerators(AcceleratorRegistry)


def resolve_accelerator(accelerator: Any) -> Accelerator:
    """The accelerator object for ``Trainer(accelerator=...)``: an instance as given, or a registered name;
    "auto" takes a GPU when there is one (CUDA, else MPS), and "gpu" whichever GPU this machine has.

    Example::

        resolve_accelerator("auto")  # CPUAccelerator() on a machine without a GPU
    """
    if isinstance(accelerator, Accelerator):
        return accelerator
    if not isinstance(accelerator, str):
        raise MisconfigurationException(
            f"accelerator={accelerator!r} is neither a name nor an Accelerator; pass 'auto', 'cpu', 'cuda' (or "
            "'gpu'), 'mps', or an instance such as CPUAccelerator().")
    name = accelerator.lower()
    if name in ("auto", "gpu"):
        found = next((n for n in ("cuda", "mps") if AcceleratorRegistry[n]["accelerator"].is_available()), None)
        if found is None and name == "gpu":
            raise MisconfigurationException(
                "accelerator='gpu' was requested, but torch sees no CUDA GPU (nor Apple's MPS) here. Use "
                "accelerator='cpu', or 'auto' to take a GPU only when there is one.")
        name = found or "cpu"
    if name not in AcceleratorRegistry:
        raise MisconfigurationException(
            f"accelerator={accelerator!r} is not known; use 'auto', 'gpu', "
            + ", ".join(repr(n) for n in sorted(AcceleratorRegistry)) + " or an Accelerator instance.")
    result = AcceleratorRegistry.get(name)
    if not result.is_available():
        hint = {"cuda": "torch sees no CUDA GPU here", "mps": "Apple's MPS backend is not available here"}.get(
            name, "it is not available here")
        raise MisconfigurationException(
            f"accelerator={accelerator!r} was requested, but {hint}. Use accelerator='cpu', or 'auto' to take a GPU "
            "only when there is one.")
    return result


__all__ = ["Accelerator", "AcceleratorRegistry", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator",
           "find_usable_cuda_devices"]
