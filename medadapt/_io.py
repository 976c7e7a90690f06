"""Atomic file writes and hashing helpers shared by every writer in medadapt."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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
