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
it works on a full disk). A failure inside this process rolls back at once, still holding the
exclusive snapshot lock; a killed process is rolled back by the next save into the folder, by
``medadapt recover FOLDER`` or by a load with ``recover=True``. Either way the folder loads as the
complete previous save or the complete new one.

**A reader never writes.** A plain load ignores leftovers and, when it finds a save killed in the
middle of its swap, raises :class:`~medadapt.errors.InterruptedSaveError` instead of repairing
it: a received folder is someone else's data. Recovery itself is confined to the folder: the
journal is read without following a symlink, every path in it must be a plain name (letters,
digits, ``-``, ``_``) of an entry directly inside the folder, ``.staging-*``/``.trash-*`` must be
real folders, and only real folders and regular files are moved or removed; anything else
(``../../.bashrc``, an absolute path, a symlinked folder, the folder itself) is refused with
:class:`~medadapt.errors.UnsafeFolderError` before anything is touched.

Tests inject a failure or a kill before each step through :data:`FAULT_HOOK`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .._io import atomic_write_bytes, atomic_write_json, default_file_permissions, read_small_json_nofollow, sha256_file
from ..errors import InterruptedSaveError, StageFileError, UnsafeFolderError
from ..locking import snapshot_lock, writer_lock
from .manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".medadapt-journal.json"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
PARKED = "parked"  # trash/<PARKED>/<relative path>: old folders while a save swaps them
MOVE_KINDS = ("replace", "create", "remove")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")  # stage folder names (see domains.validate_name) and "base"
_PLAIN_TEMP = re.compile(r"[A-Za-z0-9_.-]{1,200}")

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


def _entry_type(path: Path) -> str | None:
    """``"dir"``, ``"file"`` (regular), ``"other"`` (a symlink, FIFO, device...) or None when missing; never follows."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _remove(path: Path) -> None:
    """Remove a real folder or regular file medadapt created; a symlink or anything else is left alone."""
    kind = _entry_type(path)
    if kind == "dir":
        shutil.rmtree(path, ignore_errors=True)  # never follows symlinks inside
    elif kind == "file":
        try:
            path.unlink()
        except OSError:
            pass
    elif kind == "other":
        logger.warning("%s is not a folder or regular file medadapt wrote; left as it is.", path)


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
                    logger.warning("could not roll back the failed save in %s yet (%s); the next save, or "
                                   "`medadapt recover %s`, will.", self.target, again, self.target)
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
        for relative in stale:  # a folder an old (perhaps edited) manifest named: only plain names are ever removed
            if _PLAIN_NAME.fullmatch(relative) and _entry_type(target / relative) == "dir":
                moves.append({"path": relative, "kind": "remove"})
            else:
                logger.warning("%s: left %r in place (not a plain stage folder name, or not a real folder).", target, relative)
        bad = [relative for relative in folders if not _PLAIN_NAME.fullmatch(relative)]
        if bad:
            raise StageFileError(f"cannot save to {target}: stage folder names {bad} are not plain names.")
        default_file_permissions(self.staging)  # safetensors writes 0600 files; a save is 0666 minus the umask
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
            try:
                self._swap(manifest_bytes, moves, trash)
            except BaseException:
                try:  # undo before readers may look again: they never see a half-swapped folder from a live writer
                    _finish_or_undo(target)
                except Exception as again:  # noqa: BLE001 - the original error is the one to report
                    logger.warning("could not roll back the failed save in %s yet (%s); the next save, or "
                                   "`medadapt recover %s`, will.", target, again, target)
                raise
        _step("cleanup")
        _remove(trash)
        _remove(self.staging)

    def _swap(self, manifest_bytes: bytes, moves: list[dict[str, str]], trash: Path) -> None:
        target, staging = self.target, self.staging
        assert staging is not None
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
                os.replace(staging / relative, target / relative)
        _step("manifest")
        atomic_write_bytes(target / MANIFEST_NAME, manifest_bytes)  # the commit point
        self._committed = True
        _step("journal-remove")
        (target / JOURNAL_NAME).unlink()


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _read_journal(target: Path) -> dict[str, Any] | None:
    """The journal of ``target``, checked to name only plain entries inside it; None when there is none."""
    path = target / JOURNAL_NAME
    try:
        journal = read_small_json_nofollow(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if _entry_type(path) == "other":
            raise UnsafeFolderError(f"{path} is not a regular file (a symlink, FIFO...): not a medadapt save journal; "
                                    "nothing was touched. Remove it by hand if the folder is yours.") from exc
        raise StageFileError(f"{path} (the record of an interrupted save) is unreadable: {exc}. Remove it by hand.") from exc
    _check_journal(journal, path)
    return journal


def _refuse(path: Path, problem: str) -> None:
    raise UnsafeFolderError(
        f"{path} is not a medadapt save journal medadapt can follow safely: {problem}. Nothing was touched; "
        "if the folder is yours, remove the journal and any .staging-*/.trash-* folders by hand."
    )


def _check_journal(journal: Any, path: Path) -> None:
    """Every name in a journal must be a plain entry directly inside the folder (no '..', '/', absolute path)."""
    if not isinstance(journal, dict):
        _refuse(path, f"it holds a JSON {type(journal).__name__}, not an object")
    for key, prefix in (("staging", STAGING_PREFIX), ("trash", TRASH_PREFIX)):
        name = journal.get(key)
        if not isinstance(name, str) or not name.startswith(prefix) or not _PLAIN_TEMP.fullmatch(name):
            _refuse(path, f"{key}={name!r:.80} is not a {prefix}* folder name")
    moves = journal.get("moves", [])
    if not isinstance(moves, list):
        _refuse(path, "moves is not a list")
    for move in moves:
        if not isinstance(move, dict) or move.get("kind") not in MOVE_KINDS:
            _refuse(path, f"move {move!r:.80} is not one of {MOVE_KINDS}")
        relative = move.get("path")
        if not isinstance(relative, str) or not _PLAIN_NAME.fullmatch(relative):
            _refuse(path, f"path {relative!r:.80} is not a plain stage folder name inside the folder "
                          "(letters, digits, '-' and '_')")
    if not isinstance(journal.get("manifest_sha256"), str):
        _refuse(path, "manifest_sha256 is not a string")


def _committed(target: Path, journal: dict[str, Any]) -> bool:
    manifest = target / MANIFEST_NAME
    return _entry_type(manifest) == "file" and sha256_file(manifest) == journal.get("manifest_sha256")


def _plan_roll_back(target: Path, journal: dict[str, Any]) -> None:
    """Refuse (before anything moves) a rollback that would touch a symlink or anything but real folders."""
    trash, staging = target / journal["trash"], target / journal["staging"]
    for folder in (trash, staging, trash / PARKED):  # ``target`` itself is the caller's own path
        if _entry_type(folder) not in (None, "dir"):
            raise UnsafeFolderError(f"{folder} is not a real folder (a symlink or a file): refusing to recover "
                                    f"{target}; nothing was touched.")
    if _entry_type(target / MANIFEST_NAME) == "other" or _entry_type(trash / MANIFEST_NAME) not in (None, "file"):
        raise UnsafeFolderError(f"{target}: the manifest or its parked copy is not a regular file; refusing to "
                                "recover; nothing was touched.")
    for move in journal.get("moves", []):
        relative = move["path"]
        for path in (target / relative, trash / PARKED / relative, staging / relative):
            if _entry_type(path) not in (None, "dir"):
                raise UnsafeFolderError(f"{path} is not a real folder medadapt wrote (a symlink or a file): refusing "
                                        f"to recover {target}; nothing was touched.")


def _roll_back(target: Path, journal: dict[str, Any]) -> None:
    """Put every parked folder and the old manifest back (renames only, safe to repeat)."""
    _plan_roll_back(target, journal)
    trash, staging = target / journal["trash"], target / journal["staging"]
    for move in reversed(journal.get("moves", [])):
        relative, kind = move["path"], move["kind"]
        dest, parked, new = target / relative, trash / PARKED / relative, staging / relative
        staging.mkdir(exist_ok=True)
        if kind == "create":
            if _entry_type(dest) == "dir" and _entry_type(new) is None:
                os.replace(dest, new)
        elif _entry_type(parked) == "dir":  # replace / remove: the old folder was parked
            if _entry_type(dest) == "dir":
                if _entry_type(new) is not None:
                    _remove(dest)
                else:
                    os.replace(dest, new)
            os.replace(parked, dest)
    if _entry_type(trash / MANIFEST_NAME) == "file":
        os.replace(trash / MANIFEST_NAME, target / MANIFEST_NAME)


def _finish_or_undo(target: Path) -> str | None:
    """Complete or roll back the save ``target``'s journal records; the caller holds both locks (exclusive)."""
    journal = _read_journal(target)
    if journal is None:
        return None
    if _committed(target, journal):
        logger.info("%s: completing a save that was interrupted after its commit", target)
        outcome = "completed a save interrupted after its commit"
    else:
        logger.warning("%s: rolling back a save that was interrupted (started %s by pid %s)",
                       target, str(journal.get("started"))[:40], str(journal.get("pid"))[:20])
        _roll_back(target, journal)
        outcome = "rolled back a save interrupted before its commit (the previous save is back)"
    (target / JOURNAL_NAME).unlink()
    return outcome


def recover(target: str | os.PathLike) -> str:
    """Finish or undo an interrupted save in ``target`` and remove leftovers; returns what was done.

    The caller holds the writer lock. Confined to ``target`` (see the module docstring): raises
    :class:`UnsafeFolderError` before touching anything when the journal names anything else.
    """
    target = Path(target)
    if not target.is_dir():
        return "nothing to recover"
    outcome = None
    if _read_journal(target) is not None:
        with snapshot_lock(target, exclusive=True):
            outcome = _finish_or_undo(target)
    removed = [p.name for p in target.iterdir() if _is_leftover(p.name) and _entry_type(p) in ("dir", "file")]
    for name in removed:
        _remove(target / name)
    done = [outcome] if outcome else []
    if removed:
        done.append(f"removed {len(removed)} leftover(s) of unfinished saves")
    return "; ".join(done) or "nothing to recover"


def recover_folder(folder: str | os.PathLike) -> str:
    """``medadapt recover FOLDER``: take ``folder``'s writer lock, finish or undo an interrupted save, tidy.

    For the folder's owner only: loading never does this by itself. Returns a one-line summary.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StageFileError(f"{folder} is not a folder; nothing to recover.")
    if not has_leftovers(folder):
        return "nothing to recover"
    with writer_lock(folder, "recovering an interrupted save"):
        return recover(folder)


def needs_recovery(target: Path) -> bool:
    """True when a save died between parking the old manifest and committing the new one.

    Only meaningful while holding the snapshot lock (shared): a live writer swaps, and undoes a failed
    swap, under the exclusive lock. A journal that cannot be followed safely raises.
    """
    journal = _read_journal(target)
    return journal is not None and _entry_type(target / journal["trash"]) is not None and not _committed(target, journal)


def _is_leftover(name: str) -> bool:
    temporary = name.startswith((f".{MANIFEST_NAME}.", f".{JOURNAL_NAME}.")) and name.endswith(".tmp")  # atomic writes
    return name == JOURNAL_NAME or name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or temporary


def has_leftovers(target: Path) -> bool:
    """Whether ``target`` holds a journal, staging or trash folder (an unfinished or interrupted save)."""
    try:
        return any(_is_leftover(p.name) for p in target.iterdir())
    except OSError:
        return False


@contextmanager
def read_snapshot(root: str | os.PathLike, recover: bool = False) -> Iterator[None]:
    """Hold ``root`` steady while a save in it is read (a writer's swap waits for the block to end).

    A reader never writes: leftovers are ignored, and a save killed in the middle of its swap raises
    :class:`InterruptedSaveError`. Only with ``recover=True`` (the folder's owner asks for it) is such a
    save first finished or undone, as ``medadapt recover FOLDER`` does.
    """
    root = Path(root)
    if recover:
        recover_folder(root)
    with snapshot_lock(root, exclusive=False):
        try:
            interrupted = needs_recovery(root)
        except StageFileError as exc:
            raise type(exc)(f"{exc} (found while loading {root}; loading never changes a folder.)") from exc
        if interrupted:
            raise InterruptedSaveError(
                f"{root} holds an interrupted save (a save was killed while swapping folders), so it does not "
                f"load as one complete save. If the folder is yours, recover with `medadapt recover {root}` "
                "(or load with recover=True): that puts back the previous save, or completes the new one. "
                "Loading never changes a folder by itself."
            )
        yield
