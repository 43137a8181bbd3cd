"""Small helpers shared across fulmen: walking nested batches, moving them to a device, rank-zero
printing, hyperparameter containers and seeding. Nothing here imports more than torch.

Lightning's paths for these names are the re-exports in :mod:`fulmen.utilities`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
from collections.abc import Mapping
from functools import wraps
from importlib.util import find_spec
from warnings import warn as _warn
from typing import Any, Callable

import torch

class AttributeDict(dict):
    """A dict whose keys are also attributes; what ``module.hparams`` returns.

    Example::

        hp = AttributeDict(lr=0.1)
        hp.lr == hp["lr"] == 0.1
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"hparams has no '{key}'; saved names are: {sorted(self)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __repr__(self) -> str:
        if not self:
            return "AttributeDict()"
        width = max(len(str(k)) for k in self)
        return "\n".join(f"{k!s:>{width}}: {v!r}" for k, v in sorted(self.items(), key=lambda kv: str(kv[0])))


def apply_to_collection(data: Any, dtype: type | tuple[type, ...], function: Callable, *args: Any, **kwargs: Any) -> Any:
    """Apply ``function`` to every element of type ``dtype`` inside nested containers, keeping their shape.

    Handles dicts (and other mappings), lists, tuples, namedtuples, sets and dataclass instances.

    Example::

        apply_to_collection({"x": torch.ones(2), "n": 3}, torch.Tensor, lambda t: t * 2)
        # {'x': tensor([2., 2.]), 'n': 3}
    """
    if isinstance(data, dtype):
        return function(data, *args, **kwargs)
    if isinstance(data, (str, bytes, int, float, bool, type(None))):
        return data
    if isinstance(data, Mapping):
        items = [(k, apply_to_collection(v, dtype, function, *args, **kwargs)) for k, v in data.items()]
        try:
            return type(data)(items)
        except TypeError:  # e.g. defaultdict needs its factory
            out = data.copy()
            out.update(items)
            return out
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_collection(v, dtype, function, *args, **kwargs) for v in data))
    if isinstance(data, (list, tuple, set, frozenset)):
        return type(data)(apply_to_collection(v, dtype, function, *args, **kwargs) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {
            f.name: apply_to_collection(getattr(data, f.name), dtype, function, *args, **kwargs)
            for f in dataclasses.fields(data)
            if f.init
        }
        return dataclasses.replace(data, **changes)
    return data


def _to_device(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        # non_blocking only helps for pinned CPU -> CUDA copies; elsewhere it can only hurt
        return obj.to(device, non_blocking=non_blocking and device.type == "cuda")
    out = obj.to(device)
    return obj if out is None else out  # some `.to()` methods work in place and return None


class _MovableMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch.Tensor) or (
            callable(getattr(obj, "to", None)) and not isinstance(obj, (type, torch.nn.Module))
        )


class Movable(metaclass=_MovableMeta):
    """Type used with :func:`apply_to_collection` to find everything that has a ``.to(device)``.

    Example::

        apply_to_collection(batch, Movable, lambda x: x.to("cuda"))  # tensors and e.g. a BatchEncoding
    """


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (or object with ``.to``) inside a nested batch to ``device``.

    Example::

        move_data_to_device({"x": torch.ones(2)}, "cpu")
    """
    device = torch.device(device)
    return apply_to_collection(batch, Movable, _to_device, device, True)


def extract_batch_size(batch: Any) -> int:
    """The size of the first dimension of the first tensor found in ``batch``.

    Raises ``MisconfigurationException`` when no tensor is found, telling the caller to pass
    ``batch_size=`` to ``self.log``.

    Example::

        extract_batch_size({"x": torch.zeros(16, 3), "label": ["a"] * 16})  # 16
    """
    from fulmen.errors import MisconfigurationException

    found: list[int] = []

    def visit(t: torch.Tensor) -> None:
        if not found:
            found.append(1 if t.ndim == 0 else t.size(0))

    apply_to_collection(batch, torch.Tensor, visit)
    if not found:
        raise MisconfigurationException(
            "Could not infer the batch size from the batch to weight an epoch mean: it holds no tensor. "
            "Pass it explicitly: `self.log(name, value, batch_size=N)`."
        )
    return found[0]


def _rank() -> int:
    keys = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    return next((int(os.environ[key]) for key in keys if key in os.environ), 0)


def rank_zero_only(fn: Callable) -> Callable:
    """Decorate a function so it runs on global rank zero only (returns None elsewhere).

    Example::

        @rank_zero_only
        def announce(msg): print(msg)
    """

    @wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if rank_zero_only.rank == 0 else None

    return wrapped


rank_zero_only.rank = _rank()  # type: ignore[attr-defined]  # from the launcher's variables, before user code runs


def set_global_rank(rank: int) -> None:
    """Make ``rank_zero_only`` (and everything built on it) answer for global rank ``rank``.

    The one place the rank is set: strategies call it once they know this process's rank.

    Example::

        set_global_rank(int(os.environ["RANK"]))
    """
    rank_zero_only.rank = rank  # type: ignore[attr-defined]
    _mirror_rank(rank)  # lightning_utilities' rank_zero_only, which published code uses


# Published code decorates functions with lightning_utilities' rank_zero_only and expects the framework to
# have set its `.rank` (Lightning does at import). Importing that package costs ~45 ms, so fulmen never does:
# it sets the rank when the package is loaded already, else right after its first import, through a finder
# that answers for that one module name only.
_MODULE = "lightning_utilities.core.rank_zero"


def _mirror_rank(rank: int) -> None:
    """Set ``lightning_utilities``' ``rank_zero_only.rank`` to ``rank`` when that package is loaded."""
    module = sys.modules.get(_MODULE)
    if module is not None and hasattr(module, "rank_zero_only"):
        module.rank_zero_only.rank = rank


class _SetRankOnImport:
    """A ``sys.meta_path`` finder that answers for ``lightning_utilities.core.rank_zero`` only."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _MODULE:
            return None
        others = (finder for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec"))
        spec = next((spec for spec in (f.find_spec(name, path, target) for f in others) if spec is not None), None)
        if spec is None or not hasattr(spec.loader, "exec_module"):  # not found, or no loader we can wrap
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_set_rank(module: Any) -> None:
            exec_module(module)
            if getattr(module.rank_zero_only, "rank", None) is None:  # a framework that set it first wins
                module.rank_zero_only.rank = rank_zero_only.rank

        spec.loader.exec_module = exec_then_set_rank
        return spec


def _install_rank_mirror(rank: int) -> None:
    """At ``import fulmen``: mirror ``rank`` now, or once ``lightning_utilities`` is imported."""
    if _MODULE in sys.modules:
        module = sys.modules[_MODULE]
        if getattr(getattr(module, "rank_zero_only", None), "rank", None) is None:
            _mirror_rank(rank)
    elif not any(isinstance(f, _SetRankOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SetRankOnImport())


_install_rank_mirror(rank_zero_only.rank)


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 4) -> None:
    """``warnings.warn`` on rank zero only, pointing at the user's line rather than fulmen's.

    Example::

        rank_zero_warn("val_loss is not logged; EarlyStopping has nothing to watch")
    """
    _warn(message, category, stacklevel=stacklevel)


# a child of "fulmen" (which users configure), named like Lightning's rank-zero logger, which tests and handlers read
_log = logging.getLogger("fulmen.utilities.rank_zero")


@rank_zero_only
def rank_zero_info(message: str, *args: Any, **kwargs: Any) -> None:
    """Log ``message`` at INFO on the "fulmen.utilities.rank_zero" logger (under "fulmen"), on rank zero only.

    ``import fulmen`` shows these lines on stderr (as Lightning shows its own) unless logging is already
    configured; route or silence them with ``logging.getLogger("fulmen")``.

    Example::

        rank_zero_info(f"training on {len(train_set)} samples")  # logged once, not once per process
        logging.getLogger("fulmen").setLevel(logging.WARNING)  # no info lines
    """
    _log.info(message, *args, **kwargs)


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed Python's, NumPy's (if installed) and torch's random generators; return the seed used.

    With ``seed=None`` the ``PL_GLOBAL_SEED`` environment variable is used, else 0. ``workers=True``
    makes every DataLoader worker derive its own seed from it (see ``pl_worker_init_function``).
    ``verbose`` is accepted for Lightning compatibility; fulmen seeds quietly either way.

    Example::

        import fulmen as pl
        pl.seed_everything(42)
    """
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0) if seed is None else seed)
    if not (-(2**63) <= seed < 2**64):
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(f"seed {seed} is out of range; pass an integer in [0, 2**32).")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed % 2**32)
    return seed


def reset_seed() -> None:
    """Seed every generator again with what ``seed_everything`` was last given; nothing if it was not called.

    Multi-process strategies call it as each stage sets up, so every rank starts ``fit``, ``validate``,
    ``test`` and ``predict`` from the seeded state whatever ran before in its process (model building,
    launching), as in Lightning. The ``workers`` choice is kept.

    Example::

        seed_everything(7)
        a = torch.rand(1)
        reset_seed()
        assert torch.equal(torch.rand(1), a)
    """
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        seed_everything(int(seed), workers=bool(int(os.environ.get("PL_SEED_WORKERS", "0"))))


_MASK64 = (1 << 64) - 1


def _worker_seeds(base: int, worker_id: int, rank: int, count: int) -> list[int]:
    """``count`` well-spread 64-bit seeds for one worker of one rank: (base, worker, rank) packed into one
    integer, scrambled by MurmurHash3's 64-bit finalizer, then stepped by Knuth's MMIX linear congruential
    generator. This is the derivation Lightning's seeded workers use, so they draw the same numbers."""
    x = (base << 32) | (worker_id << 16) | rank
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        x ^= x >> 33
        x = (x * multiplier) & _MASK64
    x ^= x >> 33
    seeds = []
    for _ in range(count):
        x = (x * 6364136223846793005 + 1) & _MASK64
        seeds.append(x)
    return seeds


def pl_worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """DataLoader ``worker_init_fn`` giving every worker of every rank its own, reproducible seed.

    The seeds come from the loader's base seed (new for every pass over the loader, drawn from the
    main process's seeded generator), the worker's index and the global rank, so workers of different
    ranks never draw the same numbers and each epoch's draws are new. ``seed_everything(seed,
    workers=True)`` makes the Trainer set it on every loader that has no ``worker_init_fn`` of its own.

    Example::

        loader = DataLoader(dataset, num_workers=4, worker_init_fn=pl_worker_init_function)
    """
    rank = rank_zero_only.rank if rank is None else rank
    base = torch.initial_seed() - worker_id  # torch seeds worker i with base + i
    torch_seed, py_high, py_low = _worker_seeds(base, worker_id, rank, 3)
    torch.manual_seed(torch_seed)
    random.seed((py_high << 32) | py_low)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(np.random.SeedSequence([base, worker_id, rank]).generate_state(4))


def collect_rng_states() -> dict[str, Any]:
    """Every global random generator's state, for exact resume.

    Only tensors, tuples, strings and numbers, so a checkpoint holding it opens with a plain
    ``torch.load(path)`` (``weights_only=True``): numpy's key array is kept as an int64 tensor.

    Example::

        states = collect_rng_states()
        a = torch.rand(1)
        restore_rng_states(states)
        assert torch.equal(torch.rand(1), a)
    """
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`.

    Example::

        states = collect_rng_states()
        first = random.random()
        restore_rng_states(states)
        assert random.random() == first
    """
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        import numpy as np

        name, keys, *rest = states["numpy"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # older files hold the numpy array
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


def package_available(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it.

    Example::

        package_available("rich")  # True when rich is installed
    """
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def is_overridden(method_name: str, instance: Any = None, parent: type | None = None) -> bool:
    """Whether ``instance``'s class (or the instance itself) replaces ``parent.method_name``.

    A hook set to ``None`` (``model.validation_step = None``) counts as not overridden: that is how
    users switch a loop off. The trainer asks once per run, so unused hooks cost nothing in the loop.
    ``parent`` defaults to the fulmen base class of ``instance``: LightningModule, LightningDataModule or Callback.

    Example::

        model.validation_step = None
        assert not is_overridden("validation_step", model, fulmen.LightningModule)
        is_overridden("on_train_epoch_end", my_callback)
    """
    if instance is None:
        return False
    if parent is None:  # an instance of a base class means its module is loaded: looked up, not imported
        bases = (getattr(sys.modules.get(m), n, None) for m, n in _BASES)
        parent = next((b for b in bases if b is not None and isinstance(instance, b)), None)
        if parent is None:
            from fulmen.errors import MisconfigurationException

            raise MisconfigurationException(
                f"is_overridden({method_name!r}, ...) cannot tell the base class of a {type(instance).__name__}; "
                "pass it as `parent=`."
            )
    attached = getattr(instance, "__dict__", {})
    if method_name in attached:  # patched on the instance, e.g. by a test or a wrapper; `= None` switches it off
        return attached[method_name] is not None
    impl = getattr(type(instance), method_name, None)  # None: absent, or set to None in the class body
    base = getattr(parent, method_name, None)
    return impl is not None and getattr(impl, "__code__", impl) is not getattr(base, "__code__", base)


_BASES = (("fulmen.module", "LightningModule"), ("fulmen.datamodule", "LightningDataModule"),
          ("fulmen.callbacks.callback", "Callback"))
