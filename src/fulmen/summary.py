"""The layer table printed at the start of fit: parameters, mode, sizes and FLOPs per layer.

Example::

    from fulmen.summary import summarize

    print(summarize(model, max_depth=2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_UNKNOWN = "?"


def human_count(n: float) -> str:
    """``1234567 -> '1.2 M'``: a count with a thousands suffix (K, M, B, T), as in summaries.

    Example::

        human_count(130), human_count(2176)  # ('130', '2.2 K')
    """
    for suffix in ("", " K", " M", " B", " T"):
        if abs(n) < 1000 or suffix == " T":
            return f"{int(n)}" if suffix == "" else f"{n:.1f}{suffix}"
        n /= 1000
    return str(n)  # pragma: no cover - the loop always returns


def _numel(params: Any) -> int:
    return sum(0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel() for p in params)


@dataclass
class LayerInfo:
    """One row of the table: a submodule, its parameter count and mode, and sizes when known."""

    name: str
    type: str
    params: int
    training: bool
    in_size: Any = _UNKNOWN
    out_size: Any = _UNKNOWN
    flops: int | None = None


@dataclass
class Summary:
    """What ``summarize`` found; ``str(summary)`` is the printed table.

    ``model_size_mb`` is the memory of all parameters (their real dtypes), in megabytes (1e6 bytes).
    """

    layers: list[LayerInfo]
    total_params: int
    trainable_params: int
    model_size_mb: float
    train_modules: int
    eval_modules: int
    total_flops: int | None = None

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        # one table format in fulmen, Lightning's: see fulmen.utilities.model_summary
        from fulmen.utilities.model_summary.model_summary import ModelSummary

        return str(ModelSummary._wrap(self))

    __repr__ = __str__


def summarize(model: nn.Module, max_depth: int = 1) -> Summary:
    """Summarise ``model``: one row per submodule down to ``max_depth`` levels (-1: all, 0: no rows).

    When the module has an ``example_input_array``, one forward pass (in eval mode, without gradients)
    adds the input and output sizes and the FLOPs of each row.

    Example::

        summary = summarize(model, max_depth=2)
        summary.total_params, summary.trainable_params
        print(summary)
    """
    if not isinstance(max_depth, int) or max_depth < -1:
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(f"max_depth={max_depth!r}: pass an integer >= -1 (-1 shows every layer).")
    named = [(n, m) for n, m in model.named_modules() if n]
    shown = [(n, m) for n, m in named if max_depth == -1 or n.count(".") < max_depth]
    layers = [LayerInfo(n, type(m).__name__, _numel(m.parameters()), m.training) for n, m in shown]
    params = list(model.parameters())
    total = _numel(params)
    trainable = _numel(p for p in params if p.requires_grad)
    size = sum(0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel() * p.element_size()
               for p in params) / 1e6
    train_modules = sum(m.training for _, m in named)
    summary = Summary(layers, total, trainable, size, train_modules, len(named) - train_modules)
    example = getattr(model, "example_input_array", None)
    if example is not None and layers:
        _trace_forward(model, example, dict(shown), summary)
    return summary


def _size(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        sizes = [_size(v) for v in x]
        return sizes[0] if len(sizes) == 1 else sizes
    return _UNKNOWN


def _trace_forward(model: nn.Module, example: Any, shown: dict[str, nn.Module], summary: Summary) -> None:
    """One forward pass of ``example`` to fill in sizes and FLOPs; modes and grad state are restored."""
    from torch.utils.flop_counter import FlopCounterMode

    from fulmen.utilities import move_data_to_device

    by_name = {layer.name: layer for layer in summary.layers}
    hooks = []
    for name, module in shown.items():
        def record(mod: nn.Module, args: Any, out: Any, layer: LayerInfo = by_name[name]) -> None:
            layer.in_size, layer.out_size = _size(args), _size(out)

        hooks.append(module.register_forward_hook(record))
    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = move_data_to_device(example, device)
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if isinstance(example, (list, tuple)):
                model(*example)
            elif isinstance(example, dict):
                model(**example)
            else:
                model(example)
        counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        root = type(model).__name__
        summary.total_flops = counts.get("Global", 0)
        for layer in summary.layers:
            layer.flops = counts.get(f"{root}.{layer.name}", 0)
    except Exception as err:  # a summary must never stop training
        from fulmen.utilities import rank_zero_warn

        rank_zero_warn(f"The model summary could not run `example_input_array` through the model ({err}); "
                       "sizes and FLOPs are left out.")
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
