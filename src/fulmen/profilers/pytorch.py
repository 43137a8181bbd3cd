"""``PyTorchProfiler``: operator-level timings with ``torch.profiler``, a Chrome trace and a table.

Example::

    from fulmen.profilers.pytorch import PyTorchProfiler

    trainer = fulmen.Trainer(profiler=PyTorchProfiler(dirpath="traces", filename="prof", row_limit=15), max_steps=20)
    # traces/fit-prof-<step action>.<time_ns>.pt.trace.json and traces/fit-prof.txt
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

from fulmen.errors import MisconfigurationException
from fulmen.profilers.profiler import Profiler

__all__ = ["PyTorchProfiler"]


class _ModuleNames:
    """Names every submodule's forward in the trace: ``[pl][module]{class path}: {name}`` ranges."""

    def __init__(self, model: Any) -> None:
        import torch

        self._handles: list[Any] = []
        self._open: dict[str, Any] = {}
        for name, module in model.named_modules():
            if not name:
                continue
            label = f"[pl][module]{type(module).__module__}.{type(module).__name__}: {name}"

            def enter(mod: Any, args: Any, label: str = label) -> None:
                rng = torch.profiler.record_function(label)
                rng.__enter__()
                self._open[label] = rng

            def leave(mod: Any, args: Any, out: Any, label: str = label) -> None:
                rng = self._open.pop(label, None)
                if rng is not None:
                    rng.__exit__(None, None, None)

            self._handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for rng in self._open.values():
            rng.__exit__(None, None, None)
        self._handles, self._open = [], {}


class PyTorchProfiler(Profiler):
    """``torch.profiler`` over a run, each fulmen action a named range (``[pl][profile]<action>``).

    By default the whole run is recorded; pass ``schedule=torch.profiler.schedule(...)`` to record only
    some steps (the profiler steps after each training/validation/test/predict step).

    Args:
        dirpath, filename: Where the report (``{stage}-{filename}.txt``) and the trace go; ``dirpath``
            defaults to the Trainer's log directory. Without a filename the report is printed.
        group_by_input_shapes: Group the table's rows by operator and input shapes (needs ``record_shapes=True``).
        emit_nvtx: Emit NVTX ranges for ``nsys``/``nvprof`` instead of recording (CUDA only; no table).
        export_to_chrome: Write the trace ``{stage}-{filename}-{action}.{time_ns}.pt.trace.json``
            (open it in chrome://tracing, Perfetto or TensorBoard's profiler plugin).
        row_limit: Rows of the table (-1: all).
        sort_by_key: Column the table is sorted by; default ``cuda_time_total`` when CUDA is recorded,
            else ``cpu_time_total``.
        record_module_names: Name every submodule's forward in the trace.
        table_kwargs: More keyword arguments for ``EventList.table`` (e.g. ``max_name_column_width``).
        **profiler_kwargs: Keyword arguments for ``torch.profiler.profile`` (``record_shapes``,
            ``profile_memory``, ``with_stack``, ``schedule``, ``activities`` ...).

    After the run, ``function_events`` holds the recorded events (torch's ``EventList``).

    Example::

        profiler = PyTorchProfiler(filename="prof", record_shapes=True, group_by_input_shapes=True)
        fulmen.Trainer(profiler=profiler, max_steps=10).fit(model)
        profiler.function_events.key_averages().table(row_limit=5)
    """

    STEP_FUNCTIONS = {"training_step", "validation_step", "test_step", "predict_step"}
    AVAILABLE_SORT_KEYS = {
        "cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage", "cuda_memory_usage",
        "self_cpu_memory_usage", "self_cuda_memory_usage", "count",
    }

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath, filename)
        self._group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", False)
        self._emit_nvtx = emit_nvtx
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._record_module_names = record_module_names
        self._profiler_kwargs = profiler_kwargs
        self._table_kwargs = dict(table_kwargs or {})
        self._sort_by_key = sort_by_key
        if sort_by_key is not None and sort_by_key not in self.AVAILABLE_SORT_KEYS:
            raise MisconfigurationException(
                f"Found sort_by_key: {sort_by_key}. Should be within {self.AVAILABLE_SORT_KEYS}. "
                f"Pass one of {sorted(self.AVAILABLE_SORT_KEYS)}, or leave it out for the default."
            )
        self._check_table_kwargs()
        schedule = profiler_kwargs.get("schedule")
        if schedule is not None:
            import torch

            if not callable(schedule):
                raise MisconfigurationException(
                    f"Schedule should be a callable. Found: {schedule}. Pass `torch.profiler.schedule(...)`."
                )
            action = schedule(0)
            if not isinstance(action, torch.profiler.ProfilerAction):
                raise MisconfigurationException(
                    f"Schedule should return a `torch.profiler.ProfilerAction`. Found: {action}. "
                    "Build it with `torch.profiler.schedule(wait=..., warmup=..., active=...)`."
                )
        #: torch's ``EventList`` of everything recorded, once the run (or ``summary()``) ended the recording
        self.function_events: Any = None
        self.profiler: Any = None
        self.trace_path: str | None = None
        self._lightning_module: Any = None  # set by the Trainer when the run starts
        self._nvtx_parent: Any = None
        self._module_names: _ModuleNames | None = None
        self._ranges: dict[str, Any] = {}
        self._step_action: str | None = None
        self._table = ""

    # the Lightning spellings of the settings, readable after construction
    export_to_chrome = property(lambda self: self._export_to_chrome)
    row_limit = property(lambda self: self._row_limit)
    sort_by_key = property(lambda self: self._sort_by_key)

    def _check_table_kwargs(self) -> None:
        from torch.autograd.profiler_util import EventList

        valid = set(inspect.signature(EventList.table).parameters) - {"self", "sort_by", "row_limit"}
        for key in self._table_kwargs:
            if key in ("sort_by", "row_limit"):
                raise KeyError(
                    f"Found invalid table_kwargs key: {key}. This is already a positional argument of the Profiler "
                    f"(pass it as `{'sort_by_key' if key == 'sort_by' else 'row_limit'}=`)."
                )
            if key not in valid:
                raise KeyError(f"Found invalid table_kwargs key: {key}. Should be within {valid}.")

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        import torch

        super().setup(stage, local_rank, log_dir)
        self.function_events, self._table, self._step_action = None, "", None
        if self._emit_nvtx:
            self._nvtx_parent = torch.cuda.profiler.profile()
            self._nvtx_parent.__enter__()
            self.profiler = torch.autograd.profiler.emit_nvtx(
                record_shapes=self._profiler_kwargs.get("record_shapes", False))
        else:
            kwargs = dict(self._profiler_kwargs)
            if not kwargs.get("activities"):
                kwargs["activities"] = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    kwargs["activities"].append(torch.profiler.ProfilerActivity.CUDA)
            accepted = inspect.signature(torch.profiler.profile.__init__).parameters
            self.profiler = torch.profiler.profile(**{k: v for k, v in kwargs.items() if k in accepted})
        self.profiler.__enter__()
        if self._record_module_names and self._lightning_module is not None:
            self._module_names = _ModuleNames(self._lightning_module)

    def start(self, action_name: str) -> None:
        import torch

        if self.profiler is None:  # used outside a run: nothing to record into
            return
        rng = torch.profiler.record_function("[pl][profile]" + action_name)
        rng.__enter__()
        self._ranges[action_name] = rng

    def stop(self, action_name: str) -> None:
        rng = self._ranges.pop(action_name, None)
        if rng is not None:
            rng.__exit__(None, None, None)
        if any(action_name.endswith(step) for step in self.STEP_FUNCTIONS):
            self._step_action = action_name
            if self._profiler_kwargs.get("schedule") is not None and not self._emit_nvtx and self.profiler is not None:
                self.profiler.step()

    def _finish(self) -> None:
        """End the recording: keep the events, write the trace, build the table."""
        prof, self.profiler = self.profiler, None
        if prof is None:
            return
        for name in list(self._ranges):
            self.stop(name)
        if self._module_names is not None:
            self._module_names.remove()
            self._module_names = None
        prof.__exit__(None, None, None)
        if self._nvtx_parent is not None:
            self._nvtx_parent.__exit__(None, None, None)
            self._nvtx_parent = None
        if self._emit_nvtx:
            return
        self.function_events = prof.events()
        if self._export_to_chrome and self.function_events:
            os.makedirs(self.dirpath or ".", exist_ok=True)
            name = self._prepare_filename(action_name=self._step_action, extension="")
            self.trace_path = os.path.join(self.dirpath or ".", f"{name}.{time.time_ns()}.pt.trace.json")
            prof.export_chrome_trace(self.trace_path)
        if not self.function_events or not self._profiler_kwargs.get("enabled", True):
            return
        key = self._sort_by_key or (
            "cuda_time_total" if any(e.device_type.name == "CUDA" for e in self.function_events) else "cpu_time_total")
        averages = self.function_events.key_averages(group_by_input_shapes=self._group_by_input_shapes)
        self._table = averages.table(sort_by=key, row_limit=self._row_limit, **self._table_kwargs)

    def summary(self) -> str:
        """The report: ``{STAGE} Profiler Report``, ``Profile stats for: records`` and torch's operator table."""
        self._finish()
        return self._stats_to_str({"records": self._table}) if self._table else ""

    def teardown(self, stage: str | None) -> None:
        self._finish()

    def describe(self) -> None:
        # the table exists once the torch profiler stopped, so that comes first here
        self._finish()
        super().describe()
