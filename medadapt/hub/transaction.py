"""Saving into an existing folder so that the previous save is never lost.

A save is a transaction over the folder, with ``manifest.json`` as its commit point:

1. under the folder's writer lock, finish or undo any save a crash interrupted, and remove leftovers;
2. write every new adapter folder into ``.staging-*`` (the target is not touched yet);
3. write the journal ``.medadapt-journal.json``: which folders will be replaced, created or removed,
   where their old versions will be parked (``.trash-*``) and the sha256 of the new manifest;
4. holding the snapshot lock exclusively (readers wait, for milliseconds): park the old manifest and
   each changed folder in the trash, move the new folders in, write the new manifest (the commit),
   delete the journal;
5. delete the trash and the staging folder.

If anything fails or the process dies at any instant, the journal says how to get back: when the
manifest on disk is the new one (same sha256) the save is complete and only the leftovers go;
otherwise every parked folder and the old manifest are moved back (a rollback that only renames, so
it works on a full disk). A failure inside this process rolls back at once; a killed process is
rolled back by the next save or load of the folder. Either way the folder loads as the complete
previous save or the complete new one.

Tests inject a failure or a kill before each step through :data:`FAULT_HOOK`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .._io import atomic_write_bytes, atomic_write_json, sha256_file
from ..errors import SaveLockedError, StageFileError
from ..locking import snapshot_lock, writer_lock
from .manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".medadapt-journal.json"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
PARKED = "parked"  # trash/<PARKED>/<relative path>: old folders while a save swaps them

# called with the name of each step just before it runs (tests: raise or os._exit to inject a fault)
FAULT_HOOK: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(name)


def _same_files(folder: Path, files: dict[str, str]) -> bool:
    if not folder.is_dir():
        return False
    existing = sorted(p.name for p in folder.iterdir())
    return existing == sorted(files) and all(sha256_file(folder / n) == h for n, h in files.items())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        try:
            path.unlink()
        except OSError:
            pass


class SaveTransaction:
    """``with SaveTransaction(target) as tx:`` write into ``tx.staging``, then ``tx.commit(...)``."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.staging: Path | None = None
        self._lock = writer_lock(self.target, "saving")
        self._committed = False

    def __enter__(self) -> "SaveTransaction":
        self._lock.__enter__()
        try:
            recover(self.target)
            _step("staging")
            self.staging = Path(tempfile.mkdtemp(dir=self.target, prefix=STAGING_PREFIX))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and not self._committed:
                try:
                    recover(self.target)  # undo what this save did; a failure here is left for the next one
                except Exception as again:  # noqa: BLE001 - the original error is the one to report
                    logger.warning("could not roll back the failed save in %s yet (%s); the next save or load will.",
                                   self.target, again)
            if self.staging is not None and not (self.target / JOURNAL_NAME).exists():
                _remove(self.staging)
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def commit(self, manifest_bytes: bytes, folders: dict[str, dict[str, str]], stale: list[str]) -> None:
        """Swap the staged ``folders`` (relative path -> file hashes) in, remove ``stale`` ones, write the manifest."""
        assert self.staging is not None
        target = self.target
        moves: list[dict[str, str]] = []
        for relative, files in folders.items():
            if _same_files(target / relative, files):
                continue  # unchanged: left byte-identical
            moves.append({"path": relative, "kind": "replace" if (target / relative).exists() else "create"})
        moves += [{"path": relative, "kind": "remove"} for relative in stale]
        trash = target / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
        journal = {
            "staging": self.staging.name,
            "trash": trash.name,
            "moves": moves,
            "manifest_sha256": _sha256_bytes(manifest_bytes),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pid": os.getpid(),
        }
        _step("journal")
        atomic_write_json(target / JOURNAL_NAME, journal)
        with snapshot_lock(target, exclusive=True):
            _step("trash")
            trash.mkdir()
            if (target / MANIFEST_NAME).exists():
                _step("park-manifest")
                os.replace(target / MANIFEST_NAME, trash / MANIFEST_NAME)
            for move in moves:
                relative, kind = move["path"], move["kind"]
                if kind in ("replace", "remove"):
                    _step(f"park:{relative}")
                    (trash / PARKED / relative).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(target / relative, trash / PARKED / relative)
                if kind in ("replace", "create"):
                    _step(f"move-in:{relative}")
                    os.replace(self.staging / relative, target / relative)
            _step("manifest")
            atomic_write_bytes(target / MANIFEST_NAME, manifest_bytes)  # the commit point
            self._committed = True
            _step("journal-remove")
            (target / JOURNAL_NAME).unlink()
        _step("cleanup")
        _remove(trash)
        _remove(self.staging)


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _read_journal(target: Path) -> dict[str, Any] | None:
    path = target / JOURNAL_NAME
    if not path.is_file():
        return None
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageFileError(f"{path} (the record of an interrupted save) is unreadable: {exc}. Remove it by hand.") from exc
    for key in ("staging", "trash"):
        name = journal.get(key)
        if not isinstance(name, str) or "/" in name or not name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            raise StageFileError(f"{path} is not a medadapt save journal ({key}={name!r}). Remove it by hand.")
    return journal


def _committed(target: Path, journal: dict[str, Any]) -> bool:
    manifest = target / MANIFEST_NAME
    return manifest.is_file() and sha256_file(manifest) == journal.get("manifest_sha256")


def _roll_back(target: Path, journal: dict[str, Any]) -> None:
    """Put every parked folder and the old manifest back (renames only, safe to repeat)."""
    trash, staging = target / journal["trash"], target / journal["staging"]
    for move in reversed(journal.get("moves", [])):
        relative, kind = move["path"], move["kind"]
        dest, parked, new = target / relative, trash / PARKED / relative, staging / relative
        new.parent.mkdir(parents=True, exist_ok=True)
        if kind == "create":
            if dest.exists() and not new.exists():
                os.replace(dest, new)
        elif parked.exists():  # replace / remove: the old folder was parked
            if dest.exists():
                if new.exists():
                    _remove(dest)
                else:
                    os.replace(dest, new)
            os.replace(parked, dest)
    if (trash / MANIFEST_NAME).exists():
        os.replace(trash / MANIFEST_NAME, target / MANIFEST_NAME)


def recover(target: str | os.PathLike) -> None:
    """Finish or undo an interrupted save in ``target`` and remove leftovers. Caller holds the writer lock."""
    target = Path(target)
    if not target.is_dir():
        return
    journal = _read_journal(target)
    if journal is not None:
        with snapshot_lock(target, exclusive=True):
            if _committed(target, journal):
                logger.info("%s: completing a save that was interrupted after its commit", target)
            else:
                logger.warning("%s: rolling back a save that was interrupted (started %s by pid %s)",
                               target, journal.get("started"), journal.get("pid"))
                _roll_back(target, journal)
            (target / JOURNAL_NAME).unlink()
    for path in target.iterdir():
        if _is_leftover(path.name):
            _remove(path)


def needs_recovery(target: Path) -> bool:
    """True when a save died between parking the old manifest and committing the new one.

    Only meaningful while holding the snapshot lock (shared): a live writer swaps under the exclusive lock.
    """
    try:
        journal = _read_journal(target)
    except StageFileError:
        return True
    return journal is not None and (target / journal["trash"]).exists() and not _committed(target, journal)


def _is_leftover(name: str) -> bool:
    temporary = name.startswith((f".{MANIFEST_NAME}.", f".{JOURNAL_NAME}.")) and name.endswith(".tmp")  # atomic writes
    return name == JOURNAL_NAME or name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or temporary


def has_leftovers(target: Path) -> bool:
    """Whether ``target`` holds a journal, staging or trash folder (an unfinished or interrupted save)."""
    try:
        return any(_is_leftover(p.name) for p in target.iterdir())
    except OSError:
        return False


def tidy(target: Path) -> None:
    """Recover and clean ``target`` if no writer is at work there (best effort, never raises)."""
    try:
        with writer_lock(target, "cleaning up after an interrupted save"):
            recover(target)
    except (SaveLockedError, OSError, StageFileError):
        pass


@contextmanager
def read_snapshot(root: str | os.PathLike, timeout: float = 60.0) -> Iterator[None]:
    """Hold ``root`` steady while a save in it is read: waits for a writer's swap, and first recovers a
    save a crash left half-swapped (when this process may write there)."""
    root = Path(root)
    deadline = time.monotonic() + timeout
    if has_leftovers(root):
        tidy(root)
    while True:
        with snapshot_lock(root, exclusive=False):
            if not needs_recovery(root):
                yield
                return
        try:
            with writer_lock(root, "recovering an interrupted save"):
                recover(root)
        except SaveLockedError:  # a live writer holds it and recovers first; wait for it
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except OSError as exc:
            raise StageFileError(
                f"{root} holds a save interrupted in the middle of replacing folders, and it cannot be repaired from "
                f"here ({exc}). Open it once with write access (any load or save repairs it)."
            ) from exc
