"""Damaged, hostile or misplaced data folders: nothing in them runs, every problem is one clear error.

A pickle can name any Python function to call while it loads, so a data folder
someone else filled could run code as soon as a notebook describes it. The
loader admits only what CIFAR-10's files hold (dicts, lists, text, numbers,
numpy arrays). The rest of this file holds each data folder a careless user
can end up with to one CIFAR10DataError that names the problem and the fix,
raised before anything is written.
"""
import errno
import os
import pickle
import struct
import tempfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nbhelpers import data as D
from nbhelpers.data import (CIFAR10DataError, UnofficialCopyWarning, describe_data_dir,
                            is_synthetic, load_cifar10, prepare_splits, write_synthetic_cifar10)


def _permissions_stop_this_user() -> bool:
    """False for root (with its usual capabilities), whom chmod does not keep from reading."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "locked"
        path.write_text("x")
        path.chmod(0)
        try:
            path.read_text()
            return False
        except PermissionError:
            return True


needs_permissions = pytest.mark.skipif(
    not _permissions_stop_this_user(),
    reason="runs as root, whom file permissions do not stop (to run these: setpriv "
           "--bounding-set=-dac_override,-dac_read_search --inh-caps=-dac_override,-dac_read_search)")


def _load(root, download=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialCopyWarning)
        return load_cifar10(root, download=download)


def _load_error(root, download=False) -> str:
    """The one-line message load_cifar10 gives, checked for a fix and for the path it concerns."""
    with pytest.raises(CIFAR10DataError) as info:
        _load(root, download)
    message = str(info.value)
    assert "\n" not in message and "To fix it" in message
    return message


def _files(path) -> list:
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.is_dir() else []


@pytest.fixture
def copy(tmp_path):
    """A small synthetic copy in the official layout."""
    write_synthetic_cifar10(tmp_path, train_per_class=3, test_per_class=1)
    return tmp_path


# --- defect 1: code placed in a data folder never runs ---------------------

class _Payload:
    """Unpickles by calling `function(argument)`: what a planted pickle does."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _payloads(marker):
    """Two ways a pickle runs code: Python source through exec, a shell command through os.system."""
    yield _Payload(exec, f"with open({str(marker)!r}, 'w') as fh: fh.write('ran')")
    yield _Payload(os.system, f"touch '{marker}'")


def _plant(path, payload, protocol):
    """Rewrite a pickled dict with the payload hidden among its real entries."""
    with open(path, "rb") as fh:
        content = pickle.load(fh, encoding="latin1")
    content["note"] = payload
    with open(path, "wb") as fh:
        pickle.dump(content, fh, protocol=protocol)


def test_the_payloads_do_run_under_a_plain_unpickler(copy, tmp_path):
    """The control: without the loader's allow-list, each planted file runs its payload."""
    for number, payload in enumerate(_payloads(tmp_path / "marker")):
        path = copy / D.FOLDER / D.META_FILE
        _plant(path, payload, protocol=2)
        with open(path, "rb") as fh:
            pickle.load(fh, encoding="latin1")
        assert (tmp_path / "marker").exists(), f"payload {number} did not run"
        (tmp_path / "marker").unlink()
        write_synthetic_cifar10(copy, train_per_class=3, test_per_class=1)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("kind", ["exec", "os.system"])
def test_a_payload_in_batches_meta_runs_nowhere_and_loading_refuses_it(copy, tmp_path, protocol, kind):
    marker = tmp_path / "marker"
    payload = dict(zip(["exec", "os.system"], _payloads(marker)))[kind]
    _plant(copy / D.FOLDER / D.META_FILE, payload, protocol)

    description = describe_data_dir(copy)
    assert not marker.exists()
    assert not is_synthetic(copy) and not marker.exists()
    message = _load_error(copy)
    assert not marker.exists()
    refused = f"{payload.function.__module__}.{payload.function.__name__}"  # posix.system on Linux
    assert f"{D.META_FILE} is not plain data" in description and refused in description
    assert f"{copy / D.FOLDER / D.META_FILE} is not plain data" in message and refused in message
    assert "nothing in it ran" in message and f"remove {copy / D.FOLDER}" in message


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_payload_in_a_batch_file_runs_nowhere_and_loading_refuses_it(copy, tmp_path, protocol):
    marker = tmp_path / "marker"
    path = copy / D.FOLDER / "data_batch_1"
    clean = path.read_bytes()
    for payload in _payloads(marker):
        path.write_bytes(clean)
        _plant(path, payload, protocol)
        assert describe_data_dir(copy).startswith("SYNTHETIC stand-in")  # reads batches.meta only
        message = _load_error(copy)
        assert not marker.exists()
        assert f"{copy / D.FOLDER / 'data_batch_1'} is not plain data" in message


def test_setup_describes_a_planted_meta_without_running_it(copy, tmp_path, capsys):
    from nbhelpers import plots
    from nbhelpers.notebook import setup
    marker = tmp_path / "marker"
    _plant(copy / D.FOLDER / D.META_FILE, next(_payloads(marker)), 2)
    try:
        setup(seed=0, data_dir=str(copy), device="cpu")
    finally:
        plots.mark_figures(None)
    assert not marker.exists()
    assert f"| data: {copy / D.FOLDER} cannot be used: " in capsys.readouterr().out


def test_random_bytes_read_as_damage_not_as_code(copy):
    """A damaged file that happens to spell a GLOBAL opcode is called damaged, not hostile."""
    path = copy / D.FOLDER / "test_batch"
    path.write_bytes(b"\x80\x02c\xff\xfe junk\n\x01\x02\n" + bytes(200))
    assert "test_batch is truncated or corrupted" in _load_error(copy)


# What the files may hold: each way numpy 1 and numpy 2 pickle arrays and
# numbers, and the Python 2 strings of the official release.

def _batch(labels, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return {"batch_label": "batch", "labels": list(labels), "data": images,
            "filenames": [f"{i}.png" for i in range(len(labels))]}


def _numpy1_names(pickled: bytes) -> bytes:
    """A protocol-2 pickle with the module names numpy 1 writes (numpy.core, not numpy._core)."""
    return pickled.replace(b"numpy._core.", b"numpy.core.")


class _Py2Pickler(pickle._Pickler):
    """Writes as Python 2's cPickle wrote the official files: byte strings as py2 `str`
    (BINSTRING), arrays through numpy.core.multiarray._reconstruct and a raw data string."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_ndarray(self, array):
        write, save = self.write, self.save
        write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        write(pickle.GLOBAL + b"numpy\nndarray\n")
        save((0,)), save(b"b")
        write(pickle.TUPLE3 + pickle.REDUCE + pickle.MARK)
        save(1), save(array.shape)
        write(pickle.GLOBAL + b"numpy\ndtype\n")
        save(b"u1"), save(0), save(1)
        write(pickle.TUPLE3 + pickle.REDUCE + pickle.MARK)
        for part in (3, b"|", None, None, None, -1, -1, 0):
            save(part)
        write(pickle.TUPLE + pickle.BUILD)
        save(False), save(array.tobytes())
        write(pickle.TUPLE + pickle.BUILD)

    dispatch[str] = dispatch[bytes] = save_py2_str
    dispatch[np.ndarray] = save_ndarray


def _py2_pickle(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


class _AsBuffer:
    """An array pickled through numpy's _frombuffer, as protocol 5 pickles it, at any protocol."""

    def __init__(self, array):
        self.array = array

    def __reduce__(self):
        frombuffer = self.array.__reduce_ex__(5)[0]
        return frombuffer, (self.array.tobytes(), self.array.dtype, self.array.shape, "C")


def _numpy_objects(obj):
    """A batch as numpy objects pickle: numpy integers for labels, the images as a buffer."""
    if "labels" not in obj:
        return obj
    return {**obj, "labels": [np.int64(x) for x in obj["labels"]], "data": _AsBuffer(obj["data"])}


WRITERS = {
    "python 2, as the official files": _py2_pickle,
    "numpy 1, protocol 2": lambda obj: _numpy1_names(pickle.dumps(obj, protocol=2)),
    "protocol 2": lambda obj: pickle.dumps(obj, protocol=2),
    "protocol 4": lambda obj: pickle.dumps(obj, protocol=4),
    "protocol 5": lambda obj: pickle.dumps(obj, protocol=5),
    "bytes keys": lambda obj: pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=2),
    "numpy objects": lambda obj: pickle.dumps(_numpy_objects(obj), protocol=4),
    "numpy 1 objects, protocol 2": lambda obj: _numpy1_names(pickle.dumps(_numpy_objects(obj), protocol=2)),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_way_a_batch_is_pickled_loads(copy, writer):
    batch = _batch([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 2])
    (copy / D.FOLDER / "data_batch_1").write_bytes(WRITERS[writer](batch))
    meta = {"label_names": list(D.CLASS_NAMES), "num_vis": 3072}
    (copy / D.FOLDER / D.META_FILE).write_bytes(WRITERS[writer](meta))
    assert describe_data_dir(copy) == f"CIFAR-10 at {copy / D.FOLDER}"
    data = _load(copy)
    assert data.classes == D.CLASS_NAMES
    assert torch.equal(data.train.images[:12], torch.from_numpy(batch["data"]).view(-1, 3, 32, 32))
    assert data.train.labels[:12].tolist() == batch["labels"]


# --- defect 7: batches.meta must name exactly the classes the batches hold --

def _rewrite_meta(root, **changes):
    path = root / D.FOLDER / D.META_FILE
    with open(path, "rb") as fh:
        meta = pickle.load(fh)
    with open(path, "wb") as fh:
        pickle.dump({**meta, **changes}, fh, protocol=2)


def test_a_class_name_without_images_is_refused_naming_batches_meta(copy):
    _rewrite_meta(copy, label_names=list(D.SYNTHETIC_CLASS_NAMES) + ["unicorn"])
    message = _load_error(copy)
    assert f"{copy / D.FOLDER / D.META_FILE} names 11 classes" in message
    assert "the training batches hold images of 10" in message and "'unicorn'" in message
    assert "label_names" in message


def test_a_class_name_without_images_no_longer_blames_train_subset(copy):
    _rewrite_meta(copy, label_names=list(D.SYNTHETIC_CLASS_NAMES) + ["unicorn"])
    with pytest.raises(CIFAR10DataError, match="batches.meta names 11 classes"):
        prepare_splits(_load(copy), train_subset=20)


def test_a_label_without_a_name_is_refused_naming_batches_meta(copy):
    _rewrite_meta(copy, label_names=list(D.SYNTHETIC_CLASS_NAMES)[:9])
    message = _load_error(copy)
    assert f"{copy / D.FOLDER / D.META_FILE} names 9 classes (labels 0 to 8)" in message
    assert "label 9" in message and "label_names" in message


@pytest.mark.parametrize("meta, problem", [
    (["airplane"], "is not CIFAR-10's batches.meta"),
    ({"synthetic": True}, "is not CIFAR-10's batches.meta"),
    ({"label_names": "abcdefghij"}, "is not CIFAR-10's batches.meta"),
    ({"label_names": ["a", "b", "a"]}, "names the class 'a' twice"),
])
def test_a_batches_meta_without_a_list_of_names_is_described_and_refused(copy, meta, problem):
    with open(copy / D.FOLDER / D.META_FILE, "wb") as fh:
        pickle.dump(meta, fh)
    assert problem in describe_data_dir(copy) and not is_synthetic(copy)
    assert problem in _load_error(copy)


# --- batches that do not hold CIFAR-10 images ------------------------------

@pytest.mark.parametrize("content, problem", [
    (np.zeros(3), "it holds an object of type ndarray, not a dict"),
    ({"data": [[300] * 3072], "labels": [0]}, "its pixels are not whole numbers 0 to 255"),
    ({"data": np.full((1, 3072), 256, np.int64), "labels": [0]}, "its pixels are not whole numbers 0 to 255"),
    ({"data": np.zeros((1, 3072), np.uint8), "labels": [1.7]}, "its labels are not class numbers"),
    ({"data": np.zeros((1, 3072), np.uint8), "labels": [2 ** 70]}, "its labels are not class numbers"),
    ({"data": np.zeros((1, 3072), np.uint8), "labels": [[0, 1]]}, "data of shape (1, 3072) for labels of shape (1, 2)"),
])
def test_a_batch_of_other_content_is_refused_by_name(copy, content, problem):
    with open(copy / D.FOLDER / "data_batch_1", "wb") as fh:
        pickle.dump(content, fh)
    message = _load_error(copy)
    assert f"data_batch_1 is not a CIFAR-10 batch ({problem}" in message


def test_a_split_without_images_is_refused(copy):
    with open(copy / D.FOLDER / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((0, 3072), np.uint8), "labels": []}, fh)
    assert "The test batches in" in _load_error(copy) and "hold no images" in _load_error(copy)


# --- folders that are files, links or out of reach -------------------------

def test_a_cifar10_folder_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / D.FOLDER).write_text("not a folder")
    for download in (False, True):
        message = _load_error(tmp_path, download)
        assert f"{tmp_path / D.FOLDER} is a file, not a folder" in message
        assert "move it aside" in message
        assert _files(tmp_path) == [Path(D.FOLDER)]  # nothing downloaded or written
    assert describe_data_dir(tmp_path) == f"{tmp_path / D.FOLDER} cannot be used: " \
                                          f"{tmp_path / D.FOLDER} is a file, not a folder"


@pytest.mark.parametrize("via", ["data_dir", "CIFAR10_ROOT"])
def test_a_data_root_that_is_a_file_is_named_as_such(tmp_path, monkeypatch, via):
    root = tmp_path / "data.txt"
    root.write_text("not a folder")
    if via == "CIFAR10_ROOT":
        monkeypatch.setenv("CIFAR10_ROOT", str(root))
    for download in (False, True):
        message = _load_error(root if via == "data_dir" else None, download)
        assert f"The data folder {root} (from {via}" in message and "is a file, not a folder" in message
        assert "`-p data_dir PATH`" in message and "CIFAR10_ROOT" in message
    assert root.read_text() == "not a folder" and _files(tmp_path) == [Path("data.txt")]
    assert "is a file, not a folder" in describe_data_dir(root if via == "data_dir" else None)


def test_a_data_root_that_is_a_symlink_loop_is_named_as_such(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    for download in (False, True):
        message = _load_error(loop, download)
        assert f"The data folder {loop} (from data_dir" in message
        assert "Too many levels of symbolic links" in message
    assert "Too many levels of symbolic links" in describe_data_dir(loop)
    assert not is_synthetic(loop)


def test_a_data_root_that_is_a_dangling_link_is_named_as_such(tmp_path):
    link = tmp_path / "link"
    os.symlink(tmp_path / "gone", link)
    for download in (False, True):
        message = _load_error(link, download)
        assert f"The data folder {link} (from data_dir) is a symbolic link to {tmp_path / 'gone'}, " \
               "which does not exist" in message
    assert not (tmp_path / "gone").exists()


@needs_permissions
def test_a_data_folder_that_cannot_be_read_is_named_as_such(copy):
    folder = copy / D.FOLDER
    folder.chmod(0o600)  # no x: none of its files can be opened
    try:
        message = _load_error(copy)
        assert f"{folder} cannot be read" in message and "chmod -R u+rX" in message
        assert "cannot be read" in describe_data_dir(copy)
    finally:
        folder.chmod(0o755)


@needs_permissions
def test_a_batch_file_that_cannot_be_read_is_named_as_such(copy):
    path = copy / D.FOLDER / "data_batch_4"
    path.chmod(0o200)
    try:
        assert f"{path} cannot be read (Permission denied)" in _load_error(copy)
    finally:
        path.chmod(0o644)


@needs_permissions
def test_a_download_target_that_cannot_be_written_is_named_as_such(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded into a folder it cannot write")
    monkeypatch.setattr(D, "download_url", no_download)
    root = tmp_path / "locked"
    root.mkdir(mode=0o500)
    try:
        message = _load_error(root, download=True)
        assert f"{root} cannot be written" in message and "`-p data_dir PATH`" in message
        message = _load_error(root / "inner", download=True)
        assert f"{root / 'inner'} cannot be made" in message
    finally:
        root.chmod(0o755)


def test_a_full_disk_during_download_is_not_called_offline(tmp_path, monkeypatch):
    def disk_full(url, root, filename, md5):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(root) / filename))
    monkeypatch.setattr(D, "download_url", disk_full)
    message = _load_error(tmp_path / "root", download=True)
    assert "No space left on device" in message and "offline" not in message
    assert f"could not be written into {tmp_path / 'root'}" in message


def test_an_offline_machine_is_still_called_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))
    monkeypatch.setattr(D, "download_url", offline)
    assert "seems to be offline" in _load_error(tmp_path / "root", download=True)


# --- a batch file is checked against its own size before anything is allocated ---

class _Declared:
    """Unpickles as `numpy.ndarray(shape, dtype)` or `_reconstruct(ndarray, shape, dtype)` with no
    contents after it: an array of any size, from a file of a few bytes."""

    def __init__(self, constructor, shape):
        self.constructor, self.shape = constructor, shape

    def __reduce__(self):
        if self.constructor == "ndarray":
            return np.ndarray, (self.shape, np.dtype(np.uint8))
        return np.zeros(0).__reduce__()[0], (np.ndarray, self.shape, b"B")


@pytest.mark.parametrize("constructor", ["ndarray", "_reconstruct"])
def test_an_array_larger_than_its_file_is_refused_before_it_is_allocated(copy, constructor):
    import tracemalloc
    path = copy / D.FOLDER / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Declared(constructor, (150000, 3072)), "labels": [0]}, protocol=2))
    assert path.stat().st_size < 200
    tracemalloc.start()  # numpy reports its arrays' memory to tracemalloc
    try:
        message = _load_error(copy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "data_batch_1 declares an array of shape (150000, 3072) (460,800,000 bytes)" in message
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a file of a few bytes"


@pytest.mark.parametrize("constructor", ["ndarray", "_reconstruct"])
def test_a_batch_whose_data_the_file_does_not_hold_is_refused(copy, constructor):
    path = copy / D.FOLDER / "data_batch_1"
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    padding = "x" * (len(labels) * 3072)  # so the file is large enough to hold the pixels it lacks
    path.write_bytes(pickle.dumps({"data": _Declared(constructor, (len(labels), 3072)), "labels": labels,
                                   "batch_label": padding}, protocol=2))
    assert "data_batch_1 declares an array of shape (10, 3072) without its contents: " \
           "the file holds no pixels for it" in _load_error(copy)


# --- issue 29: a label and a file as they are, not as they became -------------

def test_a_label_too_large_for_int64_is_named_as_stored(copy):
    path = copy / D.FOLDER / "data_batch_1"
    batch = _batch(range(10))
    batch["labels"] = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 2**63 + 1], dtype=np.uint64)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    message = _load_error(copy)
    assert f"{path} is not a CIFAR-10 batch (its label 9223372036854775809 is not a class number" in message
    assert "-9223372036854775807" not in message


def test_a_batch_file_that_links_to_a_device_is_not_called_missing(copy):
    path = copy / D.FOLDER / "data_batch_1"
    path.unlink()
    path.symlink_to("/dev/zero")
    message = _load_error(copy)
    assert f"{path} is not a regular file" in message and "is missing" not in message
