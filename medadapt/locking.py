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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import SaveLockedError

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


def describe_holder(folder: str | os.PathLike) -> str:
    """Who holds (or last held) ``folder``'s writer lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "unknown process"
    if not isinstance(info, dict) or "pid" not in info:
        return "unknown process"
    return (
        f"pid {info.get('pid')} on {info.get('host')}, {info.get('what', 'writing')} since {info.get('since')}, "
        f"command: {info.get('command')}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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
        previous = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        previous = {}
    if isinstance(previous, dict) and previous.get("pid") and previous.get("pid") != os.getpid():
        state = "not running" if not _pid_alive(int(previous["pid"])) else "no longer holding it"
        logger.info("took over a stale lock on %s left by pid %s (%s)", folder, previous["pid"], state)
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
    without the file there is no writer to wait for.
    """
    path = Path(folder) / SNAPSHOT_LOCK_NAME
    fd = None
    try:
        if exclusive:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        else:
            fd = os.open(path, os.O_RDONLY)
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
