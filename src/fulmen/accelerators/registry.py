"""``AcceleratorRegistry``: the accelerator names ``Trainer(accelerator="...")`` understands, and their classes."""

from __future__ import annotations

from typing import Any, Callable

from fulmen.errors import MisconfigurationException


class _AcceleratorRegistry(dict):
    """A dict of name -> ``{"accelerator": cls, "init_params": {...}, "description": str, "accelerator_name": name}``.

    Example::

        AcceleratorRegistry.register("my_cpu", CPUAccelerator, description="the CPU, under my name")
        AcceleratorRegistry.get("my_cpu")  # a fresh CPUAccelerator()
    """

    def register(self, name: str, accelerator: Callable | None = None, description: str = "",
                 override: bool = False, **init_params: Any) -> Callable:
        """Register ``accelerator`` (a class) under ``name``; without ``accelerator`` it returns a class decorator."""
        if not isinstance(name, str):
            raise TypeError(f"An accelerator's name must be a str, got {name!r}.")
        if name in self and not override:
            raise MisconfigurationException(
                f"An accelerator named {name!r} is already registered. Pass override=True to replace it.")

        def do_register(cls: Callable) -> Callable:
            self[name] = {"description": description, "init_params": init_params, "accelerator": cls,
                          "accelerator_name": name}
            return cls

        return do_register(accelerator) if accelerator is not None else do_register

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """A new instance of the accelerator registered as ``name`` (``default`` when there is none)."""
        if name in self:
            data = self[name]
            return data["accelerator"](**data["init_params"])
        if default is not None:
            return default
        raise KeyError(f"No accelerator named {name!r}; registered: {', '.join(sorted(self)) or 'none'}.")

    def remove(self, name: str) -> None:
        """Forget ``name``."""
        self.pop(name)

    def available_accelerators(self) -> set[str]:
        """The registered names."""
        return set(self)

    def __str__(self) -> str:
        return "Registered Accelerators: " + ", ".join(sorted(self))


AcceleratorRegistry = _AcceleratorRegistry()  # documented where fulmen.accelerators publishes it
