"""Where a run executes: one device, or several processes behind the same seam (see ``strategy.py``)."""

from __future__ import annotations

import importlib
from typing import Any

from fulmen.strategies.strategy import SingleDeviceStrategy, Strategy

# Trainer(strategy="name") -> (module, class, keyword arguments). Imported only when the name is used.
STRATEGY_NAMES: dict[str, tuple[str, str, dict[str, Any]]] = {}
"""The strategy names ``Trainer(strategy=...)`` accepts besides ``"auto"`` and ``"single_device"``.

Example::

    sorted(STRATEGY_NAMES)[:2]  # ['ddp', 'ddp_find_unused_parameters_false']
    trainer = fulmen.Trainer(strategy="ddp_spawn", devices=2)
"""
for _method, _names in (("popen", ("ddp",)), ("spawn", ("ddp_spawn",)), ("fork", ("ddp_fork", "ddp_notebook"))):
    for _name in _names:
        STRATEGY_NAMES[_name] = ("fulmen.strategies.ddp", "DDPStrategy", {"start_method": _method})
        for _flag in (True, False):
            STRATEGY_NAMES[f"{_name}_find_unused_parameters_{str(_flag).lower()}"] = (
                "fulmen.strategies.ddp", "DDPStrategy", {"start_method": _method, "find_unused_parameters": _flag})

STRATEGY_NAMES["fsdp"] = ("fulmen.strategies.fsdp", "FSDPStrategy", {})
STRATEGY_NAMES["fsdp_cpu_offload"] = ("fulmen.strategies.fsdp", "FSDPStrategy", {"cpu_offload": True})
for _name, _kwargs in (("deepspeed", {}), ("deepspeed_stage_1", {"stage": 1}), ("deepspeed_stage_2", {"stage": 2}),
                       ("deepspeed_stage_2_offload", {"stage": 2, "offload_optimizer": True}),
                       ("deepspeed_stage_3", {"stage": 3}),
                       ("deepspeed_stage_3_offload", {"stage": 3, "offload_optimizer": True, "offload_parameters": True})):
    STRATEGY_NAMES[_name] = ("fulmen.strategies.deepspeed", "DeepSpeedStrategy", _kwargs)


def resolve_strategy_name(name: str) -> Strategy:
    """A fresh strategy object for one of ``STRATEGY_NAMES``.

    Example::

        resolve_strategy_name("ddp_spawn")  # DDPStrategy(start_method="spawn")
    """
    module, cls, kwargs = STRATEGY_NAMES[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


_LAZY = {
    "DDPStrategy": "fulmen.strategies.ddp",
    "ParallelStrategy": "fulmen.strategies.ddp",
    "FSDPStrategy": "fulmen.strategies.fsdp",
    "DeepSpeedStrategy": "fulmen.strategies.deepspeed",
    "ModelParallelStrategy": "fulmen.strategies.model_parallel",
    "ClusterEnvironment": "fulmen.strategies.environments",
    "LightningEnvironment": "fulmen.strategies.environments",
    "TorchElasticEnvironment": "fulmen.strategies.environments",
    "SLURMEnvironment": "fulmen.strategies.environments",
    "KubeflowEnvironment": "fulmen.strategies.environments",
    "LSFEnvironment": "fulmen.strategies.environments",
    "MPIEnvironment": "fulmen.strategies.environments",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fulmen.strategies' has no attribute {name!r}")


__all__ = ["SingleDeviceStrategy", "Strategy", "STRATEGY_NAMES", "resolve_strategy_name", *_LAZY]
