"""The layer table printed at the start of fit: parameters, mode, sizes and FLOPs per layer.

:func:`summarize` computes it (one pass over the submodules, and one forward pass of ``example_input_array``
when the model has one, for sizes and FLOPs); :class:`ModelSummary` shows it with Lightning's attribute names
and table format (Lightning's path for it is :mod:`fulmen.utilities.model_summary`).

Example::

    from fulmen.summary import summarize

    print(summarize(model, max_depth=2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fulmen._utils import move_data_to_device, rank_zero_warn
from fulmen.errors import MisconfigurationException

UNKNOWN_SIZE = "?"
NOT_APPLICABLE = "n/a"


def _numel(params: Any) -> int:
    return sum(0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel() for p in params)


@dataclass
class LayerInfo:
    """One row of the table: a submodule, its parameter count and mode, and sizes when known."""

    name: str
    type: str
    params: int
    training: bool
    in_size: Any = UNKNOWN_SIZE
    out_size: Any = UNKNOWN_SIZE
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
        return str(ModelSummary._wrap(self))  # one table format in fulmen, Lightning's

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
    return UNKNOWN_SIZE


def _trace_forward(model: nn.Module, example: Any, shown: dict[str, nn.Module], summary: Summary) -> None:
    """One forward pass of ``example`` to fill in sizes and FLOPs; modes and grad state are restored."""
    from torch.utils.flop_counter import FlopCounterMode

    hooks = []
    for layer, module in zip(summary.layers, shown.values()):  # one row per shown module, in order
        def record(mod: nn.Module, args: Any, out: Any, layer: LayerInfo = layer) -> None:
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
        rank_zero_warn(f"The model summary could not run `example_input_array` through the model ({err}); "
                       "sizes and FLOPs are left out.")
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training


def get_human_readable_count(number: int) -> str:
    """A count as Lightning's summary spells it: ``123 -> '123  '``, ``1234 -> '1.2 K'``, ``2e6 -> '2.0 M'``,
    ``512_000 -> '512 K'`` (three digits before the unit need no decimal).

    Example::

        get_human_readable_count(2_176)  # '2.2 K'
    """
    if number < 0:
        raise MisconfigurationException(f"get_human_readable_count({number}): counts are never negative.")
    units = [" ", "K", "M", "B", "T"]
    value, unit = float(number), 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{int(value):,d} {units[unit]}" if unit == 0 or value >= 100 else f"{value:,.1f} {units[unit]}"


def get_formatted_model_size(total_model_size: float) -> str:
    """A size in megabytes with three decimals, as under the summary table."""
    return f"{total_model_size:,.3f}"


def parse_batch_shape(batch: Any) -> Any:
    """The shape of ``batch`` as a list, nested like the batch; ``"?"`` for what has no shape.

    Example::

        parse_batch_shape((torch.zeros(2, 3), [torch.zeros(4)]))  # [[2, 3], [[4]]]
    """
    if hasattr(batch, "shape"):
        return list(batch.shape)
    if isinstance(batch, (list, tuple)):
        return [parse_batch_shape(el) for el in batch]
    return UNKNOWN_SIZE


class LayerSummary:
    """One submodule's row: its type, parameter count, mode, and the sizes of its last forward call.

    A forward hook records the sizes until :meth:`detach_hook` (or garbage collection) removes it.

    Example::

        row = LayerSummary(model.layer)
        model(torch.randn(4, 32))
        row.in_size, row.out_size, row.num_parameters  # [4, 32], [4, 2], 66
        row.detach_hook()
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self._in_size: Any = UNKNOWN_SIZE
        self._out_size: Any = UNKNOWN_SIZE
        self._hook = module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: Any, out: Any) -> None:
        self._in_size, self._out_size = _size(args), _size(out)
        self.detach_hook()  # the first call is the one that is reported

    def __del__(self) -> None:
        self.detach_hook()

    def detach_hook(self) -> None:
        if getattr(self, "_hook", None) is not None:
            self._hook.remove()
            self._hook = None

    @property
    def in_size(self) -> Any:
        return self._in_size

    @property
    def out_size(self) -> Any:
        return self._out_size

    @property
    def layer_type(self) -> str:
        return type(self._module).__name__

    @property
    def num_parameters(self) -> int:
        return _numel(self._module.parameters())

    @property
    def training(self) -> bool:
        return self._module.training


def _column(field: str) -> property:
    return property(lambda self: [getattr(layer, field) for layer in self._summary.layers])


class ModelSummary:
    """The summary of ``model`` down to ``max_depth`` levels of submodules (-1: all; 0: no rows).

    Attributes are lists with one entry per row (``layer_names``, ``layer_types``, ``in_sizes``,
    ``out_sizes``, ``param_nums``, ``training_modes``) and totals (``total_parameters``,
    ``trainable_parameters``, ``total_layer_params``, ``model_size`` in MB, ``total_training_modes``,
    ``total_flops``). ``str(summary)`` is the table printed at the start of fit.

    Example::

        summary = ModelSummary(model, max_depth=-1)
        dict(zip(summary.layer_names, summary.param_nums))
    """

    def __init__(self, model: nn.Module, max_depth: int = 1) -> None:
        self._model = model
        self._max_depth = max_depth
        self._summary: Summary = summarize(model, max_depth=max_depth)
        if not self._summary.layers and getattr(model, "example_input_array", None) is not None:
            self._summary.total_flops = summarize(model, max_depth=1).total_flops  # no rows, but the total counts

    @classmethod
    def _wrap(cls, summary: Summary, model: nn.Module | None = None, max_depth: int = -1) -> ModelSummary:
        """A ModelSummary over a summary already computed (:func:`summarize`)."""
        obj = cls.__new__(cls)
        obj._summary, obj._model, obj._max_depth = summary, model, max_depth
        return obj

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        modules = dict(self._model.named_modules()) if self._model is not None else {}
        return [(layer.name, modules[layer.name]) for layer in self._summary.layers if layer.name in modules]

    # one entry per row: a LayerInfo field of every row
    layer_names = _column("name")
    layer_types = _column("type")
    in_sizes = _column("in_size")
    out_sizes = _column("out_size")
    param_nums = _column("params")
    training_modes = _column("training")

    @property
    def total_training_modes(self) -> dict[str, int]:
        return {"train": self._summary.train_modules, "eval": self._summary.eval_modules}

    @property
    def total_parameters(self) -> int:
        return self._summary.total_params

    @property
    def trainable_parameters(self) -> int:
        return self._summary.trainable_params

    @property
    def total_layer_params(self) -> int:
        return sum(self.param_nums)

    @property
    def model_size(self) -> float:
        """Memory of all parameters in megabytes (1e6 bytes)."""
        return self._summary.model_size_mb

    @property
    def total_flops(self) -> int:
        """FLOPs of one forward pass of ``example_input_array``; 0 without one."""
        return self._summary.total_flops or 0

    def _get_summary_data(self) -> list[tuple[str, list[str]]]:
        """The table by column, ``(header, cells)``: what ``ModelSummary.summarize`` callbacks receive."""
        layers = self._summary.layers
        data = [
            (" ", [str(i) for i in range(len(layers))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if t else "eval" for t in self.training_modes]),
            ("FLOPs", [get_human_readable_count(layer.flops or 0) for layer in layers]),
        ]
        if self._summary.total_flops is not None:  # an example input ran through the model: sizes are known
            data += [("In sizes", [str(s) for s in self.in_sizes]), ("Out sizes", [str(s) for s in self.out_sizes])]
        leftover = self.total_parameters - self.total_layer_params
        if leftover > 0:  # parameters of the module itself, or of rows below max_depth: one more row, as Lightning
            for i, (header, cells) in enumerate(data):
                cells.append(" " if i == 0 else "other params" if header == "Name" else
                             get_human_readable_count(leftover) if header == "Params" else NOT_APPLICABLE)
        return data

    def __str__(self) -> str:
        return format_summary_table(self.total_parameters, self.trainable_parameters, self.model_size,
                                    self.total_training_modes, self.total_flops, *self._get_summary_data())

    def __repr__(self) -> str:
        return str(self)


def summary_totals(total_parameters: int, trainable_parameters: int, model_size: float,
                   total_training_modes: dict[str, int], total_flops: int) -> list[tuple[str, str]]:
    """The lines under the table as ``(value, label)``, spelled as Lightning spells them."""
    return [
        (get_human_readable_count(trainable_parameters), "Trainable params"),
        (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
        (get_human_readable_count(total_parameters), "Total params"),
        (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        (str(total_training_modes.get("train", 0)), "Modules in train mode"),
        (str(total_training_modes.get("eval", 0)), "Modules in eval mode"),
        (get_human_readable_count(total_flops), "Total Flops"),
    ]


def format_summary_table(total_parameters: int, trainable_parameters: int, model_size: float,
                         total_training_modes: dict[str, int], total_flops: int,
                         *summary_data: tuple[str, list[str]]) -> str:
    """The summary table from its columns (``(header, cells)``, as ``ModelSummary._get_summary_data()``
    gives them) and the totals under it.

    Example::

        s = ModelSummary(model)
        print(format_summary_table(s.total_parameters, s.trainable_parameters, s.model_size,
                                   s.total_training_modes, s.total_flops, *s._get_summary_data()))
    """
    widths = [max([len(header), *map(len, cells)]) for header, cells in summary_data]
    rows = max((len(cells) for _, cells in summary_data), default=0)
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    rule = "-" * (sum(widths) + 3 * (len(widths) + 1))
    out = []
    if summary_data:
        out += [line([h for h, _ in summary_data]), rule]
        out += [line([cells[i] for _, cells in summary_data]) for i in range(rows)]
        out.append(rule)
    totals = summary_totals(total_parameters, trainable_parameters, model_size, total_training_modes, total_flops)
    out += [f"{value:<10}{label}" for value, label in totals]
    return "\n".join(out)


def model_summary(lightning_module: nn.Module, max_depth: int = 1) -> ModelSummary:
    """The :class:`ModelSummary` of ``lightning_module`` (Lightning's ``utilities.model_summary.summarize``).

    Example::

        print(model_summary(model, max_depth=2))
    """
    return ModelSummary(lightning_module, max_depth=max_depth)
