"""Lock files for folders medadapt writes (saves, training output dirs).

Two advisory locks (``fcntl.flock``) live in the folder as hidden files:

* ``.medadapt.lock`` — the **writer lock**, held for a whole save or a whole training run. A second
  writer gets :class:`~medadapt.errors.SaveLockedError` at once, naming the holder (pid, host,
  command, since when). The kernel drops a flock when its process dies, so a lock left by a crashed
  or killed process is stale by construction: the next writer takes it (and says so in the log).
* ``.medadapt.snapshot.lock`` — the **snapshot lock**: readers hold it shared while they read a
  manifest and its files, a writer holds it exclusively only while it swaps folders and writes the
  new manifest (milliseconds). A reader therefore always sees one complete save, old or new.

A thread that already holds a folder's writer lock may take it again (a training run saving its
stages into the output dir it locked). On platforms or filesystems without ``flock`` the locks
degrade to no-ops with a warning.

A folder may come from someone else, so a lock file is opened with ``O_NOFOLLOW`` and ``O_NONBLOCK``
and used only when it is a regular file: a symlink (which a writer would otherwise truncate at its
target), a FIFO (which would block forever) or a folder is refused with
:class:`~medadapt.errors.UnsafeFolderError`. Readers never create a lock file. What a lock file holds
is only a description: an unreadable, too deeply nested or nonsensical one (``{"pid": "abc"}``) is
reported as an unknown holder and never blocks a save.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ._io import loads_json, open_regular_nofollow, read_small_json_nofollow
from .errors import SaveLockedError, UnsafeFolderError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".medadapt.lock"
SNAPSHOT_LOCK_NAME = ".medadapt.snapshot.lock"
LOCK_FILES = (LOCK_NAME, SNAPSHOT_LOCK_NAME)

_GUARD = threading.Lock()
_HELD: dict[str, tuple[int, int, int]] = {}  # realpath -> (fd, owning thread id, depth)
_warned = False


def _warn_unsupported(exc: BaseException | None) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("file locks are not supported here (%s); concurrent writers are not detected.", exc or "no fcntl")


MAX_PID = 1 << 22  # Linux's pid_max limit; a larger "pid" in a lock file is not one


def _holder_pid(info: Any) -> int | None:
    """The pid a lock file records, or None when it records none that could be real."""
    pid = info.get("pid") if isinstance(info, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        return None
    return pid


def _parse_holder(raw: bytes) -> dict[str, Any]:
    """What a lock file's bytes describe; anything unreadable is an empty description."""
    try:
        info = loads_json(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(folder: str | os.PathLike) -> str:
    """Who holds (or last held) ``folder``'s writer lock, from what the holder wrote into the lock file."""
    try:
        info = read_small_json_nofollow(Path(folder) / LOCK_NAME, max_bytes=1 << 16)
    except (OSError, ValueError):
        return "unknown process"
    pid = _holder_pid(info)
    if pid is None:
        return "unknown process"
    text = lambda key, default="?": str(info.get(key, default))[:300]  # noqa: E731 - a lock file is untrusted text
    return f"pid {pid} on {text('host')}, {text('what', 'writing')} since {text('since')}, command: {text('command')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def open_lock_file(path: Path, create: bool) -> int:
    """A descriptor on the lock file ``path`` (read-write and created when ``create``, else read-only).

    Raises :class:`UnsafeFolderError` when ``path`` is a symlink, FIFO, device or folder, and
    ``FileNotFoundError`` when it is missing and not created.
    """
    flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    try:
        return open_regular_nofollow(path, flags, 0o666)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.EINVAL, errno.ENXIO, errno.EMLINK):
            raise UnsafeFolderError(
                f"{path} is not a regular file (a symlink, FIFO, device or folder): medadapt's lock files are plain "
                "files, and it neither follows nor opens anything else there. This folder may have been tampered "
                f"with; nothing was changed. If the folder is yours, remove {path.name} by hand."
            ) from exc
        raise


@contextmanager
def writer_lock(folder: str | os.PathLike, what: str = "saving") -> Iterator[None]:
    """Hold ``folder``'s writer lock for the block; raises SaveLockedError naming the holder if taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    me = threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held[1] == me:
            _HELD[key] = (held[0], me, held[2] + 1)
            reentered = True
        elif held is not None:
            raise SaveLockedError(f"{folder} is being written by another thread of this process ({what}); wait for it.")
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _GUARD:
                fd, owner, depth = _HELD[key]
                _HELD[key] = (fd, owner, depth - 1)
        return
    path = folder / LOCK_NAME
    fd = open_lock_file(path, create=True)
    locked = fcntl is not None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SaveLockedError(
                    f"{folder} is locked by another writer ({describe_holder(folder)}). Two processes must not write "
                    "the same save folder or output_dir: wait for it to finish, or pick another folder. (A lock left "
                    "by a process that crashed is released automatically.)"
                ) from None
            except OSError as exc:  # filesystem without flock support
                locked = False
                _warn_unsupported(exc)
        else:  # pragma: no cover
            _warn_unsupported(None)
        _record_holder(fd, folder, what)
    except BaseException:
        os.close(fd)
        raise
    with _GUARD:
        _HELD[key] = (fd, me, 1)
    try:
        yield
    finally:
        with _GUARD:
            _HELD.pop(key, None)
        if locked:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        os.close(fd)  # releases the flock


def _record_holder(fd: int, folder: Path, what: str) -> None:
    try:
        previous = _parse_holder(os.pread(fd, 4096, 0))
    except OSError:
        previous = {}
    pid = _holder_pid(previous)
    if pid is not None and pid != os.getpid():
        state = "not running" if not _pid_alive(pid) else "no longer holding it"
        logger.info("took over a stale lock on %s left by pid %s (%s)", folder, pid, state)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:300],
        "what": what,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    except OSError:  # the lock still holds; only the description is missing
        pass


@contextmanager
def snapshot_lock(folder: str | os.PathLike, exclusive: bool) -> Iterator[None]:
    """Shared (readers) or exclusive (a writer swapping folders) hold on ``folder``'s snapshot lock.

    Readers never create the lock file (a Hub cache snapshot or a read-only folder stays untouched);
    without the file there is no writer to wait for. A lock file that is not a regular file raises
    :class:`UnsafeFolderError` (for readers too: a FIFO would otherwise block every load).
    """
    path = Path(folder) / SNAPSHOT_LOCK_NAME
    fd = None
    try:
        fd = open_lock_file(path, create=exclusive)
    except UnsafeFolderError:
        raise
    except OSError:
        if exclusive:
            raise
    if fd is None or fcntl is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as exc:
            if isinstance(exc, InterruptedError):
                raise
            _warn_unsupported(exc)
        yield
    finally:
        os.close(fd)
