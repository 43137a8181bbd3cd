"""Where a fit resumes from: ``ckpt_path="last"``, ``"best"`` and ``"hpc"``, and where preemption saves go.

``"last"`` means *the newest valid checkpoint this run has written*: every ``.ckpt`` in the directories
of the run's ModelCheckpoint callbacks (and of earlier versions of its logger, when the checkpoint
directory follows the logger's version), the preemption saves and ``OnExceptionCheckpoint``'s file.
They are ranked by the time and step recorded inside (``fulmen_saved_at``, ``global_step``), not by
file name, read cheaply (tensors are memory-mapped, not read). A damaged file is skipped with a
warning naming it. With none, the fit starts from scratch and says so once, so re-running the same
command after any interruption is always right.
"""

from __future__ import annotations

import os
import re
from typing import Any

from fulmen import checkpoint as _io
from fulmen._utils import rank_zero_info, rank_zero_warn
from fulmen.errors import CheckpointCorruptedError, CheckpointError, MisconfigurationException

PREEMPTED_NAME = "preempted.ckpt"
_HPC = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def _default_dir(trainer: Any) -> str:
    return os.path.join(trainer.default_root_dir, "checkpoints")


def _logger_version_dirs(trainer: Any) -> list[str]:
    """``<root>/<each version>/checkpoints`` of the first logger, without fixing its version."""
    lg = trainer.loggers[0]
    root = getattr(lg, "root_dir", None)
    if getattr(lg, "_version", 0) is not None or root is None or not _io.is_local(root):
        from fulmen.callbacks.model_checkpoint import ModelCheckpoint

        return [ModelCheckpoint()._resolve_dirpath(trainer)]
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [os.path.join(root, n, "checkpoints") for n in names if os.path.isdir(os.path.join(root, n, "checkpoints"))]


def candidate_paths(trainer: Any) -> list[str]:
    """Every checkpoint file or directory ``"last"`` may pick for this run (deduplicated, links resolved)."""
    from fulmen.callbacks.on_exception_checkpoint import OnExceptionCheckpoint

    dirs: list[str] = [_default_dir(trainer)]
    for cb in trainer.checkpoint_callbacks:
        if cb.dirpath is not None:
            dirs.append(cb.dirpath)
        elif trainer.loggers:
            dirs += _logger_version_dirs(trainer)
    files = [cb.ckpt_path for cb in trainer.callbacks if isinstance(cb, OnExceptionCheckpoint)]
    root = trainer.default_root_dir
    if os.path.isdir(root):
        files += [os.path.join(root, n) for n in os.listdir(root) if _HPC.match(n)]
    for d in dirs:
        if not _io.is_local(d):
            fs = _io.get_filesystem(d)
            if fs.isdir(d):
                files += [p if "://" in p else f"{d.split('://')[0]}://{p}" for p in fs.ls(d, detail=False)
                          if p.endswith(".ckpt")]
            continue
        if os.path.isdir(d):
            files += [os.path.join(d, n) for n in os.listdir(d) if n.endswith(".ckpt") and not n.startswith(".")]
    seen: dict[str, str] = {}
    for f in files:
        local = _io.is_local(f)
        if not local or os.path.exists(f):
            seen.setdefault(os.path.realpath(f) if local else f, f)
    return list(seen.values())


def _rank(path: str, training: bool) -> tuple[float, int] | None:
    """``(saved_at, global_step)`` read from inside the file; None (with a warning) when it cannot be used."""
    local = _io.is_local(path)
    if local and os.path.isdir(path):  # a sharded checkpoint: its strategy reads it; rank it by time
        return os.path.getmtime(path), -1
    try:
        header = _io.read_checkpoint_header(path)
    except CheckpointCorruptedError as err:
        rank_zero_warn(f'ckpt_path="last" skips a damaged checkpoint: {err}')
        return None
    except CheckpointError as err:
        rank_zero_warn(f'ckpt_path="last" skips {path!r}: {err}')
        return None
    # not a checkpoint, or (for a fit) weights only: a fit cannot continue from it
    if not isinstance(header, dict) or "state_dict" not in header or (training and "optimizer_states" not in header):
        return None
    saved_at = header.get("fulmen_saved_at")
    if not isinstance(saved_at, (int, float)):
        saved_at = os.path.getmtime(path) if local else 0.0
    return float(saved_at), int(header.get("global_step", 0))


def last_candidates(trainer: Any, training: bool = True) -> list[str]:
    """The run's usable checkpoints, newest first (by the save time, then the step, recorded inside)."""
    ranked = [(key, path) for path in candidate_paths(trainer) if (key := _rank(path, training)) is not None]
    return [path for _, path in sorted(ranked, key=lambda item: item[0], reverse=True)]


def hpc_resume_path(trainer: Any) -> str | None:
    """The newest ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir`` (Lightning's SLURM requeue checkpoints)."""
    root = trainer.default_root_dir
    if not os.path.isdir(root):
        return None
    found = [(int(m.group(1)), n) for n in os.listdir(root) if (m := _HPC.match(n))]
    return os.path.join(root, max(found)[1]) if found else None


def hpc_save_path(trainer: Any) -> str:
    """The next ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir``, as Lightning names a requeue save."""
    current = hpc_resume_path(trainer)
    n = int(_HPC.match(os.path.basename(current)).group(1)) + 1 if current else 1
    return os.path.join(trainer.default_root_dir, f"hpc_ckpt_{n}.ckpt")


def preemption_path(trainer: Any) -> str:
    """Where a SIGTERM save goes: the first ModelCheckpoint's directory, else ``<default_root_dir>/checkpoints``."""
    from fulmen.callbacks.model_checkpoint import _join

    return _join(getattr(trainer.checkpoint_callback, "dirpath", None) or _default_dir(trainer), PREEMPTED_NAME)


def adopt_logger_version(trainer: Any, path: str) -> None:
    """Resuming a run whose loggers' versions are not fixed: continue in the version the checkpoint recorded
    (or, for a checkpoint under ``<root>/<version>/checkpoints``, that version), so the logs and checkpoints
    of the interrupted run go on in the same folder."""
    if not trainer.loggers:
        return
    try:  # the checkpoint records each logger's version (fulmen checkpoints)
        header = _io.read_checkpoint_header(path) if not os.path.isdir(path) else {}
        states = header.get("loops", {}).get("fulmen", {}).get("logger_states") or []
    except CheckpointError:
        states = []
    for lg, state in zip(trainer.loggers, states):
        version = state.get("version") if isinstance(state, dict) else None
        if version is not None and hasattr(lg, "_version") and lg._version is None:
            lg._version = version
    lg = trainer.loggers[0]
    root = getattr(lg, "root_dir", None)
    if root is None or getattr(lg, "_version", 0) is not None or not _io.is_local(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.basename(parent) != "checkpoints" or os.path.dirname(os.path.dirname(parent)) != os.path.abspath(root):
        return
    name = os.path.basename(os.path.dirname(parent))
    match = re.fullmatch(r"version_(\d+)", name)
    lg._version = int(match.group(1)) if match else name


def resolve_fit_path(trainer: Any, ckpt_path: str | None) -> list[str] | None:
    """The checkpoint(s) to try, in order, for ``trainer.fit(ckpt_path=...)``; None to start from scratch."""
    if ckpt_path is None:
        if not _slurm_detected() or hpc_resume_path(trainer) is None:
            return None
        ckpt_path = "hpc"  # Lightning resumes a requeued job itself
    if ckpt_path == "last":
        found = last_candidates(trainer, training=True)
        if not found:
            rank_zero_info('ckpt_path="last": no checkpoint of this run was found, so training starts from scratch.')
            return None
        adopt_logger_version(trainer, found[0])
        return found
    if ckpt_path == "hpc":
        path = hpc_resume_path(trainer)
        if path is None:
            raise MisconfigurationException(
                f'ckpt_path="hpc" found no hpc_ckpt_<n>.ckpt in {trainer.default_root_dir!r}. Pass a checkpoint path, '
                'or ckpt_path="last" to start from scratch when there is none.'
            )
        return [path]
    if ckpt_path == "best":
        path = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not path:
            raise MisconfigurationException(
                'ckpt_path="best" needs a ModelCheckpoint that has saved a best model in this session. Pass a path, '
                'or ckpt_path="last" to resume from the newest checkpoint on disk.'
            )
        return [path]
    return [ckpt_path]


def _slurm_detected() -> bool:
    """Running as a SLURM batch job (not an interactive `srun --pty bash` session), as Lightning detects it."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")
