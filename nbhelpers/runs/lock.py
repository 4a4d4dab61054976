"""One process at a time in a folder: an exclusive lock that dies with its process.

`fit` (notebook 03) holds its run folder's lock while it trains; a sweep
(nbhelpers.jobs.sweep, notebooks 05 and 06) holds each entry's.

A run folder (and a sweep's entry folder) is written by one process only. Two
trainings in one folder, or two resumes of one run, would each overwrite the
other's checkpoint. So whoever writes a folder first takes its lock:

    with folder_lock(run_dir, "run"):     # FolderInUse if another process holds it
        ...                               # check, train, write

The lock is the operating system's (flock on Linux and macOS, msvcrt's byte
lock on Windows) on a small file, `.lock`, inside the folder. The kernel
drops it when the process ends, however it ends (kill -9 included), so a
lock is never stale and never needs cleaning up; the file itself stays and
names the last holder. On a cluster the folders must lie on a filesystem
whose locks every node sees (NFSv4, or NFSv3 with lockd; Lustre mounted
with `-o flock`): otherwise two nodes each get "the" lock.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import IO, Iterator

from ..errors import ExplainedError

__all__ = ["LOCK", "FolderInUse", "FolderNotWritable", "holder_of", "folder_lock",
           "check_not_in_use", "is_locked"]

LOCK = ".lock"  # inside the locked folder; not a file of the run

try:
    import fcntl

    def _try_lock(fh: IO) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError if held elsewhere

    def _try_shared_lock(fh: IO) -> None:
        # A shared lock conflicts only with a holder's exclusive one, and needs a file open for
        # reading only (on NFS too, where flock is a byte-range lock that checks the open mode).
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)

    def _unlock(fh: IO) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
except ImportError:  # Windows
    import msvcrt

    def _try_lock(fh: IO) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    _try_shared_lock = _try_lock  # msvcrt has no shared lock; its byte lock needs only read access

    def _unlock(fh: IO) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)


class FolderInUse(ExplainedError, RuntimeError):
    """Another process holds the folder's lock: it is training (or resuming) there right now."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


class FolderNotWritable(ExplainedError, OSError):
    """The folder cannot be made, or its lock file cannot be written (or, to check it, read)."""


def holder_of(folder: Path) -> str:
    """Who holds (or last held) the folder's lock: "host h, pid 123, since 2026-11-30 10:15:02"."""
    try:
        return (Path(folder) / LOCK).read_text().strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "folder") -> Iterator[None]:
    """Hold `folder`'s lock inside the `with` (creating the folder); FolderInUse if it is held.

    `what` names the folder in the message ("run folder", "sweep entry").
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only disk, a folder of someone else's, a file in the way
        raise FolderNotWritable(f"The {what} {folder} cannot be created or written "
                                f"({exc.strerror or exc}): use a folder you can write.") from None
    try:
        # "a" creates the file without truncating what the holder wrote into it.
        handle = open(folder / LOCK, "a+")
    except OSError as exc:  # a read-only disk, a lock file of someone else's, a folder named .lock
        raise FolderNotWritable(
            f"The {what} {folder} cannot be written: its lock file {folder / LOCK} cannot be opened "
            f"for writing ({exc.strerror or exc}). Make {LOCK} a file you can write (it only names "
            "the last process there), or use another folder.") from None
    try:
        _try_lock(handle)
    except OSError:
        handle.close()
        raise _in_use(folder, what) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        _unlock(handle)
        handle.close()


def _in_use(folder: Path, what: str) -> FolderInUse:
    holder = holder_of(folder)
    return FolderInUse(f"The {what} {folder} is in use: {holder} is running there now. Wait "
                       "until it ends, or use another folder.", holder)


def check_not_in_use(folder: Path, what: str = "folder") -> None:
    """FolderInUse if another process holds `folder`'s lock now (a check only: nothing is locked)."""
    if is_locked(folder):
        raise _in_use(Path(folder), what)


def is_locked(folder: Path) -> bool:
    """Is another process holding `folder`'s lock right now? (Never creates or writes anything.)

    It only reads: the lock file is opened for reading and probed with a shared
    lock, so this works on a read-only disk and on a lock file of someone else's.
    """
    path = Path(folder) / LOCK
    if not path.is_file():
        return False
    try:
        handle = open(path)
    except OSError as exc:  # not even readable: whether a process holds it cannot be told
        raise FolderNotWritable(f"{path} cannot be read ({exc.strerror or exc}), so whether a "
                                f"process is using {Path(folder)} cannot be told. Make it readable, "
                                "or use another folder.") from None
    with handle:
        try:
            _try_shared_lock(handle)
        except OSError:
            return True
        _unlock(handle)
        return False
