"""Writing and reading checkpoint files: atomic, checksummed, and safe to load by default.

- :func:`save_checkpoint` writes to a temporary file next to the target and renames it over the target,
  so ``path`` always holds either the old file or the complete new one, never a half-written one.
- The file is an ordinary ``torch.save`` zip archive; fulmen puts a SHA-256 of the archive in the zip's
  comment field, which zip readers (``torch.load`` included) ignore. :func:`load_checkpoint` verifies it.
  The zip's end records fix the file's exact length, so a file cut short anywhere (even inside the
  comment) is caught before loading; damage raises :class:`~fulmen.errors.CheckpointCorruptedError`,
  naming the file and the problem, and a failed save raises :class:`~fulmen.errors.CheckpointSaveError`.
  Files without it (e.g. written by Lightning) load without verification.
- :func:`load_checkpoint` unpickles only tensors, containers and an allowlist of plain types
  (``torch.load(weights_only=True)``); anything else needs an explicit ``trusted=True``.

Example::

    from fulmen.checkpoint import save_checkpoint, load_checkpoint

    save_checkpoint({"state_dict": model.state_dict(), "epoch": 3}, "runs/last.ckpt")
    ckpt = load_checkpoint("runs/last.ckpt", map_location="cpu")
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import pickle
import posixpath
import re
import shutil
import struct
import uuid
import warnings
from typing import IO, Any, Callable, Union

import torch

from fulmen.errors import (CheckpointCorruptedError, CheckpointError, CheckpointSaveError, MisconfigurationException,
                           UntrustedCheckpointError, missing_extra)

__all__ = [
    "AsyncCheckpointIO",
    "CheckpointIO",
    "CheckpointNotFoundError",
    "TorchCheckpointIO",
    "exists",
    "get_filesystem",
    "is_local",
    "link_or_copy",
    "load_checkpoint",
    "makedirs",
    "register_safe_type",
    "remove",
    "save_checkpoint",
]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path. Also a ``FileNotFoundError``, so ``except FileNotFoundError`` works."""


# ---------------------------------------------------------------------------------------------------------
# Paths and filesystems. Local paths go through ``os`` directly (fast, no fsspec import); URLs through fsspec.


def _local_path(path: PathLike) -> str | None:
    """The OS path for a local path or ``file://`` URL, ``None`` for any other URL."""
    path = os.fspath(path)
    if "://" not in path:
        return path
    if path.startswith("file://"):
        return path[len("file://") :]
    return None


def is_local(path: PathLike) -> bool:
    """Whether ``path`` is on the local filesystem (a plain path or a ``file://`` URL).

    Example::

        is_local("runs/last.ckpt")       # True
        is_local("s3://bucket/last.ckpt")  # False
    """
    return _local_path(path) is not None


def get_filesystem(path: PathLike, **storage_options: Any):
    """The fsspec filesystem that holds ``path``; ``storage_options`` go to its constructor (credentials etc.).

    Example::

        fs = get_filesystem("s3://bucket/run", anon=False)
        fs.ls("s3://bucket/run")
    """
    return _remote(path, storage_options)[0]


def _is_http(path: PathLike) -> bool:
    return os.fspath(path).lower().startswith(("http://", "https://"))


def _remote(path: PathLike, storage_options: dict | None):
    from fsspec.core import url_to_fs  # lazily: `import fulmen` must stay free of fsspec

    try:
        return url_to_fs(os.fspath(path), **(storage_options or {}))
    except ImportError:
        if not _is_http(path):
            raise
        raise missing_extra("aiohttp", "http", f"Reading {os.fspath(path)!r} over HTTP(S)") from None


def exists(path: PathLike, **storage_options: Any) -> bool:
    """Whether a file or directory exists at ``path`` (local path or fsspec URL).

    Example::

        if exists("runs/last.ckpt"):
            trainer.fit(model, ckpt_path="runs/last.ckpt")
    """
    local = _local_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, p = _remote(path, storage_options)
    return fs.exists(p)


def makedirs(path: PathLike, **storage_options: Any) -> None:
    """Create directory ``path`` and its parents; no error if it exists.

    Example::

        makedirs("runs/version_0/checkpoints")
    """
    local = _local_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=True)
    else:
        fs, p = _remote(path, storage_options)
        fs.makedirs(p, exist_ok=True)


def remove(path: PathLike, **storage_options: Any) -> None:
    """Delete the checkpoint at ``path``: a file, a link (not its target) or a sharded-checkpoint directory.

    A missing path is not an error, so pruning old checkpoints twice is harmless.

    Example::

        remove("runs/epoch=0-step=100.ckpt")
    """
    local = _local_path(path)
    if local is None:
        fs, p = _remote(path, storage_options)
        if fs.exists(p):
            fs.rm(p, recursive=True)
        return
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)
        else:
            os.remove(local)


def _temp_sibling(path: str, paths=os.path) -> str:
    """A unique hidden name in the same directory, so the final rename stays on one filesystem."""
    head, tail = paths.split(path)
    return paths.join(head, f".{tail}.{uuid.uuid4().hex[:12]}.tmp")


_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # what _temp_sibling makes


def remove_stale_temp_files(directory: PathLike, older_than: float = 60.0) -> list[str]:
    """Delete the temporary files that writes cut short (a process killed mid-save) left in ``directory``.

    Only fulmen's own temporary names count, and only files untouched for ``older_than`` seconds, so a
    write in progress elsewhere is left alone. Returns the removed paths.

    Example::

        remove_stale_temp_files("runs/checkpoints")  # ['runs/checkpoints/.last.ckpt.3f2a9c0d1b7e.tmp']
    """
    import time

    local = _local_path(directory)
    if local is None or not os.path.isdir(local):
        return []
    removed = []
    now = time.time()
    for name in os.listdir(local):
        path = os.path.join(local, name)
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if _TEMP_NAME.match(name) and now - os.lstat(path).st_mtime > older_than:
                os.remove(path)
                removed.append(path)
    return removed


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) everywhere.
    with contextlib.suppress(OSError):
        fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def link_or_copy(src: PathLike, dst: PathLike, **storage_options: Any) -> None:
    """Make ``dst`` point at checkpoint ``src``: a relative symlink where possible, else a copy.

    ``dst`` is replaced atomically, so readers see the old or the new target, never a missing file.
    Used for ``ModelCheckpoint(save_last="link")``.

    Example::

        link_or_copy("runs/epoch=3-step=400.ckpt", "runs/last.ckpt")
    """
    src_local, dst_local = _local_path(src), _local_path(dst)
    if src_local is None or dst_local is None:
        fs, src_p = _remote(src, storage_options)
        _, dst_p = _remote(dst, storage_options)
        tmp = _temp_sibling(dst_p, posixpath)
        try:
            fs.copy(src_p, tmp)
            fs.mv(tmp, dst_p)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
        return
    if os.path.abspath(src_local) == os.path.abspath(dst_local):
        return
    directory = os.path.dirname(os.path.abspath(dst_local))
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_sibling(dst_local)
    try:
        try:
            # Relative, so the run directory can be moved or copied without breaking the link.
            os.symlink(os.path.relpath(os.path.abspath(src_local), directory), tmp)
        except (OSError, NotImplementedError):  # e.g. Windows without the symlink privilege
            shutil.copyfile(src_local, tmp)
        os.replace(tmp, dst_local)
        _fsync_dir(directory)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------------------
# Checksum. torch.save writes a zip archive whose last 22 bytes are the end-of-central-directory record,
# ending in a 2-byte comment length (0). fulmen sets that length and appends a comment holding the SHA-256
# of every byte before the length field. Any zip reader skips the comment, so plain torch.load works.

_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_SIZE = 22
_CHECKSUM_MAGIC = b"fulmen-sha256:"
_FOOTER_SIZE = len(_CHECKSUM_MAGIC) + 64  # + hex digest
_CHUNK = 1 << 22


class _ChecksumWriter:
    """File-like for torch.save: hashes the bytes on their way to ``raw`` and holds back the last 22
    (the end record) so :meth:`finish` can add the checksum comment; works on streams that cannot seek."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.held = b""

    def _emit(self, data) -> None:
        if len(data):
            self.sha.update(data)
            self.raw.write(data)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= _EOCD_SIZE:
            self._emit(self.held)
            self._emit(view[:-_EOCD_SIZE])
            self.held = bytes(view[-_EOCD_SIZE:])
        else:
            joined = self.held + bytes(view)
            self._emit(joined[:-_EOCD_SIZE])
            self.held = joined[-_EOCD_SIZE:]
        return len(view)

    def flush(self) -> None:
        pass  # the caller flushes ``raw`` once the footer is written

    def finish(self) -> None:
        end = self.held
        if len(end) != _EOCD_SIZE or not end.startswith(_EOCD_SIGNATURE) or end[-2:] != b"\0\0":
            # A torch version with another layout: keep the file loadable, just without a checksum.
            warnings.warn("torch.save wrote an unexpected zip layout; the checkpoint is saved without a checksum")
            self.raw.write(end)
            return
        self.sha.update(end[:-2])
        footer = _CHECKSUM_MAGIC + self.sha.hexdigest().encode()
        self.raw.write(end[:-2] + struct.pack("<H", len(footer)) + footer)


def _check_archive(size: int, read_at: Callable[[int, int], bytes], path: str) -> str | None:
    """Check a zip checkpoint's end records against its length; return the checksum it carries, if any.

    A zip archive ends with an end record that gives the central directory's offset and size and the
    comment's length (torch adds a zip64 record and locator before it). Together they fix the file's exact
    length, so a file cut anywhere (even inside fulmen's checksum comment) fails here, by name.
    """
    tail_len = min(size, _EOCD_SIZE + _FOOTER_SIZE + 1024)
    tail = read_at(size - tail_len, tail_len)
    pos = tail.rfind(_EOCD_SIGNATURE, 0, max(0, len(tail) - _EOCD_SIZE + 4))
    while pos >= 0:  # the real end record is the last one whose comment ends exactly at the end of the file
        (comment_len,) = struct.unpack("<H", tail[pos + 20 : pos + 22])
        if pos + _EOCD_SIZE + comment_len == len(tail):
            break
        pos = tail.rfind(_EOCD_SIGNATURE, 0, pos)
    if pos < 0:
        found = _CHECKSUM_MAGIC in tail or _EOCD_SIGNATURE in tail
        raise CheckpointCorruptedError(_corrupt_message(
            path, f"it is {size} bytes long, but its zip end record "
            + ("is incomplete" if found else "is missing") + ": the file was cut short"))
    eocd_at = size - tail_len + pos
    cd_size, cd_offset = struct.unpack("<II", tail[pos + 12 : pos + 20])
    locator = tail[pos - 20 : pos] if pos >= 20 else read_at(eocd_at - 20, 20) if eocd_at >= 20 else b""
    if locator[:4] == b"PK\x06\x07":  # zip64: the real offsets live in the zip64 end record
        (z64_at,) = struct.unpack("<Q", locator[8:16])
        record = read_at(z64_at, 56) if z64_at + 56 <= size else b""
        if record[:4] != b"PK\x06\x06":
            raise CheckpointCorruptedError(_corrupt_message(path, "its zip64 end record is missing or damaged"))
        (rest,) = struct.unpack("<Q", record[4:12])
        cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
        end_of_cd, expected_at = z64_at, z64_at + 12 + rest + 20
    else:
        end_of_cd, expected_at = eocd_at, eocd_at
    if cd_offset + cd_size != end_of_cd or expected_at != eocd_at:
        raise CheckpointCorruptedError(_corrupt_message(
            path, f"its zip records disagree about its length ({size} bytes on disk): part of it is missing"))
    comment = tail[pos + _EOCD_SIZE :]
    if comment.startswith(_CHECKSUM_MAGIC):
        if len(comment) != _FOOTER_SIZE:
            raise CheckpointCorruptedError(_corrupt_message(path, "its checksum record is damaged"))
        return comment[len(_CHECKSUM_MAGIC) :].decode("ascii", "replace")
    return None


def _sha256_of_file(path: str, length: int) -> str:
    sha = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while length > 0:
            n = f.readinto(view[: min(_CHUNK, length)])
            if not n:
                break
            sha.update(view[:n])
            length -= n
    return sha.hexdigest()


def _corrupt_message(path: str, detail: str) -> str:
    return (
        f"Checkpoint {path!r} is corrupt or truncated ({detail}). It was probably damaged by an interrupted "
        "copy or a storage fault. Use another checkpoint instead, e.g. the previous `last.ckpt` or a "
        "top-k checkpoint of the same run."
    )


# ---------------------------------------------------------------------------------------------------------
# Safe loading: torch.load(weights_only=True) plus an allowlist of the plain types checkpoints contain.

_extra_safe: list = []  # filled by register_safe_type
_default_safe: list | None = None  # built on first load


def register_safe_type(cls, name: str | None = None):
    """Allow instances of ``cls`` in checkpoints loaded with the safe default. Returns ``cls`` (a decorator).

    Register only plain data types whose construction runs no user-controlled code. torch's safe unpickler
    fills only plain dicts and lists, so a dict subclass needs ``__reduce__`` returning
    ``(type(self), (dict(self),))``. ``name`` is the
    ``"module.QualName"`` the class is pickled under, when it differs from where ``cls`` lives (e.g. a
    Lightning class whose fulmen counterpart should be used; needs torch>=2.6).

    Example::

        @register_safe_type
        class AttributeDict(dict): ...

        register_safe_type(AttributeDict, name="lightning_fabric.utilities.data.AttributeDict")
    """
    _extra_safe.append(cls if name is None else (cls, name))
    return cls


def _default_safe_types() -> list:
    global _default_safe
    if _default_safe is None:
        import argparse
        import collections
        import datetime
        import pathlib

        _default_safe = [
            # (defaultdict, deque and dict subclasses without a __reduce__ cannot be built by torch's safe
            # unpickler at all: it fills only dict, OrderedDict, Counter and list)
            collections.OrderedDict, collections.Counter,
            argparse.Namespace,  # hparams from argparse
            pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath,
            pathlib.PurePosixPath, pathlib.PureWindowsPath,  # paths in hparams / callback state
            datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone,
            frozenset, slice, range,
            *_numpy_safe_types(),
        ]
    return _default_safe + _extra_safe


def _numpy_safe_types() -> list:
    """numpy arrays and scalars, as found in RNG states (``np.random.get_state()``) and logged metrics."""
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar  # numpy 1
    safe: list = [np.ndarray, np.dtype, _reconstruct, scalar]
    safe += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]  # numeric dtype classes only (numpy 2)
    # Files written under the other numpy major name these functions by the other module path.
    other = "numpy.core.multiarray" if _reconstruct.__module__ == "numpy._core.multiarray" else "numpy._core.multiarray"
    safe += [(_reconstruct, f"{other}._reconstruct"), (scalar, f"{other}.scalar")]
    return [t for i, t in enumerate(safe) if t not in safe[:i]]


def _supports_alias() -> bool:
    return tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 6)


def _allowed_names() -> list[str]:
    return [e[1] if isinstance(e, tuple) else f"{e.__module__}.{e.__qualname__}" for e in _default_safe_types()]


def resolve_trusted(weights_only: bool | None, trusted: bool = False) -> bool:
    """Whether to unpickle everything, with ``torch.load``'s meaning of its two environment variables.

    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` makes every load safe, even one asking for ``weights_only=False``;
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` trusts the loads that did not choose (``weights_only=None``).

    Example::

        resolve_trusted(None)   # False, unless TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    """
    truthy = ("1", "y", "yes", "true")
    force_safe = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in truthy
    force_trusted = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in truthy
    if force_safe and force_trusted:
        raise MisconfigurationException(
            "Both TORCH_FORCE_WEIGHTS_ONLY_LOAD and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD are set; unset one of them."
        )
    if force_safe:
        return False
    return trusted or weights_only is False or (force_trusted and weights_only is None)


_TRUST_HINT = (
    "load it with `weights_only=False` (or `trusted=True`, or set the environment variable "
    "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 as for torch.load)"
)


def _torch_load(f, map_location, trusted: bool, mmap: bool = False) -> Any:
    extra = {"mmap": True} if mmap else {}
    if trusted:
        return torch.load(f, map_location=map_location, weights_only=False, **extra)
    safe = _default_safe_types()
    if not _supports_alias():  # torch<2.6 takes classes only, no (class, "pickled.name") pairs
        safe = [t for t in safe if not isinstance(t, tuple)]
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(safe):
            return torch.load(f, map_location=map_location, weights_only=True, **extra)
    known = getattr(torch.serialization, "get_safe_globals", list)()  # torch 2.4: no context manager; add once
    torch.serialization.add_safe_globals([t for t in safe if t not in known])
    return torch.load(f, map_location=map_location, weights_only=True, **extra)


_REFUSED_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)|but got <class '([^']+)'>")


def _refused_globals(err: Exception, source: Callable[[], Any]) -> list[str]:
    """The classes/functions the safe unpickler refused; empty if ``err`` names none (e.g. garbage bytes)."""
    names = [a or b for a, b in _REFUSED_IN_MESSAGE.findall(str(err))]
    if names:
        with contextlib.suppress(Exception):  # all of them at once, not only the first the unpickler met
            allowed = set(_allowed_names())
            names += [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(source()) if n not in allowed]
    return sorted(set(names))


def _looks_damaged(err: BaseException) -> bool:
    """Errors torch raises for bytes that are not a readable archive (as opposed to e.g. a bad map_location)."""
    if isinstance(err, (EOFError, pickle.UnpicklingError, struct.error, UnicodeDecodeError)):
        return True
    return isinstance(err, (RuntimeError, ValueError)) and any(
        s in str(err) for s in ("PytorchStreamReader", "inline_container", "zip archive", "central directory", "magic")
    )


class _Source:
    """One checkpoint file opened for reading: its size, first bytes, random access, and a torch.load source."""

    def __init__(self, path: PathLike, storage_options: dict | None) -> None:
        self.shown = shown = os.fspath(path)
        self.local = local = _local_path(path)
        self.data: bytes | None = None
        if local is not None:
            if not os.path.exists(local):
                raise CheckpointNotFoundError(f"Checkpoint {shown!r} does not exist. Check the path (and the run directory).")
            if os.path.isdir(local):
                candidates = sorted(n for n in os.listdir(local) if n.endswith(".ckpt"))[:5]
                hint = f" It contains: {', '.join(candidates)}." if candidates else ""
                raise CheckpointError(
                    f"Checkpoint path {shown!r} is a directory; pass the checkpoint file inside it.{hint} "
                    "(Sharded DeepSpeed/FSDP checkpoints are directories read by their strategy, not by this function.)"
                )
            self.size = os.path.getsize(local)
            with open(local, "rb") as f:
                self.head = f.read(4)
        else:
            fs, remote_path = _remote(path, storage_options)
            if not fs.exists(remote_path):
                raise CheckpointNotFoundError(f"Checkpoint {shown!r} does not exist. Check the path (and the run directory).")
            # over HTTP every URL is a file, and asking whether it is a directory can download it whole
            if not _is_http(path) and fs.isdir(remote_path):
                raise CheckpointError(f"Checkpoint path {shown!r} is a directory; pass the checkpoint file inside it.")
            with fs.open(remote_path, "rb") as f:
                self.data = f.read()  # torch.load reads the whole file anyway; read it once and verify in memory
            self.size, self.head = len(self.data), self.data[:4]

    def read_at(self, offset: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[max(0, offset) : max(0, offset) + n]
        with open(self.local, "rb") as f:
            f.seek(max(0, offset))
            return f.read(n)

    def opener(self) -> Any:
        return self.local if self.data is None else io.BytesIO(self.data)

    def check(self) -> str | None:
        """Fail with :class:`CheckpointCorruptedError` unless the file is whole; return its checksum, if any."""
        if self.size == 0:
            raise CheckpointCorruptedError(_corrupt_message(self.shown, "the file is empty (0 bytes)"))
        if self.head.startswith(b"\x80"):  # torch's legacy (non-zip) format: no end records to check
            return None
        if self.head != b"PK\x03\x04":
            raise CheckpointError(
                f"{self.shown!r} is not a PyTorch checkpoint (expected a file written by torch.save, "
                "Trainer.save_checkpoint or fulmen.checkpoint.save_checkpoint)."
            )
        return _check_archive(self.size, self.read_at, self.shown)


def read_checkpoint_header(path: PathLike, storage_options: dict | None = None) -> dict[str, Any]:
    """The checkpoint's top-level entries without reading its tensors' data (local files are memory-mapped).

    The file's length and end records are checked (not its checksum, which needs every byte): a cut-short
    file raises :class:`~fulmen.errors.CheckpointCorruptedError`. Used to rank candidate checkpoints cheaply.

    Example::

        read_checkpoint_header("runs/last.ckpt")["global_step"]  # 1200
    """
    source = _Source(path, storage_options)
    source.check()
    try:
        mmap = source.local is not None and source.head == b"PK\x03\x04"  # tensors mapped, not read
        return _torch_load(source.opener(), "cpu", False, mmap=mmap)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and _refused_globals(err, source.opener):
            raise UntrustedCheckpointError(
                f"Checkpoint {source.shown!r} holds objects the safe loader does not allow; pass it by path with "
                "`weights_only=False` if you trust it."
            ) from err
        # no checksum is read here, and map_location is fixed: whatever torch cannot parse is damage (zeroed
        # bytes in the archive's records raise plain ValueErrors, for example)
        first_line = str(err).strip().split("\n")[0][:160]
        raise CheckpointCorruptedError(_corrupt_message(source.shown, f"{type(err).__name__}: {first_line}")) from err


def load_checkpoint(
    path: PathLike,
    map_location: Any = None,
    *,
    weights_only: bool | None = None,
    trusted: bool = False,
    verify: bool = True,
    storage_options: dict | None = None,
) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`, ``torch.save`` or Lightning.

    By default only tensors, containers and allowlisted plain types (see :func:`register_safe_type`) are
    unpickled, so a malicious file cannot run code; a file needing anything else raises
    :class:`~fulmen.errors.UntrustedCheckpointError`. ``trusted=True`` (same as ``weights_only=False``)
    unpickles everything: only for files you created yourself or otherwise trust. ``weights_only=None``
    means the safe default; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` and ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` act as
    they do on ``torch.load`` (see :func:`resolve_trusted`).

    If the file carries fulmen's checksum it is verified (``verify=False`` skips it); a mismatch raises
    :class:`~fulmen.errors.CheckpointError`. ``map_location`` is passed to ``torch.load``.

    Example::

        ckpt = load_checkpoint("runs/last.ckpt", map_location="cpu")
        model.load_state_dict(ckpt["state_dict"])
        legacy = load_checkpoint("my_own_old.ckpt", trusted=True)
    """
    trusted = resolve_trusted(weights_only, trusted)
    source = _Source(path, storage_options)
    shown = source.shown
    expected = source.check() if verify else None
    hashed_length = source.size - _FOOTER_SIZE - 2

    # Hash on a second thread while torch.load reads: both release the GIL, so verification costs
    # little wall time. The result is returned only once the checksum has matched.
    error: BaseException | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        actual = None
        if expected is not None and source.local is not None:
            actual = pool.submit(_sha256_of_file, source.local, hashed_length)
        elif expected is not None:
            actual = pool.submit(lambda: hashlib.sha256(memoryview(source.data)[:hashed_length]).hexdigest())
        try:
            result = _torch_load(source.opener(), map_location, trusted)
        except Exception as err:  # decided below, after the checksum is known
            error = err
        if actual is not None and actual.result() != expected:
            raise CheckpointCorruptedError(_corrupt_message(shown, "checksum mismatch: its bytes were altered")) from error

    if error is None:
        return result
    if not trusted and isinstance(error, pickle.UnpicklingError):
        names = _refused_globals(error, source.opener)
        if names or expected is not None:  # with a matching checksum the bytes are intact: it is the content
            raise UntrustedCheckpointError(
                f"Checkpoint {shown!r} contains objects the safe loader does not allow: "
                f"{', '.join(names) or 'see the error above'}. "
                "Unpickling them could run arbitrary code. If you created this file yourself or otherwise trust "
                f"it, {_TRUST_HINT}; to allow a plain data type everywhere, "
                "call `fulmen.checkpoint.register_safe_type(TheClass)`."
            ) from error
    if expected is None and _looks_damaged(error):  # with a matching checksum the bytes are fine
        first_line = str(error).strip().split("\n")[0][:160]  # torch's messages run long; the cause is chained
        raise CheckpointCorruptedError(_corrupt_message(shown, f"{type(error).__name__}: {first_line}")) from error
    raise error


def save_checkpoint(checkpoint: dict, path: PathLike, *, storage_options: dict | None = None) -> None:
    """Write ``checkpoint`` to ``path`` atomically, with a checksum that :func:`load_checkpoint` verifies.

    The data goes to a temporary file in the same directory, is flushed to disk, then renamed over ``path``:
    a crash or an exception mid-write leaves the previous file intact and no temporary file behind. Parent
    directories are created. ``path`` may be an fsspec URL (``s3://``, ``memory://``, ...); there the
    temporary object is moved into place (atomic where the store's rename is). The result is a regular
    ``torch.save`` file: ``torch.load(path)`` reads it.

    Example::

        save_checkpoint({"state_dict": model.state_dict(), "epoch": 3}, "runs/epoch=3.ckpt")
        save_checkpoint(ckpt, "s3://bucket/run/last.ckpt", storage_options={"anon": False})
    """
    try:
        _save(checkpoint, path, storage_options)
    except OSError as err:
        raise CheckpointSaveError(_save_message(os.fspath(path), err)) from err


def _save_message(path: str, err: OSError) -> str:
    import errno

    cause = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename and os.fspath(err.filename) != path else ""
    elsewhere = "save elsewhere (ModelCheckpoint(dirpath=...))."
    file_in_the_way = "A file stands where a directory is needed; remove it or choose another dirpath."
    fixes = {
        (errno.ENOSPC, errno.EDQUOT): f"Free some space or {elsewhere}",
        (errno.EACCES, errno.EPERM): f"Make the directory writable or {elsewhere}",
        (errno.EROFS,): f"The filesystem is read-only; {elsewhere}",
        (errno.EEXIST, errno.ENOTDIR): file_in_the_way,
        (errno.EISDIR,): "A directory stands at the checkpoint's path; remove it or choose another file name.",
    }
    fix = next((text for codes, text in fixes.items() if err.errno in codes), "Check the path and the storage.")
    return f"Could not write checkpoint {path!r}: {cause}{where}. Earlier checkpoints are unchanged. {fix}"


def _save(checkpoint: dict, path: PathLike, storage_options: dict | None) -> None:
    local = _local_path(path)
    if local is None:
        fs, remote_path = _remote(path, storage_options)
        parent = posixpath.dirname(remote_path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        tmp = _temp_sibling(remote_path, posixpath)
        try:
            with fs.open(tmp, "wb") as f:
                writer = _ChecksumWriter(f)
                torch.save(checkpoint, writer)
                writer.finish()
            fs.mv(tmp, remote_path)
        finally:
            with contextlib.suppress(Exception):  # cleanup must not mask the original error
                if fs.exists(tmp):
                    fs.rm(tmp)
        return

    directory = os.path.dirname(os.path.abspath(local))
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_sibling(os.path.abspath(local))
    try:
        # O_EXCL: never clobber someone else's file; mode 0o666 so the umask applies as for a plain open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with open(fd, "wb") as f:
            writer = _ChecksumWriter(f)
            torch.save(checkpoint, writer)
            writer.finish()
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, local)
        _fsync_dir(directory)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------------------
# The seam strategies hold, under Lightning's plugin names, so users can pass their own.


class CheckpointIO:
    """How a strategy saves, loads and removes checkpoint files. Subclass it to store checkpoints elsewhere.

    Example::

        class UploadingIO(TorchCheckpointIO):
            def save_checkpoint(self, checkpoint, path, storage_options=None):
                super().save_checkpoint(checkpoint, path, storage_options)
                upload(path)

        Trainer(plugins=[UploadingIO()])
    """

    def save_checkpoint(self, checkpoint: dict, path: PathLike, storage_options: dict | None = None) -> None:
        raise NotImplementedError

    def load_checkpoint(self, path: PathLike, map_location: Any = None, weights_only: bool | None = None) -> Any:
        raise NotImplementedError

    def remove_checkpoint(self, path: PathLike) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """Release resources (threads, connections) at the end of a run; nothing to do by default."""


class TorchCheckpointIO(CheckpointIO):
    """The default :class:`CheckpointIO`: atomic, checksummed ``torch.save`` files, loaded safely.

    Example::

        io = TorchCheckpointIO()
        io.save_checkpoint({"epoch": 1}, "runs/last.ckpt")
        io.load_checkpoint("runs/last.ckpt")["epoch"]  # 1
        io.remove_checkpoint("runs/last.ckpt")
    """

    def save_checkpoint(self, checkpoint: dict, path: PathLike, storage_options: dict | None = None) -> None:
        save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: PathLike, map_location: Any = None, weights_only: bool | None = None) -> Any:
        return load_checkpoint(path, map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: PathLike) -> None:
        remove(path)


def _snapshot(obj: Any) -> Any:
    """A copy of a checkpoint whose tensors live in CPU memory of their own, so training can go on changing
    the originals while a background thread writes the copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        copied = {k: _snapshot(v) for k, v in obj.items()}
        if type(obj) is dict:
            return copied
        try:  # OrderedDict and other mappings keep their type
            return type(obj)(copied)
        except Exception:
            return copied
    if isinstance(obj, list):
        return [_snapshot(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_snapshot(v) for v in obj)
    return obj


class AsyncCheckpointIO(CheckpointIO):
    """Write checkpoints on a background thread, so a large save does not stall training.

    ``save_checkpoint`` copies the checkpoint's tensors to CPU memory (the only part that waits) and hands
    the copy to one writer thread. The file is written by the wrapped ``checkpoint_io`` (by default the
    atomic, checksummed :class:`TorchCheckpointIO`): a crash mid-write leaves the previous file. At most one
    write is in flight (a new save first waits for the previous one); removals queue behind the writes. A
    failed write raises at the next training step, or when fit ends; fit returns only once every write is
    on disk.

    Example::

        trainer = fulmen.Trainer(plugins=[AsyncCheckpointIO()])
    """

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        self.checkpoint_io = checkpoint_io
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._error: BaseException | None = None  # read by the loop after each step: a plain attribute

    @property
    def _inner(self) -> CheckpointIO:
        if self.checkpoint_io is None:
            self.checkpoint_io = TorchCheckpointIO()
        return self.checkpoint_io

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fulmen-ckpt")
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._record)
        self._pending.append(future)

    def _record(self, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is not None and self._error is None:
            self._error = error

    def save_checkpoint(self, checkpoint: dict, path: PathLike, storage_options: dict | None = None) -> None:
        snapshot = _snapshot(checkpoint)
        self._wait_writes()  # at most one write in flight
        self.raise_if_failed()
        self._submit(self._inner.save_checkpoint, snapshot, path, storage_options)

    def load_checkpoint(self, path: PathLike, map_location: Any = None, weights_only: bool | None = None) -> Any:
        self.wait()  # the file may be the one being written
        return self._inner.load_checkpoint(path, map_location, weights_only)

    def remove_checkpoint(self, path: PathLike) -> None:
        self._submit(self._inner.remove_checkpoint, path)  # after the writes queued before it

    def _wait_writes(self) -> None:
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending)

    def raise_if_failed(self) -> None:
        """Raise the error of a failed background write (once)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        """Block until every queued write and removal is done; raise the first error among them."""
        self._wait_writes()
        self.raise_if_failed()

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._inner.teardown()
