"""Lightning's ``lightning.fabric.accelerators`` path: the Trainer's accelerators, the same objects."""

from fulmen.accelerators import (Accelerator, AcceleratorRegistry, CPUAccelerator, CUDAAccelerator, MPSAccelerator,
                                 find_usable_cuda_devices)

__all__ = ["Accelerator", "AcceleratorRegistry", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator",
           "find_usable_cuda_devices"]
