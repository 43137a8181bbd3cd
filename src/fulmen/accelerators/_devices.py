"""Reading a ``devices=`` flag: Lightning's forms (an int, a list of indices, "0,1", "auto", -1) as indices."""

from __future__ import annotations

from typing import Any

from fulmen.errors import MisconfigurationException


def parse_indices(devices: Any, available: int, kind: str) -> list[int]:
    """The device indices ``devices`` names, checked against the ``available`` devices of ``kind`` ("GPU").

    "auto" and -1 mean all of them; an int ``n`` the first ``n``; a list or "0,2" those indices.
    """
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit() and "," not in devices:
        devices = int(devices)
    if devices in ("auto", None) or devices == -1:
        return list(range(available))
    if isinstance(devices, bool):
        raise MisconfigurationException(f"devices={devices!r}: pass a number of devices, a list of indices or 'auto'.")
    if isinstance(devices, int):
        if devices < 1:
            raise MisconfigurationException(f"devices={devices}: pass a positive number of devices, -1 (all) or 'auto'.")
        if devices > available:
            raise MisconfigurationException(
                f"devices={devices} asks for {devices} {kind}s, but torch sees {available} here. Pass "
                f"devices<={available} (or devices=-1 for all of them)."
            )
        return list(range(devices))
    ids = _listed(devices)
    missing = [i for i in ids if not 0 <= i < available]
    if missing:
        raise MisconfigurationException(
            f"devices={devices!r} names {kind}(s) {missing}, but torch sees {available} {kind}(s)"
            + (f" (indices 0..{available - 1})." if available else ".")
        )
    return ids


def parse_count(devices: Any) -> int:
    """How many processes ``devices`` asks for, where devices are counted, not indexed (the CPU):
    "auto" and -1 are one, and a list or "0,1" count their entries."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit() and "," not in devices:
        devices = int(devices)
    if devices in ("auto", None) or devices == -1:
        return 1
    if isinstance(devices, bool):
        raise MisconfigurationException(f"devices={devices!r}: pass a number of devices, a list of indices or 'auto'.")
    if isinstance(devices, int):
        if devices < 1:
            raise MisconfigurationException(f"devices={devices}: pass a positive number of devices, -1 (all) or 'auto'.")
        return devices
    return len(_listed(devices))


def _listed(devices: Any) -> list[int]:
    if isinstance(devices, str):
        try:
            ids = [int(p) for p in devices.split(",") if p.strip()]
        except ValueError:
            raise MisconfigurationException(
                f"devices={devices!r} is not understood; pass an int, a list of indices, '0,1' or 'auto'."
            ) from None
    elif isinstance(devices, (list, tuple)):
        ids = [int(d) for d in devices]
    else:
        raise MisconfigurationException(f"devices={devices!r} is not understood; pass an int, a list of indices or 'auto'.")
    if not ids or len(set(ids)) != len(ids):
        raise MisconfigurationException(f"devices={devices!r}: list each device index once, e.g. devices=[0, 1].")
    return ids
