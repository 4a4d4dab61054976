"""CIFAR-10: find it, fetch it, load it once, serve augmented batches.

Every notebook loads its data here: 01 shows it (the classes, the splits, the
augmentation), 02-04 and 06 take images from it, and `fit` trains on it.

The way data flows (DESIGN.md): the python-batch files on disk become uint8
tensors on the training device once; every batch is then cut, flipped and
normalized there, with no per-image PIL work in the training loop.

    data = load_cifar10()                      # data/, $CIFAR10_ROOT or an explicit root
    train = CifarLoader(data.train, 128, train=True, device="cuda")
    for images, labels in train: ...           # float batches, normalized, on the device
"""
from __future__ import annotations

import _compat_pickle  # pickle's own table of Python 2 names
import errno
import hashlib
import math
import os
import pickle
import socket
import stat
import tarfile
import urllib.error
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10 as _TorchvisionCIFAR10
from torchvision.datasets.utils import calculate_md5, download_url

from .config import ConfigError
from .errors import ExplainedError
from .runtime import DATA_DIR, project_path, shown_path

__all__ = ["FOLDER", "META_FILE", "MEAN", "STD", "CLASS_NAMES", "SYNTHETIC_CLASS_NAMES",
           "CIFAR10DataError", "UnofficialCopyWarning", "resolve_data_root", "find_cifar10",
           "fetch_cifar10", "is_synthetic", "describe_data_dir", "CIFAR10Data", "load_cifar10", "Split",
           "Splits", "balanced_indices", "split_validation", "prepare_splits", "pad_images",
           "draw_crops", "crop_and_flip", "random_crop_flip", "normalize", "denormalize", "CifarLoader",
           "synthetic_images", "write_synthetic_cifar10"]

FOLDER = _TorchvisionCIFAR10.base_folder  # "cifar-10-batches-py"
TRAIN_FILES = [name for name, _ in _TorchvisionCIFAR10.train_list]
TEST_FILES = [name for name, _ in _TorchvisionCIFAR10.test_list]
META_FILE = _TorchvisionCIFAR10.meta["filename"]
OFFICIAL_MD5 = dict(_TorchvisionCIFAR10.train_list + _TorchvisionCIFAR10.test_list)
OFFICIAL_MD5[META_FILE] = _TorchvisionCIFAR10.meta["md5"]
# The official archive (the python version, 163 MB) and its md5 sum, as torchvision knows them.
# The environment variable CIFAR10_URL names a mirror of the same file: same md5 sum, checked.
ARCHIVE_URL = _TorchvisionCIFAR10.url
ARCHIVE_NAME = _TorchvisionCIFAR10.filename
ARCHIVE_MD5 = _TorchvisionCIFAR10.tgz_md5
# Seconds without a byte from the server before a download counts as stalled. torchvision's
# download_url sets no timeout: a host that accepts and never answers would hang the demo.
DOWNLOAD_STALL_SECONDS = 60

# The seed's normalization: ToTensor (0..1), then (x - 0.5) / 0.5, so -1..1.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
PAD = 4  # pixels of zero padding around each image before the random 32x32 crop
IMAGE_SIZE = 32

# What a user can do about missing or damaged data, in the notebooks' terms.
HOW_TO_GET_IT = (
    "To fix it: on a machine with a network, pass download=True (`-p download True` to the "
    "notebooks), which fetches the official archive and checks its md5 sum; or set data_dir "
    "(`-p data_dir PATH`) or the environment variable CIFAR10_ROOT to a folder that holds "
    "{folder}/ (the official python version)."
)
HOW_TO_REPAIR = (
    "To fix it: remove {root}/{folder} and fetch it again with download=True (`-p download True`) "
    "on a machine with a network, or set data_dir (`-p data_dir PATH`) or CIFAR10_ROOT to a "
    "folder that holds a complete copy."
)
HOW_TO_POINT_ELSEWHERE = (
    "To fix it: set data_dir (`-p data_dir PATH`) or the environment variable CIFAR10_ROOT to a "
    "folder that holds {folder}/, or to an empty folder to download it into with `-p download True`."
)
HOW_TO_MOVE_ASIDE = (
    "To fix it: move it aside, then fetch CIFAR-10 with download=True (`-p download True`) on a "
    "machine with a network; or set data_dir (`-p data_dir PATH`) or CIFAR10_ROOT to a folder "
    "that holds a complete copy of {folder}/."
)
HOW_TO_READ = (
    "To fix it: let your user read it (`chmod -R u+rX {root}/{folder}`), or set data_dir "
    "(`-p data_dir PATH`) or CIFAR10_ROOT to a copy you can read."
)
HOW_TO_WRITE = (
    "To fix it: set data_dir (`-p data_dir PATH`) or CIFAR10_ROOT to a folder you can write "
    "that has room for about 340 MB, or let your user write {root}."
)
HOW_TO_GET_AROUND_A_STALL = (
    f"To fix it: set the environment variable CIFAR10_URL to a mirror of {ARCHIVE_NAME} (it is "
    "checked against the official md5 sum), or place {folder}/ (the official python version) in "
    "{root} by hand, or set data_dir (`-p data_dir PATH`) or CIFAR10_ROOT to a folder that holds it."
)
HOW_TO_NAME_CLASSES = (
    "To fix it: make label_names in {root}/{folder}/batches.meta list one name per label the "
    "batches hold, in label order (CIFAR-10 has ten, airplane to truck); or remove "
    "{root}/{folder} and fetch it again with download=True (`-p download True`), or set data_dir "
    "(`-p data_dir PATH`) or CIFAR10_ROOT to a folder that holds a complete copy."
)


class CIFAR10DataError(ExplainedError, RuntimeError):
    """CIFAR-10 is missing, incomplete or damaged; the message says how to fix it."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem}. {fix}" if fix else problem)
        self.problem = problem  # the first half alone, for a one-line description


class UnofficialCopyWarning(UserWarning):
    """The files load but are not byte-identical to the official release."""


# --------------------------------------------------------------------------
# Finding and fetching
# --------------------------------------------------------------------------

def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: `root` if given (relative: to the project), else $CIFAR10_ROOT, else data/."""
    if root:
        return project_path(root)
    if os.environ.get("CIFAR10_ROOT"):
        return Path(os.environ["CIFAR10_ROOT"]).expanduser()
    return DATA_DIR


def _error(root: Path, problem: str, fix: str = HOW_TO_REPAIR) -> CIFAR10DataError:
    return CIFAR10DataError(problem, fix.format(root=root, folder=FOLDER))


def _root_origin(root: str | os.PathLike | None) -> str:
    """Where the data root came from, in the terms a user set it."""
    if root:
        return "from data_dir"
    return "from CIFAR10_ROOT" if os.environ.get("CIFAR10_ROOT") else "the project's default"


def _is_folder(path: Path, name: str, root: Path, fix: str) -> bool:
    """True for a folder, False where nothing is; CIFAR10DataError for anything else in the way."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():  # mkdir would fail on it with "File exists"
            raise _error(root, f"{name} is a symbolic link to {os.readlink(path)}, which does "
                               "not exist", fix) from None
        return False
    except OSError as exc:  # a link loop, a file where a parent folder should be, no permission
        raise _error(root, f"{name} cannot be opened ({exc.strerror})", fix) from None
    if not stat.S_ISDIR(mode):
        raise _error(root, f"{name} is a file, not a folder", fix)
    return True


def _locate(root: str | os.PathLike | None) -> tuple[Path, Path, bool]:
    """The data root, its CIFAR-10 folder, and whether that folder is there yet.

    Whatever else stands in the way (a file, a link loop, a folder this user
    cannot read) raises CIFAR10DataError, before anything is read or written.
    """
    origin = _root_origin(root)
    root = resolve_data_root(root)
    folder = root / FOLDER
    there = (_is_folder(root, f"The data folder {root} ({origin})", root, HOW_TO_POINT_ELSEWHERE)
             and _is_folder(folder, str(folder), root, HOW_TO_MOVE_ASIDE))
    if there and not os.access(folder, os.X_OK):  # its files open by name: listing is not needed
        raise _error(root, f"{folder} cannot be read by this user", HOW_TO_READ)
    return root, folder, there


def is_synthetic(root: str | os.PathLike | None = None) -> bool:
    """Is the copy under the data root the synthetic stand-in (its batches.meta says so)?"""
    try:
        root, folder, there = _locate(root)
        return there and bool(_read_meta(folder, root).get("synthetic"))
    except CIFAR10DataError:
        return False


def describe_data_dir(root: str | os.PathLike | None = None) -> str:
    """One line on the copy under the data root, read from its batches.meta only (no loading).

    It never raises for a bad folder: setup() prints it before any check, and
    load_cifar10 raises the full error, fix included, where the data is needed.
    """
    folder = resolve_data_root(root) / FOLDER
    try:
        root, folder, there = _locate(root)
        if not there:
            return f"no CIFAR-10 at {folder} yet"
        meta = _read_meta(folder, root)
    except CIFAR10DataError as exc:
        return f"{folder} cannot be used: {exc.problem}"
    if meta.get("synthetic"):
        return (f"SYNTHETIC stand-in at {shown_path(folder)}, not CIFAR-10 "
                f"(classes: {', '.join(meta['label_names'])})")
    return f"CIFAR-10 at {shown_path(folder)}"


def find_cifar10(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The `cifar-10-batches-py` folder under the data root, fetched if allowed."""
    root, folder, there = _locate(root)
    if not there:
        if not download:
            raise _error(root, f"CIFAR-10 is not at {folder} (the folder does not exist) and "
                               "download=False", HOW_TO_GET_IT)
        fetch_cifar10(root)
    return folder


def _writable_folder(root: Path) -> None:
    """Make `root` for a download, or say why it cannot take one."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(root, f"{root} cannot be made, so CIFAR-10 cannot be downloaded into it "
                           f"({exc.strerror})", HOW_TO_WRITE) from exc
    if not os.access(root, os.W_OK | os.X_OK):
        raise _error(root, f"{root} cannot be written by this user, so CIFAR-10 cannot be "
                           "downloaded into it", HOW_TO_WRITE)


# What a failed write says, as against a failed connection: both are OSErrors.
DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def archive_url() -> str:
    """Where the archive comes from: $CIFAR10_URL (a mirror of the same file), else the official host."""
    url = os.environ.get("CIFAR10_URL") or ARCHIVE_URL
    if not url.startswith(("http://", "https://")):  # torchvision's download reads nothing else
        raise CIFAR10DataError(
            f"CIFAR10_URL={url!r} is not an http:// or https:// URL", "To fix it: name a mirror of "
            f"{ARCHIVE_NAME} on a web server, or unpack an archive on this machine yourself "
            "(`tar xzf FILE -C data`) or point data_dir (`-p data_dir PATH`) or CIFAR10_ROOT at the "
            f"folder that holds {FOLDER}/.")
    return url


@contextmanager
def _socket_timeout(seconds: float):
    """Every socket opened inside waits at most `seconds` for a byte; the previous default after."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _stalled(exc: OSError) -> bool:
    """A timeout, raised as is or wrapped by urllib (while connecting)?"""
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def fetch_cifar10(root: Path) -> None:
    """Download the archive (official or $CIFAR10_URL; md5 checked by torchvision) and unpack it safely."""
    url, filename = archive_url(), ARCHIVE_NAME
    _writable_folder(root)
    try:
        with _socket_timeout(DOWNLOAD_STALL_SECONDS):
            download_url(url, str(root), filename, ARCHIVE_MD5)
    except OSError as exc:
        if _stalled(exc):
            raise _error(root, f"The download of {url} stalled: no data came for "
                               f"{DOWNLOAD_STALL_SECONDS:g} s", HOW_TO_GET_AROUND_A_STALL) from exc
        if not isinstance(exc, urllib.error.URLError) and exc.errno in DISK_ERRNOS:
            raise _error(root, f"The download of {url} could not be written into {root} "
                               f"({exc.strerror})", HOW_TO_WRITE) from exc
        raise _error(root, f"CIFAR-10 is not at {root / FOLDER}, and downloading it from {url} "
                           f"failed ({exc}): this machine seems to be offline",
                     HOW_TO_GET_IT.replace("pass download=True", "run again with download=True")) from exc
    except RuntimeError as exc:  # torchvision: "File not found or corrupted."
        raise _error(root, f"The download of {url} into {root} failed its md5 check "
                           f"({exc})") from exc
    # The "data" filter refuses absolute paths, links out of root and device
    # files: an archive cannot write outside the data folder.
    try:
        with tarfile.open(root / filename, "r:gz") as archive:
            archive.extractall(root, filter="data")
    except tarfile.FilterError as exc:
        raise _error(root, f"{root / filename} is unsafe: {exc}; nothing outside {root} "
                           "was written") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise _error(root, f"{root / filename} does not unpack ({exc})") from exc
    except OSError as exc:
        raise _error(root, f"{root / filename} could not be unpacked into {root} "
                           f"({exc.strerror})", HOW_TO_WRITE) from exc


# --------------------------------------------------------------------------
# Unpickling data, never code
# --------------------------------------------------------------------------

def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as Python 3 uses it to pickle bytes at protocols 0-2, and nothing else."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode to {encoding!r}")
    return text.encode("latin1")


def _numpy_rebuilders() -> dict[tuple[str, str], object]:
    """The functions numpy's pickles of arrays and numbers call, under numpy 1's module
    names (numpy.core) and numpy 2's (numpy._core). Taken from numpy's own reductions, so
    that neither module has to be imported by name."""
    rebuilders = {"multiarray": {"_reconstruct": np.zeros(0).__reduce__()[0],
                                 "scalar": np.int64(0).__reduce__()[0]},
                  "numeric": {"_frombuffer": np.zeros(1).__reduce_ex__(5)[0]}}
    return {(f"numpy.{core}.{module}", name): function
            for core in ("core", "_core") for module, functions in rebuilders.items()
            for name, function in functions.items()}


# All a CIFAR-10 file may name. The official files (Python 2, numpy 1) name
# _reconstruct, ndarray and dtype; files pickled since may name numpy's number
# and buffer rebuilders, and _codecs.encode for bytes at protocols 0-2.
DATA_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                ("_codecs", "encode"): _latin1_bytes, **_numpy_rebuilders()}


class _NotData(pickle.UnpicklingError):
    """A pickle named a Python object outside DATA_GLOBALS; the message is its name."""


class _NotFromFile(pickle.UnpicklingError):
    """A pickle declared an array (or number) whose contents its file does not hold; the message says how."""


class DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR-10's files hold (dicts, lists, text, numbers, numpy arrays), nothing else.

    A pickle may name any importable function for the loader to call, so a
    data folder someone else filled could run code as soon as it is read;
    this one looks names up in DATA_GLOBALS only, and never imports.

    Even numpy's own constructors would allocate whatever a pickle declares:
    `numpy.ndarray((150000, 3072))` in a 145-byte file asks for 460 MB of
    uninitialized memory. So every array and number must fit in `file_size`
    bytes (the file's own size), and its contents must come from the file.
    """

    def __init__(self, file, *, file_size: int, **kwargs):
        super().__init__(file, **kwargs)
        self.file_size = file_size

    def find_class(self, module: str, name: str):
        if (module, name) in DATA_GLOBALS:
            return self._sized.get(name, DATA_GLOBALS[module, name])
        if not all(part.isidentifier() for part in f"{module}.{name}".split(".")):
            raise pickle.UnpicklingError(f"no Python name: {module!r} {name!r}")  # damage, not code
        # Named as Python 3 knows it: pickles below protocol 3 say __builtin__ for builtins.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        raise _NotData(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}")

    @property
    def _sized(self) -> dict[str, object]:
        """numpy's allocating constructors, each checked against the file's size first."""
        return {"ndarray": self._array, "_reconstruct": self._reconstruct, "scalar": self._scalar}

    def _check_fits(self, shape: tuple, dtype) -> None:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes > self.file_size:
            raise _NotFromFile(f"declares an array of shape {shape} ({nbytes:,} bytes), more than its "
                               f"{self.file_size:,} bytes could hold; it was refused before anything was allocated")

    def _refuse_unfilled(self, shape: tuple, dtype) -> None:
        """An array not built over the file's bytes would hold uninitialized memory, not pixels."""
        self._check_fits(shape, dtype)
        if math.prod(shape):
            raise _NotFromFile(f"declares an array of shape {shape} without its contents: "
                               "the file holds no pixels for it")

    def _array(self, shape, dtype=float, buffer=None, offset=0, strides=None, order=None) -> np.ndarray:
        """numpy.ndarray called by a pickle: only over a buffer the file holds."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if buffer is None:
            self._refuse_unfilled(shape, dtype)
        self._check_fits(shape, dtype)
        return np.ndarray(shape, dtype, buffer, offset, strides, order)

    def _reconstruct(self, subtype, shape, dtype) -> np.ndarray:
        """numpy's _reconstruct: numpy pickles an empty array, then fills it from the file (BUILD)."""
        if subtype != self._array:  # a bound method: equal each time, never the same object
            raise pickle.UnpicklingError(f"_reconstruct of {subtype!r}, not numpy.ndarray")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self._refuse_unfilled(shape, dtype)
        return DATA_GLOBALS["numpy.core.multiarray", "_reconstruct"](np.ndarray, shape, dtype)

    def _scalar(self, dtype, *contents):
        """numpy's scalar rebuilder: a number no larger than the file."""
        self._check_fits((), dtype)
        return DATA_GLOBALS["numpy.core.multiarray", "scalar"](dtype, *contents)


def _read_pickle(path: Path, root: Path):
    if not path.exists():
        raise _error(root, f"CIFAR-10 at {path.parent} is incomplete: {path.name} is missing")
    if not path.is_file():  # a folder, a pipe or a device (a link to /dev/zero would never end)
        raise _error(root, f"{path} is not a regular file")
    try:
        with open(path, "rb") as fh:
            return DataOnlyUnpickler(fh, file_size=os.fstat(fh.fileno()).st_size, encoding="latin1").load()
    except _NotFromFile as exc:
        raise _error(root, f"{path} {exc}") from None
    except _NotData as exc:
        raise _error(root, f"{path} is not plain data: it asks for the Python object {exc}, "
                           "which no CIFAR-10 file holds and which could run code; it was refused, "
                           "so nothing in it ran") from None
    except OSError as exc:
        raise _error(root, f"{path} cannot be read ({exc.strerror or exc})", HOW_TO_READ) from exc
    except Exception as exc:  # pickle raises many types on damaged input
        raise _error(root, f"{path} is truncated or corrupted (it does not unpickle: "
                           f"{type(exc).__name__}: {exc})") from exc


def _text(value):
    """A name or key as text: Python 2's strings arrive as text (latin1), Python 3's bytes do not."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _read_meta(folder: Path, root: Path) -> dict:
    """batches.meta, with its label_names checked to be a list of two or more distinct names."""
    path = folder / META_FILE
    meta = _read_pickle(path, root)
    meta = {_text(key): value for key, value in meta.items()} if isinstance(meta, dict) else {}
    names = meta.get("label_names")
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(name, (str, bytes)) for name in names)):
        raise _error(root, f"{path} is not CIFAR-10's {META_FILE} (it needs label_names: a "
                           "list of two or more class names)")
    names = [_text(name) for name in names]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise _error(root, f"{path} names the class {twice!r} twice", HOW_TO_NAME_CLASSES)
    return {**meta, "label_names": names}


# --------------------------------------------------------------------------
# Loading into tensors
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """One split as tensors: images uint8 (N, 3, 32, 32), labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class CIFAR10Data:
    """Both splits, the class names, and where they came from."""

    train: Split
    test: Split
    classes: tuple[str, ...]
    folder: Path
    official: bool  # md5 sums equal the official release's
    fingerprint: str  # md5 over the files' md5 sums: names the exact copy
    synthetic: bool = False  # a stand-in written by write_synthetic_cifar10, not CIFAR-10

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _read_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path, root)

    def not_a_batch(why: str) -> CIFAR10DataError:
        return _error(root, f"{path} is not a CIFAR-10 batch ({why})")

    if not isinstance(entry, dict):
        raise not_a_batch(f"it holds an object of type {type(entry).__name__}, not a dict of "
                          "'data' and 'labels'")
    entry = {_text(key): value for key, value in entry.items()}
    try:
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: lists of uneven length
        raise not_a_batch(f"no 'data' and 'labels': {exc!r}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE or labels.shape != (len(data),):
        raise not_a_batch(f"data of shape {data.shape} for labels of shape {labels.shape}; "
                          "expected (N, 3072) and (N,)")
    if data.dtype.kind not in "ui" or (data.dtype != np.uint8 and data.size
                                       and (data.min() < 0 or data.max() > 255)):
        raise not_a_batch(f"its pixels are not whole numbers 0 to 255 (they load as {data.dtype})")
    if labels.size and labels.dtype.kind not in "ui":  # 1.7 would become class 1 unseen
        raise not_a_batch(f"its labels are not class numbers 0, 1, ... (they load as {labels.dtype})")
    largest = np.iinfo(np.int64).max
    if labels.dtype == np.uint64 and labels.size and labels.max() > largest:
        # Named as stored: the cast to int64 below would wrap it around to a negative number.
        raise not_a_batch(f"its label {int(labels[labels > largest][0])} is not a class number 0, 1, ...")
    return (data.astype(np.uint8, copy=False).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE),
            labels.astype(np.int64, copy=False))


def _read_split(folder: Path, names: list[str], root: Path) -> Split:
    parts = [_read_batch(folder / name, root) for name in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Split(images, labels)


def load_cifar10(root: str | os.PathLike | None = None, download: bool = False) -> CIFAR10Data:
    """Both splits of CIFAR-10 as uint8 tensors, read from disk once per process.

    A copy whose md5 sums differ from the official ones (such as the
    JPEG-derived copy built offline) loads with one UnofficialCopyWarning.
    Anything missing or damaged raises CIFAR10DataError naming the path.
    """
    folder = find_cifar10(root, download).resolve()
    stamp = tuple((folder / n).stat().st_mtime_ns if (folder / n).exists() else None
                  for n in OFFICIAL_MD5)
    return _load_folder(folder, resolve_data_root(root), stamp)


def _check_classes(classes: tuple[str, ...], train: Split, test: Split, folder: Path,
                   root: Path) -> None:
    """Every label has a name, every name has training images: else a model of the wrong
    width would train, or a subset would fail blaming its own size."""
    meta = folder / META_FILE
    for split, name in ((train, "training"), (test, "test")):
        if not len(split):
            raise _error(root, f"The {name} batches in {folder} hold no images")
        unnamed = split.labels[(split.labels < 0) | (split.labels >= len(classes))]
        if len(unnamed):
            raise _error(root, f"{meta} names {len(classes)} classes (labels 0 to "
                               f"{len(classes) - 1}), but the {name} batches hold label "
                               f"{int(unnamed[0])}", HOW_TO_NAME_CLASSES)
    counts = torch.bincount(train.labels, minlength=len(classes))
    empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise _error(root, f"{meta} names {len(classes)} classes, but the training batches hold "
                           f"images of {len(classes) - len(empty)} of them: none of "
                           f"{', '.join(map(repr, empty))}", HOW_TO_NAME_CLASSES)


@lru_cache(maxsize=4)
def _load_folder(folder: Path, root: Path, _stamp: tuple) -> CIFAR10Data:
    meta = _read_meta(folder, root)  # first: the smallest file, and a refused one stops here
    classes = tuple(meta["label_names"])
    train = _read_split(folder, TRAIN_FILES, root)
    test = _read_split(folder, TEST_FILES, root)
    _check_classes(classes, train, test, folder, root)
    sums = {name: calculate_md5(str(folder / name)) for name in OFFICIAL_MD5}
    differing = [name for name, md5 in sums.items() if md5 != OFFICIAL_MD5[name]]
    if differing:
        warnings.warn(
            # Named as the user set it (root unresolved), as setup()'s line names it: a data/
            # that links elsewhere still reads data/cifar-10-batches-py.
            f"CIFAR-10 at {shown_path(root / FOLDER)} is not the official release: the md5 sums of "
            f"{', '.join(differing)} differ. Loading it anyway; a rebuilt copy (such as "
            "the JPEG-derived one) gives accuracies comparable to, not identical with, "
            "published ones.", UnofficialCopyWarning, stacklevel=3)
    fingerprint = hashlib.md5("".join(sums[n] for n in sorted(sums)).encode()).hexdigest()
    return CIFAR10Data(train, test, classes, folder, not differing, fingerprint,
                       bool(meta.get("synthetic")))


# --------------------------------------------------------------------------
# Subsets and a validation split
# --------------------------------------------------------------------------

def balanced_indices(labels: torch.Tensor, n: int, num_classes: int,
                     name: str = "the subset") -> torch.Tensor:
    """Indices of the first `n` images with every class equally represented.

    Each class gives its first n // num_classes images in file order (the first
    n % num_classes classes one more), so a subset is the same on every run.
    Fewer than one image per class, or more than a class holds, raises
    ConfigError naming `name` (the parameter that asked for the subset).
    """
    if not num_classes <= n <= len(labels):
        raise ConfigError(f"{name}={n} is not possible: it must be from {num_classes} (one image "
                          f"per class) to {len(labels):,} (all of them), or 0 for all")
    chosen = []
    for cls in range(num_classes):
        want = n // num_classes + (cls < n % num_classes)
        have = torch.nonzero(labels == cls).flatten()
        if len(have) < want:
            raise ConfigError(f"{name}={n} is not possible: class {cls} has only {len(have)} "
                              f"images, and a balanced subset of {n} needs {want}")
        chosen.append(have[:want])
    return torch.cat(chosen).sort().values


def split_validation(train: Split, val_size: int, num_classes: int) -> tuple[Split, Split]:
    """Carve a class-balanced validation split off the end of the training split."""
    from_end = balanced_indices(train.labels.flip(0), val_size, num_classes, "val_size")
    val_idx = (len(train) - 1 - from_end).sort().values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_idx] = False
    return train.subset(torch.nonzero(keep).flatten()), train.subset(val_idx)


@dataclass(frozen=True)
class Splits:
    """The splits a run trains and measures on, after subsets and validation."""

    train: Split
    val: Split | None
    test: Split
    classes: tuple[str, ...]
    fingerprint: str


def prepare_splits(data: CIFAR10Data, train_subset: int = 0, test_subset: int = 0,
                   val_size: int = 0) -> Splits:
    """Apply the quick-run subsets (0 = all) and carve an optional validation split."""
    train, test = data.train, data.test
    if train_subset:
        train = train.subset(balanced_indices(train.labels, train_subset, data.num_classes,
                                              "train_subset"))
    if test_subset:
        test = test.subset(balanced_indices(test.labels, test_subset, data.num_classes,
                                            "test_subset"))
    val = None
    if val_size:
        if val_size >= len(train):
            raise ConfigError(f"val_size={val_size} leaves no training images out of "
                              f"{len(train):,}; choose a smaller val_size")
        train, val = split_validation(train, val_size, data.num_classes)
    return Splits(train, val, test, data.classes, data.fingerprint)


# --------------------------------------------------------------------------
# Augmentation and normalization, on whole batches
# --------------------------------------------------------------------------

def crop_and_flip(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  flip: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Cut a size x size window at (top, left) out of each padded image, mirrored where flip.

    One gather replaces a Python loop over images: in a flattened padded
    plane, pixel (row, col) sits at row * width + col, and a mirrored window
    simply reads its columns right to left.
    """
    batch, channels, height, width = padded.shape
    steps = torch.arange(size, device=padded.device)
    rows = top.view(-1, 1) + steps                                               # (B, size)
    cols = left.view(-1, 1) + torch.where(flip.view(-1, 1), size - 1 - steps, steps)
    where = (rows.view(batch, size, 1) * width + cols.view(batch, 1, size)).view(batch, 1, -1)
    planes = padded.reshape(batch, channels, height * width)
    return planes.gather(2, where.expand(batch, channels, size * size)).view(batch, channels, size, size)


def draw_crops(count: int, generator: torch.Generator | None = None,
               spread: int = 2 * PAD + 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (top, left, flip) for `count` images: offsets 0..spread-1, flips with p=0.5."""
    top = torch.randint(spread, (count,), generator=generator)
    left = torch.randint(spread, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    return top, left, flip


def random_crop_flip(padded: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The seed's augmentation: a random crop of the padded image, flipped with p=0.5."""
    spread = padded.shape[-1] - IMAGE_SIZE + 1  # 9 offsets per axis for 4-pixel padding
    crops = draw_crops(len(padded), generator, spread)
    return crop_and_flip(padded, *(t.to(padded.device) for t in crops))


def pad_images(images: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Zero-pad every image by `pad` pixels, once, before any crop is cut."""
    return torch.nn.functional.pad(images, (pad, pad, pad, pad))


@lru_cache(maxsize=8)
def _scale_shift(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """normalize as x * scale + shift, per channel: scale = 1 / (255 std), shift = -mean / std.

    Made once per device: a fresh host tensor per batch would mean a
    host-to-device copy, and a stall, at every step.
    """
    mean = torch.tensor(MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=device).view(1, -1, 1, 1)
    return 1 / (255 * std), -mean / std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the seed's float input: ToTensor (x / 255), then (x - mean) / std.

    One fused multiply-add over the batch instead of four passes; the result
    differs from torchvision's by at most a rounding step.
    """
    scale, shift = _scale_shift(images.device)
    return torch.addcmul(shift, images.float(), scale)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize`, as floats in 0..1, ready for imshow."""
    scale, shift = _scale_shift(images.device)
    return ((images - shift) / (255 * scale)).clamp(0, 1)


class CifarLoader:
    """Batches of one split, cut from uint8 tensors that live on the device.

    With `train=True` the order is shuffled and every image is randomly
    cropped and flipped; both are drawn from a generator seeded by
    (seed, epoch), so epoch 7 of a resumed run sees exactly the batches of
    an uninterrupted one. Call `set_epoch` before each epoch.

    Like the seed's DataLoader, the last, smaller batch is kept, except when it
    would hold a single image, which training-mode BatchNorm cannot use.
    """

    def __init__(self, split: Split, batch_size: int, *, train: bool,
                 device: torch.device | str = "cpu", seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.device = torch.device(device)
        self.labels = split.labels.to(self.device)
        # Padding once costs 56% more memory and saves a copy per batch.
        self.images = pad_images(split.images).to(self.device) if train else split.images.to(self.device)
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (rest > 1 or (rest == 1 and not self.train))

    def __iter__(self):
        count = len(self.labels)
        if self.train:
            # The whole epoch's randomness is drawn here and sent to the device
            # in one go: per-batch draws would copy from the host at every step.
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(count, generator=generator).to(self.device)
            top, left, flip = (t.to(self.device) for t in draw_crops(count, generator))
        else:
            order = torch.arange(count, device=self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images.index_select(0, index)  # far faster than images[index] on a CPU
            if self.train:
                window = slice(start, start + self.batch_size)
                images = crop_and_flip(images, top[window], left[window], flip[window])
            yield normalize(images), self.labels.index_select(0, index)


# --------------------------------------------------------------------------
# A small synthetic CIFAR-10, for tests that must run anywhere
# --------------------------------------------------------------------------

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
# The synthetic stand-in's classes: a colour and a stripe direction each. Its
# own names, so that no figure or log can pass it off as CIFAR-10.
SYNTHETIC_ANGLES = tuple(range(0, 180, 18))
SYNTHETIC_CLASS_NAMES = tuple(f"stripes {angle}°" for angle in SYNTHETIC_ANGLES)


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images a small network can tell apart: a colour and a stripe direction per class."""
    count = len(labels)
    # Fixed per class, whatever `rng`: every batch and split must agree on what a class looks like.
    palette = np.random.default_rng(10).integers(40, 216, size=(len(SYNTHETIC_ANGLES), 3, 1, 1))
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    stripes = np.stack([np.sin((yy * np.cos(a) + xx * np.sin(a)) * 0.8)
                        for a in np.radians(SYNTHETIC_ANGLES)])
    images = palette[labels] + 30 * stripes[labels][:, None] + rng.normal(0, 20, (count, 3, 32, 32))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_synthetic_cifar10(root: str | os.PathLike, train_per_class: int = 50,
                            test_per_class: int = 10, seed: int = 0) -> Path:
    """Write a small synthetic stand-in in CIFAR-10's python-batch layout.

    Five training batches, one test batch and batches.meta, pickled with the
    keys and dtypes of the official files, so the real loader reads it. Its
    classes are stripe patterns with names of their own, and batches.meta
    says `synthetic: True`, so that it is never shown as CIFAR-10. The md5
    sums are not official: loading it gives an UnofficialCopyWarning.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def dump(obj: dict, name: str) -> None:
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)

    def batch(labels: np.ndarray, title: str) -> dict:
        data = synthetic_images(labels, rng).reshape(len(labels), -1)
        return {"batch_label": title, "labels": labels.tolist(), "data": data,
                "filenames": [f"synthetic_{i:05d}.png" for i in range(len(labels))]}

    train_labels = rng.permutation(np.repeat(np.arange(len(SYNTHETIC_ANGLES)), train_per_class))
    for number, part in enumerate(np.array_split(train_labels, len(TRAIN_FILES)), start=1):
        dump(batch(part, f"training batch {number} of 5"), f"data_batch_{number}")
    test_labels = rng.permutation(np.repeat(np.arange(len(SYNTHETIC_ANGLES)), test_per_class))
    dump(batch(test_labels, "testing batch 1 of 1"), TEST_FILES[0])
    dump({"num_cases_per_batch": len(train_labels) // 5, "num_vis": 3072,
          "label_names": list(SYNTHETIC_CLASS_NAMES), "synthetic": True}, META_FILE)
    return folder
