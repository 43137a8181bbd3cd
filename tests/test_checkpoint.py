import argparse
import collections
import os
import pathlib
import random
import subprocess
import sys
import uuid

import pytest
import torch

from fulmen import checkpoint as ck
from fulmen.errors import CheckpointCorruptedError, CheckpointError, FulmenError, UntrustedCheckpointError

DATA = pathlib.Path(__file__).parent / "data"


def nested_checkpoint():
    torch.manual_seed(0)
    return {
        "epoch": 3,
        "global_step": 120,
        "state_dict": collections.OrderedDict(
            w=torch.randn(4, 5), h=torch.randn(3).half(), b=torch.randn(2).bfloat16(), i=torch.arange(6, dtype=torch.int64)
        ),
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 5)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "loops": {"fit_loop": {"progress": {"total": {"ready": 7, "completed": 7}}}, "flags": [True, None, 1.5, "x"]},
        "hyper_parameters": {"lr": 0.1, "path": pathlib.Path("/data"), "args": argparse.Namespace(a=1), "dtype": torch.float32},
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }


def assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def leftovers(directory):
    return [p.name for p in pathlib.Path(directory).iterdir() if p.name.endswith(".tmp")]


# --- round trip, compatibility ------------------------------------------------------------------


def test_round_trip_bit_for_bit(tmp_path):
    original = nested_checkpoint()
    path = tmp_path / "sub" / "dir" / "model.ckpt"  # parents are created
    ck.save_checkpoint(original, path)
    assert_same(original, ck.load_checkpoint(path))
    assert leftovers(path.parent) == []


def test_plain_torch_load_reads_fulmen_files(tmp_path):
    original = nested_checkpoint()
    ck.save_checkpoint(original, tmp_path / "a.ckpt")
    assert_same(original, torch.load(tmp_path / "a.ckpt", weights_only=False))
    ck.save_checkpoint({"state_dict": original["state_dict"]}, tmp_path / "b.ckpt")
    state = torch.load(tmp_path / "b.ckpt", weights_only=True, map_location="cpu")["state_dict"]  # torch's own allowlist
    assert_same(original["state_dict"], state)


def test_numpy_rng_state_loads_with_safe_default(tmp_path):
    np = pytest.importorskip("numpy")
    state = {"numpy": np.random.get_state(), "gen": np.random.default_rng(0).bit_generator.state,
             "scalar": np.float32(1.5), "array": np.arange(4, dtype=np.int16)}
    ck.save_checkpoint(state, tmp_path / "rng.ckpt")
    loaded = ck.load_checkpoint(tmp_path / "rng.ckpt")
    assert loaded["numpy"][0] == "MT19937" and np.array_equal(loaded["numpy"][1], state["numpy"][1])
    assert loaded["gen"] == state["gen"] and loaded["scalar"] == np.float32(1.5)
    assert loaded["array"].dtype == np.int16


@pytest.mark.parametrize("name", ["lightning_plain.ckpt", "lightning_rich_hparams.ckpt"])
def test_lightning_checkpoint_loads_with_safe_default(name):
    loaded = ck.load_checkpoint(DATA / name, map_location="cpu")  # no checksum in these: loaded unverified
    assert loaded["pytorch-lightning_version"].startswith("2.")
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= loaded.keys()
    assert any(k.startswith("ModelCheckpoint") for k in loaded["callbacks"])
    assert any(k.startswith("EarlyStopping") for k in loaded["callbacks"])
    if name == "lightning_rich_hparams.ckpt":
        assert loaded["hyper_parameters"]["data_dir"] == pathlib.Path("/data/tiny")
        assert loaded["hyper_parameters"]["opt"] == argparse.Namespace(beta=0.9)


def test_overwriting_a_link_replaces_the_link_not_its_target(tmp_path):
    ck.save_checkpoint({"v": 1}, tmp_path / "best.ckpt")
    ck.link_or_copy(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    ck.save_checkpoint({"v": 2}, tmp_path / "last.ckpt")
    assert ck.load_checkpoint(tmp_path / "best.ckpt") == {"v": 1}
    assert ck.load_checkpoint(tmp_path / "last.ckpt") == {"v": 2}


# --- atomicity -----------------------------------------------------------------------------------


def test_exception_mid_write_leaves_original_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    ck.save_checkpoint({"v": 1}, path)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes " * 100)  # something reached the temp file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint({"v": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_unpicklable_object_leaves_no_file(tmp_path):
    with pytest.raises(Exception):
        ck.save_checkpoint({"f": lambda: 0}, tmp_path / "x.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_never_exposes_partial_file(tmp_path):
    # A real crash: the writing process dies (os._exit) in the middle of torch.save.
    path = tmp_path / "last.ckpt"
    ck.save_checkpoint({"v": 1}, path)
    script = (
        "import os, torch\nfrom fulmen import checkpoint as ck\n"
        "real = torch.save\n"
        "def dying(obj, f, *a, **k):\n    f.write(b'x' * 4096)\n    os._exit(3)\n"
        "torch.save = dying\n"
        f"ck.save_checkpoint({{'v': 2}}, {str(path)!r})\n"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 3
    assert ck.load_checkpoint(path) == {"v": 1}


# --- corruption ----------------------------------------------------------------------------------


def saved(tmp_path):
    path = tmp_path / "model.ckpt"
    ck.save_checkpoint({"state_dict": {"w": torch.randn(256, 256)}}, path)
    return path


def test_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # torch.load alone would silently return the wrong weights
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*checksum mismatch.*last\.ckpt") as info:
        ck.load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9, 0.999])
def test_flipped_byte_anywhere_is_detected(tmp_path, where):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated|not a PyTorch checkpoint"):
        ck.load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, -1, -40])
def test_truncated_file_is_detected(tmp_path, keep):
    path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ck.load_checkpoint(path)


def test_verify_false_skips_checksum(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    ck.load_checkpoint(path, verify=False)


def test_empty_file(tmp_path):
    (tmp_path / "e.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        ck.load_checkpoint(tmp_path / "e.ckpt")


# --- safe loading --------------------------------------------------------------------------------


class Payload:
    """Unpickling calls os.makedirs(marker): evidence that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_payload_is_refused_and_did_not_run(tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    path = tmp_path / "evil.ckpt"
    ck.save_checkpoint({"state_dict": {}, "x": Payload(marker)}, path)
    with pytest.raises(UntrustedCheckpointError) as info:
        ck.load_checkpoint(path)
    message = str(info.value)
    assert "os.makedirs" in message and str(path) in message and "trusted=True" in message
    assert not marker.exists()
    with pytest.raises(UntrustedCheckpointError):
        ck.TorchCheckpointIO().load_checkpoint(path, weights_only=None)  # None means the safe default too
    assert not marker.exists()


def test_malicious_lightning_style_file_without_checksum_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": Payload(marker)}, path)
    with pytest.raises(UntrustedCheckpointError, match="os.makedirs"):
        ck.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("how", [{"trusted": True}, {"weights_only": False}])
def test_explicit_trust_loads_anything(tmp_path, how):
    marker = tmp_path / "ran"
    path = tmp_path / "mine.ckpt"
    ck.save_checkpoint({"x": Payload(marker)}, path)
    ck.load_checkpoint(path, **how)
    assert marker.is_dir()


def test_torch_force_weights_only_env_vars_act_as_on_torch_load(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = tmp_path / "mine.ckpt"
    ck.save_checkpoint({"x": Payload(marker)}, path)
    with pytest.raises(UntrustedCheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"):
        ck.load_checkpoint(path)
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")  # overrides even an explicit weights_only=False
    with pytest.raises(UntrustedCheckpointError):
        ck.load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UntrustedCheckpointError):  # an explicit choice of the safe loader is kept
        ck.load_checkpoint(path, weights_only=True)
    assert not marker.exists()
    ck.load_checkpoint(path)  # the caller did not choose: the variable trusts the file
    assert marker.is_dir()
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(FulmenError, match="unset one"):
        ck.load_checkpoint(path)


def test_trainer_and_load_from_checkpoint_honour_torch_force_no_weights_only(tmp_path, monkeypatch):
    from helpers import BoringModel, make_loader, quiet_trainer

    trainer = quiet_trainer(max_steps=1)
    model = BoringModel()
    trainer.fit(model, make_loader())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["extra"] = Custom(1)  # not on the safe list
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedCheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        BoringModel.load_from_checkpoint(path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert isinstance(BoringModel.load_from_checkpoint(path), BoringModel)
    quiet_trainer(max_steps=2).fit(BoringModel(), make_loader(), ckpt_path=path)


class Custom:
    def __init__(self, v=0):
        self.v = v

    def __eq__(self, other):
        return isinstance(other, Custom) and other.v == self.v


def test_register_safe_type(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "_extra_safe", [])
    path = tmp_path / "c.ckpt"
    ck.save_checkpoint({"c": Custom(3)}, path)
    with pytest.raises(UntrustedCheckpointError, match="Custom"):
        ck.load_checkpoint(path)
    assert ck.register_safe_type(Custom) is Custom
    assert ck.load_checkpoint(path) == {"c": Custom(3)}


def test_errors_are_one_family():
    assert issubclass(UntrustedCheckpointError, CheckpointError)
    assert issubclass(ck.CheckpointNotFoundError, FulmenError)


# --- bad paths -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        ck.load_checkpoint(path)
    assert isinstance(info.value, FileNotFoundError) and str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path):
    ck.save_checkpoint({}, tmp_path / "run" / "last.ckpt")
    with pytest.raises(CheckpointError, match="is a directory.*last.ckpt"):
        ck.load_checkpoint(tmp_path / "run")


def test_not_a_torch_file(tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        ck.load_checkpoint(tmp_path / "notes.ckpt")


def test_foreign_zip_is_not_mistaken_for_a_checkpoint(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ck.load_checkpoint(tmp_path / "a.zip")


# --- filesystems and helpers ---------------------------------------------------------------------


def test_memory_url_round_trip():
    pytest.importorskip("fsspec")
    url = f"memory://fulmen-test-{uuid.uuid4().hex}/run/last.ckpt"
    original = nested_checkpoint()
    ck.save_checkpoint(original, url)
    assert ck.exists(url) and not ck.is_local(url)
    assert_same(original, ck.load_checkpoint(url))
    fs = ck.get_filesystem(url)
    assert [p for p in fs.ls(url.rsplit("/", 1)[0].split("://")[1], detail=False) if p.endswith(".tmp")] == []

    data = bytearray(fs.cat_file(url))
    data[len(data) // 2] ^= 0x01
    fs.pipe_file(url, bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ck.load_checkpoint(url)

    ck.link_or_copy(url, url.replace("last", "best"))
    assert ck.exists(url.replace("last", "best"))
    ck.remove(url)
    assert not ck.exists(url)
    ck.remove(url)  # missing is fine
    with pytest.raises(ck.CheckpointNotFoundError):
        ck.load_checkpoint(url)


def test_file_url_is_local(tmp_path):
    url = f"file://{tmp_path}/a.ckpt"
    assert ck.is_local(url) and ck.is_local(tmp_path / "a.ckpt")
    ck.save_checkpoint({"v": 1}, url)
    assert ck.load_checkpoint(tmp_path / "a.ckpt") == {"v": 1}


def test_exists_remove_makedirs(tmp_path):
    ck.makedirs(tmp_path / "a" / "b")
    ck.makedirs(tmp_path / "a" / "b")  # idempotent
    path = tmp_path / "a" / "b" / "x.ckpt"
    assert not ck.exists(path)
    ck.save_checkpoint({}, path)
    assert ck.exists(path)
    ck.remove(path)
    assert not ck.exists(path)
    ck.remove(path)
    ck.remove(tmp_path / "a")  # sharded checkpoints are directories
    assert not ck.exists(tmp_path / "a")


def test_link_or_copy_links_relatively_and_replaces(tmp_path):
    ck.save_checkpoint({"v": 1}, tmp_path / "epoch=1.ckpt")
    ck.save_checkpoint({"v": 2}, tmp_path / "epoch=2.ckpt")
    last = tmp_path / "last.ckpt"
    ck.link_or_copy(tmp_path / "epoch=1.ckpt", last)
    assert last.is_symlink() and os.readlink(last) == "epoch=1.ckpt"
    ck.link_or_copy(tmp_path / "epoch=2.ckpt", last)  # replaces the old link
    assert ck.load_checkpoint(last) == {"v": 2}
    ck.remove(last)  # removes the link, not its target
    assert (tmp_path / "epoch=2.ckpt").exists()
    ck.link_or_copy(last, last)  # self: no loop, no error
    assert leftovers(tmp_path) == []


def test_link_or_copy_falls_back_to_copy(tmp_path, monkeypatch):
    ck.save_checkpoint({"v": 1}, tmp_path / "best.ckpt")
    (tmp_path / "last.ckpt").write_bytes(b"old")

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    ck.link_or_copy(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").is_symlink()
    assert ck.load_checkpoint(tmp_path / "last.ckpt") == {"v": 1}
    assert leftovers(tmp_path) == []


def test_torch_checkpoint_io(tmp_path):
    io = ck.TorchCheckpointIO()
    assert isinstance(io, ck.CheckpointIO)
    original = nested_checkpoint()
    io.save_checkpoint(original, tmp_path / "x.ckpt")
    assert_same(original, io.load_checkpoint(tmp_path / "x.ckpt", map_location="cpu"))
    io.remove_checkpoint(tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()
    io.teardown()


def test_saved_file_is_a_valid_zip_with_the_checksum_comment(tmp_path):
    import zipfile

    ck.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "a.ckpt")
    with zipfile.ZipFile(tmp_path / "a.ckpt") as z:
        assert z.comment.startswith(b"fulmen-sha256:")
        assert z.testzip() is None  # every record's CRC still matches


def test_import_does_not_pull_fsspec():
    code = "import sys, fulmen, fulmen.checkpoint; print('fsspec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_file_permissions_follow_umask(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    ck.save_checkpoint({}, tmp_path / "a.ckpt")
    torch.save({}, tmp_path / "b.ckpt")
    assert (tmp_path / "a.ckpt").stat().st_mode == (tmp_path / "b.ckpt").stat().st_mode


def test_garbage_pickle_is_reported_as_corrupt_not_untrusted(tmp_path):
    # A checksum-less file whose pickle is garbage is reported as corrupt, not as untrusted.
    import zipfile

    torch.save({"a": 1}, tmp_path / "g.ckpt")
    with zipfile.ZipFile(tmp_path / "g.ckpt") as src:
        records = {n: src.read(n) for n in src.namelist()}
    with zipfile.ZipFile(tmp_path / "bad.ckpt", "w") as dst:
        for n, data in records.items():
            dst.writestr(n, b"\x80\x02garbage" if n.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint(tmp_path / "bad.ckpt")
    assert not isinstance(info.value, UntrustedCheckpointError)


def test_register_safe_type_under_another_pickled_name(tmp_path, monkeypatch):
    # A class pickled as "somewhere_else.AttrDict" (e.g. Lightning's) loads as the registered fulmen class.
    import types

    if not ck._supports_alias():
        pytest.skip("needs torch>=2.6")
    foreign = types.ModuleType("somewhere_else")
    reduce = lambda self: (type(self), (dict(self),))  # noqa: E731  (torch's safe unpickler fills only plain dicts)
    foreign.AttrDict = type("AttrDict", (dict,), {"__module__": "somewhere_else", "__reduce__": reduce})
    monkeypatch.setitem(sys.modules, "somewhere_else", foreign)
    ck.save_checkpoint({"hparams": foreign.AttrDict(lr=0.1)}, tmp_path / "h.ckpt")
    monkeypatch.delitem(sys.modules, "somewhere_else")

    class Mine(dict):
        def __reduce__(self):
            return (type(self), (dict(self),))

    monkeypatch.setattr(ck, "_extra_safe", [])
    with pytest.raises(UntrustedCheckpointError, match="somewhere_else.AttrDict"):
        ck.load_checkpoint(tmp_path / "h.ckpt")
    ck.register_safe_type(Mine, name="somewhere_else.AttrDict")
    loaded = ck.load_checkpoint(tmp_path / "h.ckpt")["hparams"]
    assert type(loaded) is Mine and loaded == {"lr": 0.1}


def test_allowlisted_plain_types_round_trip(tmp_path):
    import datetime

    values = {
        "ordered": collections.OrderedDict(a=1), "counter": collections.Counter("aab"),
        "namespace": argparse.Namespace(a=1), "path": pathlib.Path("/a"), "pure": pathlib.PurePosixPath("/b"),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "day": datetime.date(2024, 1, 1),
        "time": datetime.time(1, 2), "interval": datetime.timedelta(hours=1),
        "frozen": frozenset({1}), "slice": slice(1, 5), "range": range(3), "set": {1, 2}, "complex": 1 + 2j, "bytes": b"ab",
    }
    ck.save_checkpoint(values, tmp_path / "v.ckpt")
    assert_same(values, ck.load_checkpoint(tmp_path / "v.ckpt"))


def test_type_the_safe_unpickler_cannot_build_is_reported_as_untrusted(tmp_path):
    ck.save_checkpoint({"d": collections.defaultdict(list, a=[1])}, tmp_path / "d.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="defaultdict"):
        ck.load_checkpoint(tmp_path / "d.ckpt")
    assert ck.load_checkpoint(tmp_path / "d.ckpt", trusted=True)["d"]["a"] == [1]


@pytest.fixture
def http_dir(tmp_path):
    """A directory served over HTTP on 127.0.0.1 (a free port) for the test's duration, then shut down."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold the server past the test

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_checkpoint_paths_load_safely(http_dir):
    pytest.importorskip("aiohttp")
    from helpers import BoringModel, make_loader, quiet_trainer

    root, url = http_dir
    model = BoringModel()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3)
    trainer.fit(model, make_loader())
    trainer.save_checkpoint(root / "run.ckpt")

    loaded = BoringModel.load_from_checkpoint(f"{url}/run.ckpt")
    assert torch.equal(loaded.layer.weight, model.layer.weight)
    resumed = quiet_trainer(max_epochs=2, limit_train_batches=3)
    resumed.fit(BoringModel(), make_loader(), ckpt_path=f"{url}/run.ckpt")
    assert resumed.global_step == 6 and resumed.current_epoch == 2  # continued from step 3, not from 0

    with pytest.raises(ck.CheckpointNotFoundError, match="does not exist"):
        ck.load_checkpoint(f"{url}/missing.ckpt")
    # the safe-loading rules hold over HTTP: a file with other pickled objects is refused unless trusted
    import io

    torch.save({"state_dict": {}, "payload": io.StringIO("text")}, root / "odd.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="StringIO"):
        ck.load_checkpoint(f"{url}/odd.ckpt")
    assert ck.load_checkpoint(f"{url}/odd.ckpt", trusted=True)["payload"].getvalue() == "text"


def test_http_without_aiohttp_names_the_extra(monkeypatch):
    import fsspec

    registry = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` itself is a read-only view of it
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "fsspec.implementations.http", raising=False)
    for scheme in ("http", "https"):
        monkeypatch.delitem(registry, scheme, raising=False)
    assert "http" not in fsspec.registry
    with pytest.raises(ImportError, match=r"pip install 'fulmen\[http\]'") as err:
        ck.load_checkpoint("https://127.0.0.1:9/never-contacted.ckpt")
    assert isinstance(err.value, FulmenError)


# --- damaged files are named, with what is wrong (issue 13, item 3) ------------------------------


def test_cut_at_any_length_is_reported_as_corrupted_naming_the_file(tmp_path):
    """The zip end records fix a file's length, so no cut (even inside the checksum comment) loads."""
    from fulmen.errors import CheckpointCorruptedError

    path = tmp_path / "small.ckpt"
    ck.save_checkpoint({"state_dict": {"w": torch.randn(8, 8)}, "epoch": 1}, path)
    data = path.read_bytes()
    for cut in list(range(0, len(data), 97)) + list(range(len(data) - 140, len(data))):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointCorruptedError, match="corrupt or truncated") as info:
            ck.load_checkpoint(path)
        assert str(path) in str(info.value)
        assert ("empty" if cut == 0 else f"it is {cut} bytes long") in str(info.value) or "damaged" in str(info.value)
    path.write_bytes(data)
    assert ck.load_checkpoint(path)["epoch"] == 1


def test_bit_flip_and_zero_length_are_corrupted_errors(tmp_path):
    from fulmen.errors import CheckpointCorruptedError

    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError, match="checksum mismatch"):
        ck.load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointCorruptedError, match=r"empty \(0 bytes\)"):
        ck.load_checkpoint(path)


def test_header_read_is_cheap_and_checks_the_length(tmp_path):
    from fulmen.errors import CheckpointCorruptedError

    path = tmp_path / "h.ckpt"
    ck.save_checkpoint({"global_step": 7, "state_dict": {"w": torch.randn(64, 64)}}, path)
    assert ck.read_checkpoint_header(path)["global_step"] == 7
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointCorruptedError, match="h.ckpt"):
        ck.read_checkpoint_header(path)


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES"])
def test_failed_save_names_path_and_cause_and_keeps_the_old_file(tmp_path, monkeypatch, errno_name):
    import errno

    from fulmen.errors import CheckpointSaveError

    path = tmp_path / "last.ckpt"
    ck.save_checkpoint({"v": 1}, path)

    def fail(self, data):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))

    monkeypatch.setattr(ck._ChecksumWriter, "write", fail)
    with pytest.raises(CheckpointSaveError, match=os.strerror(getattr(errno, errno_name))) as info:
        ck.save_checkpoint({"v": 2}, path)
    assert str(path) in str(info.value) and isinstance(info.value, OSError)
    monkeypatch.undo()
    assert ck.load_checkpoint(path) == {"v": 1} and leftovers(tmp_path) == []


def test_save_under_a_path_that_is_a_file_names_it(tmp_path):
    from fulmen.errors import CheckpointSaveError

    (tmp_path / "blocker").write_text("x")
    with pytest.raises(CheckpointSaveError, match="blocker.*A file stands where a directory is needed"):
        ck.save_checkpoint({"v": 1}, tmp_path / "blocker" / "a.ckpt")


# --- AsyncCheckpointIO (issue 13, item 6) --------------------------------------------------------
import threading
import time

import fulmen as pl
from helpers import BoringModel, make_loader, quiet_trainer


def _fit_saving(tmp_path, plugins=None, save_async=False, epochs=2):
    from fulmen.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, save_last=True, save_async=save_async)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[cb], enable_checkpointing=True, plugins=plugins)
    trainer.fit(BoringModel(), make_loader(64, 8, shuffle=True))
    return trainer


def _contents(path):
    ckpt = ck.load_checkpoint(path)
    loop = ckpt["loops"]["fulmen"]
    return [ckpt["state_dict"], ckpt["optimizer_states"], ckpt["global_step"], ckpt["epoch"],
            [loop[k] for k in ("epoch", "global_step", "batches_in_epoch", "total_batches")]]


@pytest.mark.parametrize("how", ["plugin", "save_async"])
def test_async_writes_equal_sync_writes(tmp_path, how):
    _fit_saving(tmp_path / "sync")
    kwargs = {"plugins": [ck.AsyncCheckpointIO()]} if how == "plugin" else {"save_async": True}
    _fit_saving(tmp_path / "async", **kwargs)
    names = sorted(os.listdir(tmp_path / "sync"))
    assert sorted(os.listdir(tmp_path / "async")) == names and len(names) == 6  # 5 step saves + last
    for name in names:
        assert_same(_contents(tmp_path / "sync" / name), _contents(tmp_path / "async" / name))


class SlowIO(ck.TorchCheckpointIO):
    """Writes slowly and records how many writes overlap."""

    def __init__(self, delay=0.05, fail_at=None):
        self.delay, self.fail_at, self.active, self.most, self.calls = delay, fail_at, 0, 0, 0
        self.lock = threading.Lock()

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.most = max(self.most, self.active)
            calls = self.calls
        try:
            time.sleep(self.delay)
            if calls == self.fail_at:
                raise ck.CheckpointSaveError(f"Could not write checkpoint {str(path)!r}: No space left on device.")
            super().save_checkpoint(checkpoint, path, storage_options)
        finally:
            with self.lock:
                self.active -= 1


def test_async_snapshot_is_taken_at_the_step_and_one_write_is_in_flight(tmp_path):
    slow = SlowIO(delay=0.1)
    io = ck.AsyncCheckpointIO(slow)
    weights = torch.zeros(1000)
    io.save_checkpoint({"w": weights}, tmp_path / "a.ckpt")
    weights.add_(1)  # training goes on while the file is written
    io.save_checkpoint({"w": weights}, tmp_path / "b.ckpt")
    weights.add_(1)
    io.wait()
    assert slow.most == 1
    assert torch.equal(ck.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.zeros(1000))
    assert torch.equal(ck.load_checkpoint(tmp_path / "b.ckpt")["w"], torch.ones(1000))


def test_async_fit_returns_with_every_file_on_disk(tmp_path):
    trainer = _fit_saving(tmp_path, plugins=[ck.AsyncCheckpointIO(SlowIO(delay=0.05))])
    assert len(os.listdir(tmp_path)) == 6 and ck.load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 15
    assert trainer.strategy.checkpoint_io._pool is None  # the writer thread is gone


def test_async_failure_raises_at_the_next_step(tmp_path):
    from fulmen.errors import CheckpointSaveError

    steps = []

    class Steps(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append(trainer.global_step)
            if trainer.global_step == 7:  # let the writer thread finish the failing write (the GIL may not have)
                import concurrent.futures

                concurrent.futures.wait(trainer.strategy.checkpoint_io._pending)

    from fulmen.callbacks import ModelCheckpoint

    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer = quiet_trainer(max_epochs=3, callbacks=[Steps(), cb], enable_checkpointing=True,
                            plugins=[ck.AsyncCheckpointIO(SlowIO(delay=0.0, fail_at=2))])
    with pytest.raises(CheckpointSaveError, match="No space left"):
        trainer.fit(BoringModel(), make_loader(64, 8))
    # the second save (step 6) failed: raised at the next step boundary (before or after step 7's batch ends,
    # depending on when the writer thread ran), never as late as the next save (step 9)
    assert steps[-1] in (6, 7)
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=3.ckpt"]


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    stale = tmp_path / ".last.ckpt.0123456789ab.tmp"
    fresh = tmp_path / ".epoch=1.ckpt.ba9876543210.tmp"
    other = tmp_path / ".notes.tmp"
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert ck.remove_stale_temp_files(tmp_path) == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".epoch=1.ckpt.ba9876543210.tmp", ".notes.tmp"]


def test_zeroed_blocks_anywhere_are_reported_as_damage_by_the_header_read_and_the_load(tmp_path):
    # a lost disk block keeps the file's length: the zip records it hits must still read as damage, so that
    # ckpt_path="last" skips the file instead of stopping on a bare ValueError
    path = tmp_path / "c.ckpt"
    ck.save_checkpoint({"state_dict": {"w": torch.randn(16, 16)}, "optimizer_states": [], "global_step": 3}, path)
    original = path.read_bytes()
    outcomes = {ck.read_checkpoint_header: set(), ck.load_checkpoint: set()}
    for start in range(0, len(original) - 64, 61):
        data = bytearray(original)
        data[start : start + 64] = bytes(64)
        path.write_bytes(bytes(data))
        for read, seen in outcomes.items():
            try:
                read(path)
                seen.add("read")
            except CheckpointCorruptedError:
                seen.add("damaged")
            except CheckpointError:  # zeroed magic bytes: not recognisable as a checkpoint at all
                seen.add("rejected")
    # no other exception type escaped; the header read skips tensor data (and the checksum) by design
    assert outcomes[ck.read_checkpoint_header] == {"read", "damaged", "rejected"}
    assert outcomes[ck.load_checkpoint] == {"damaged", "rejected"}  # the checksum catches every other block


def test_every_checkpoint_the_trainer_writes_opens_with_plain_torch_load(tmp_path):
    """torch.load's default (weights_only=True since torch 2.6) reads fulmen's checkpoints, as it reads Lightning's."""
    pytest.importorskip("numpy")
    import fulmen as pl
    from fulmen.callbacks import EarlyStopping, ModelCheckpoint, OnExceptionCheckpoint
    from helpers import BoringModel, make_loader

    class Model(BoringModel):
        fail_at = None

        def __init__(self, features=32, lr=0.1, name="boring"):
            super().__init__(features, lr)
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            if self.global_step == self.fail_at:
                raise RuntimeError("stop here")
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    callbacks = [ModelCheckpoint(tmp_path / "ckpts", monitor="val_loss", save_top_k=2, save_last=True),
                 EarlyStopping("val_loss", patience=5), OnExceptionCheckpoint(tmp_path / "exc")]
    trainer = pl.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    model = Model()
    trainer.fit(model, make_loader(), make_loader())
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    model.fail_at = trainer.global_step + 3
    with pytest.raises(RuntimeError, match="stop here"):
        pl.Trainer(max_epochs=5, callbacks=[OnExceptionCheckpoint(tmp_path / "exc")], logger=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path).fit(model, make_loader(), ckpt_path=tmp_path / "manual.ckpt")
    files = sorted(tmp_path.rglob("*.ckpt"))
    names = {f.name for f in files}
    assert {"last.ckpt", "manual.ckpt", "on_exception.ckpt"} <= names and len(files) >= 4
    for path in files:
        checkpoint = torch.load(path)  # the plain call users write
        assert set(checkpoint["state_dict"]) == set(model.state_dict()), path
        assert checkpoint["hyper_parameters"]["name"] == "boring"
        assert isinstance(checkpoint["rng_states"]["numpy"][1], torch.Tensor)
