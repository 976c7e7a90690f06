"""Atomic file writes and hashing helpers shared by every writer in medadapt."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import StorageError

MAX_JSON_DEPTH = 64  # no medadapt file nests deeper than ~6 levels; deeper means a hostile or broken file
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class JSONTooDeepError(json.JSONDecodeError):
    """A JSON document nested deeper than :data:`MAX_JSON_DEPTH` (refused before Python's parser recurses)."""

    def __init__(self, max_depth: int) -> None:
        message = f"JSON nested deeper than {max_depth} levels; refused (not a file medadapt wrote)"
        ValueError.__init__(self, message)
        self.msg, self.doc, self.pos, self.lineno, self.colno = message, "", 0, 1, 1

    def __reduce__(self) -> tuple:  # pragma: no cover - pickling an exception across processes
        return (self.__class__, (MAX_JSON_DEPTH,))


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that first refuses documents nested deeper than ``max_depth`` (a RecursionError otherwise).

    Raises ``json.JSONDecodeError`` (a ValueError) for malformed and for too-deep documents alike.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONTooDeepError(max_depth)
        else:
            depth -= 1
    try:
        return json.loads(text)
    except RecursionError:  # e.g. a depth hidden by an unterminated string; never a raw RecursionError
        raise JSONTooDeepError(max_depth) from None


def read_json_file(path: str | os.PathLike, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON file with :func:`loads_json` (OSError / ValueError / UnicodeDecodeError on failure)."""
    return loads_json(Path(path).read_text(encoding="utf-8"), max_depth)


def open_regular_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """Open ``path`` without following a symlink and without blocking (a FIFO), and only if it is a regular file.

    Returns the file descriptor; raises ``OSError`` (``ELOOP`` for a symlink; :class:`StorageError`, an
    ``OSError`` with ``EINVAL``, for a FIFO, device, socket or folder). ``O_NONBLOCK`` is dropped again once the file is known to be regular.
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | nofollow | nonblock, mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(errno.EINVAL, "not a regular file (a folder, FIFO, device or socket)", str(path))
        if nonblock and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_json_nofollow(path: str | os.PathLike, max_bytes: int = 1 << 20) -> Any:
    """A small JSON file read through :func:`open_regular_nofollow` (no symlink, FIFO or device is ever read).

    Raises ``FileNotFoundError`` when missing, ``OSError`` when not a regular file or larger than
    ``max_bytes``, ``ValueError`` when it is not (depth-limited) JSON.
    """
    fd = open_regular_nofollow(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise StorageError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    return loads_json(data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_file_permissions(folder: str | os.PathLike) -> None:
    """Give every regular file under ``folder`` the usual permissions (0666 minus the umask).

    Some writers (safetensors, transformers) create files through private temporary files (0600);
    a save's files should all be readable like any other file the user writes.
    """
    mode = 0o666 & ~_umask()
    for dirpath, _dirs, filenames in os.walk(folder, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, mode)


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN/infinite float replaced by ``None`` (so it serialises as strict JSON)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted, strict JSON atomically: NaN/infinite numbers become ``null``
    (strict parsers reject the ``NaN`` token). Writers that can say why a value is undefined do so first
    (e.g. the trainer's ``null_reasons`` in results.json)."""
    data = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (data + "\n").encode("utf-8"))


def recover_directory_swap(target: str | os.PathLike) -> None:
    """Tidy what a killed :func:`atomic_directory` left beside ``target``: unfinished new folders go; a parked
    old folder is put back when ``target`` is missing (killed between the two renames), else removed.

    Only call it while no other process writes ``target`` (e.g. holding the output dir's writer lock)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    parked = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for old in reversed(parked):
        if not target.exists() and (old / "d").is_dir():
            os.replace(old / "d", target)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    If the body raises (or the process dies), ``target`` is left exactly as it was and the
    temporary folder (named ``.<name>.tmp-*``) is removed or left behind, never mistaken for a save.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory_swap(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "d")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_ERRNO_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write somewhere else",
    errno.EROFS: "the folder is on a read-only filesystem: pick a writable folder",
    errno.EACCES: "permission denied: pick a folder you can write to",
    errno.EPERM: "permission denied: pick a folder you can write to",
    errno.ENAMETOOLONG: "a file name is too long: use shorter domain / adapter names",
}


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn OS-level write failures (disk full, read-only, permissions) into a clear StorageError.

    medadapt errors pass through unchanged; so does anything that is not an OSError or a safetensors error.
    """
    from safetensors import SafetensorError

    from .errors import MedAdaptError, StorageError

    try:
        yield
    except MedAdaptError:
        raise
    except OSError as exc:
        advice = _ERRNO_ADVICE.get(exc.errno or -1, "check the folder and the disk")
        where = f" ({exc.filename})" if exc.filename else ""
        error = StorageError(f"{what}: {exc.strerror or exc}{where}; {advice}. Any previous save there is intact.")
        error.errno = exc.errno
        raise error from exc
    except SafetensorError as exc:
        text = str(exc)
        hint = "the disk is probably full or read-only" if "os error" in text.lower() or "No space" in text else "check the folder and the disk"
        raise StorageError(f"{what}: writing a safetensors file failed ({text}); {hint}. Any previous save there is intact.") from exc
