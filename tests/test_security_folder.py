"""Issue 21, security: a received save folder never reaches outside itself, never blocks, and a reader never writes.

Every test builds a small "home" around the save (``home/.bashrc``, ``home/notes.txt``, a sibling tree)
and checks that nothing outside the save folder changed (a checksum of the whole tree around it).
Plain loads also leave the save folder itself byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest

from medadapt import ContinualVLM
from medadapt.cli import main as cli_main
from medadapt.errors import InterruptedSaveError, MedAdaptError, UnsafeFolderError
from medadapt.saves import transaction
from medadapt.locking import LOCK_NAME, SNAPSHOT_LOCK_NAME
from medadapt.tiny import tiny_backbone

pytestmark = pytest.mark.usefixtures("core_single_thread")

JOURNAL = transaction.JOURNAL_NAME


def _tree(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under ``root`` (not following symlinks): type, mode, size, content hash or link target."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if skip is not None and here == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if skip is not None and path == skip:
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entry: tuple = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                entry = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entry = ("other", stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode))
            found[str(path.relative_to(root))] = entry
    return found


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("cxr", ["normal", "pneumonia"], "a chest x-ray showing {}.")
    folder = tmp_path_factory.mktemp("template") / "stages"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def home(tmp_path, saved) -> tuple[Path, Path]:
    """``home`` with a .bashrc, notes and a sibling tree, and a copy of the save at home/Downloads/stages."""
    home = tmp_path / "home"
    (home / "Documents" / "inner").mkdir(parents=True)
    (home / ".bashrc").write_text("ORIGINAL\n")
    (home / "notes.txt").write_text("my notes\n")
    (home / "Documents" / "inner" / "a.txt").write_text("a\n")
    (home / "outside" / "parked" / "cxr").mkdir(parents=True)
    (home / "outside" / "parked" / "cxr" / "secret.txt").write_text("outside data\n")
    (home / "outside" / "manifest.json").write_text("{}\n")
    folder = home / "Downloads" / "stages"
    shutil.copytree(saved, folder, symlinks=True)
    return home, folder


def _hostile_journal(folder: Path, moves: list, trash: str = ".trash-x", staging: str = ".staging-x") -> None:
    if not (folder / trash).exists() and not (folder / trash).is_symlink():
        (folder / trash / "parked").mkdir(parents=True)
    if not (folder / staging).exists() and not (folder / staging).is_symlink():
        (folder / staging).mkdir()
    (folder / JOURNAL).write_text(json.dumps({"staging": staging, "trash": trash, "manifest_sha256": "0" * 64, "moves": moves}))


def _every_writer_refuses(folder: Path, error=UnsafeFolderError) -> None:
    """A plain load, an owner's load (recover=True), `medadapt recover` and a save over it: all refuse."""
    with pytest.raises(MedAdaptError):
        ContinualVLM.from_pretrained(folder)
    with pytest.raises(error):
        ContinualVLM.from_pretrained(folder, recover=True)
    assert cli_main(["recover", str(folder)]) == 2
    with pytest.raises(error):
        ContinualVLM(tiny_backbone("clip")).save_pretrained(folder)


# -- the three holes of the issue ------------------------------------------------------------------
def test_journal_traversal_to_bashrc_is_refused(home, capsys):
    home, folder = home
    (folder / ".bashrc").write_text("echo PWNED\n")
    _hostile_journal(folder, [{"path": "../../.bashrc", "kind": "replace"}])
    outside, inside = _tree(home, skip=folder), _tree(folder)
    with pytest.raises(UnsafeFolderError, match=r"path '\.\./\.\./\.bashrc' is not a plain stage folder name"):
        ContinualVLM.from_pretrained(folder)
    assert _tree(folder) == inside  # a plain load changed nothing, even inside the folder
    _every_writer_refuses(folder)
    assert "not a plain stage folder name" in capsys.readouterr().err
    assert (home / ".bashrc").read_text() == "ORIGINAL\n"
    assert _tree(home, skip=folder) == outside


def test_lock_symlink_is_never_followed_or_truncated(home):
    home, folder = home
    (folder / LOCK_NAME).unlink(missing_ok=True)
    os.symlink("../../notes.txt", folder / LOCK_NAME)
    (folder / ".staging-y").mkdir()
    outside, inside = _tree(home, skip=folder), _tree(folder)
    loaded = ContinualVLM.from_pretrained(folder)  # a reader takes no writer lock and loads the complete save
    assert list(loaded.domains) == ["cxr"]
    assert _tree(folder) == inside
    with pytest.raises(UnsafeFolderError, match="not a regular file"):
        ContinualVLM.from_pretrained(folder, recover=True)
    assert cli_main(["recover", str(folder)]) == 2
    with pytest.raises(UnsafeFolderError, match="not a regular file"):
        loaded.save_pretrained(folder)
    assert (home / "notes.txt").read_text() == "my notes\n"
    assert _tree(home, skip=folder) == outside


def _alarm(seconds: int):
    def on_alarm(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s on a FIFO lock")

    return signal.signal(signal.SIGALRM, on_alarm)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"), reason="needs POSIX FIFOs and SIGALRM")
@pytest.mark.parametrize("lock", [SNAPSHOT_LOCK_NAME, LOCK_NAME])
def test_fifo_lock_is_refused_without_hanging(home, lock):
    home, folder = home
    (folder / lock).unlink(missing_ok=True)
    os.mkfifo(folder / lock)
    outside = _tree(home, skip=folder)
    previous = _alarm(20)
    signal.alarm(20)
    try:
        if lock == SNAPSHOT_LOCK_NAME:
            with pytest.raises(UnsafeFolderError, match="not a regular file"):
                ContinualVLM.from_pretrained(folder)
        else:
            ContinualVLM.from_pretrained(folder)  # readers never open the writer lock
        with pytest.raises(UnsafeFolderError, match="not a regular file"):
            ContinualVLM(tiny_backbone("clip")).save_pretrained(folder)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert stat.S_ISFIFO(os.lstat(folder / lock).st_mode)  # left as it was
    assert _tree(home, skip=folder) == outside


# -- variants --------------------------------------------------------------------------------------
@pytest.mark.parametrize("relative", ["ABSOLUTE", ".", "", "..", "./", "cxr/../..", "cxr/x", "manifest.json"])
def test_journal_paths_outside_plain_names_are_refused(home, relative):
    """An absolute path, the manifest's own folder ('.', ''), its parent, and anything with a separator."""
    home, folder = home
    relative = str(home / ".bashrc") if relative == "ABSOLUTE" else relative
    _hostile_journal(folder, [{"path": relative, "kind": "remove"}, {"path": "cxr", "kind": "replace"}])
    outside, cxr = _tree(home, skip=folder), _tree(folder / "cxr")
    _every_writer_refuses(folder)
    assert _tree(folder / "cxr") == cxr  # refused before anything moved, the valid entry included
    assert (folder / "manifest.json").is_file()
    assert _tree(home, skip=folder) == outside


def test_trash_through_a_symlinked_folder_is_refused(home):
    """.trash-x -> home/outside: a rollback would pull outside files in (and park the save's folders outside)."""
    home, folder = home
    os.symlink(home / "outside", folder / ".trash-x")
    _hostile_journal(folder, [{"path": "cxr", "kind": "replace"}])
    outside, cxr = _tree(home, skip=folder), _tree(folder / "cxr")
    _every_writer_refuses(folder)
    assert _tree(folder / "cxr") == cxr
    assert (home / "outside" / "parked" / "cxr" / "secret.txt").read_text() == "outside data\n"
    assert _tree(home, skip=folder) == outside


def test_stage_folder_that_is_a_symlink_is_never_moved(home):
    """A journal naming a plain entry that is a symlink to a folder outside: recovery refuses to touch it."""
    home, folder = home
    os.symlink(home / "Documents", folder / "docs")
    _hostile_journal(folder, [{"path": "docs", "kind": "create"}])
    outside = _tree(home, skip=folder)
    _every_writer_refuses(folder)
    assert (folder / "docs").is_symlink()
    assert _tree(home, skip=folder) == outside


@pytest.mark.parametrize("lock", [SNAPSHOT_LOCK_NAME, LOCK_NAME])
def test_lock_that_is_a_directory_is_refused(home, lock):
    home, folder = home
    (folder / lock).unlink(missing_ok=True)
    (folder / lock).mkdir()
    (folder / lock / "keep.txt").write_text("keep\n")
    outside = _tree(home, skip=folder)
    if lock == SNAPSHOT_LOCK_NAME:
        with pytest.raises(UnsafeFolderError, match="not a regular file"):
            ContinualVLM.from_pretrained(folder)
    with pytest.raises(UnsafeFolderError, match="not a regular file"):
        ContinualVLM(tiny_backbone("clip")).save_pretrained(folder)
    assert (folder / lock / "keep.txt").read_text() == "keep\n"
    assert _tree(home, skip=folder) == outside


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_journal_that_is_not_a_regular_file_is_not_followed(home, kind):
    home, folder = home
    (folder / ".trash-x").mkdir()
    if kind == "symlink":
        os.symlink(home / "notes.txt", folder / JOURNAL)
    elif hasattr(os, "mkfifo"):
        os.mkfifo(folder / JOURNAL)
    else:
        pytest.skip("needs POSIX FIFOs")
    outside = _tree(home, skip=folder)
    _every_writer_refuses(folder)
    assert _tree(home, skip=folder) == outside


# -- a reader never writes; the owner recovers -----------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_interrupted_save_is_reported_and_only_the_owner_recovers_it(home, capsys):
    home, folder = home
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("eye", ["healthy", "retinopathy"], "a fundus image of {}.")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: killed right before the commit, no cleanup at all
        def die(step):
            if step == "manifest":
                os._exit(9)

        transaction.FAULT_HOOK = die
        try:
            model.save_pretrained(folder)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    outside, inside = _tree(home, skip=folder), _tree(folder)
    assert not (folder / "manifest.json").exists() and (folder / JOURNAL).is_file()
    with pytest.raises(InterruptedSaveError, match=f"interrupted save.*medadapt recover {folder}"):
        ContinualVLM.from_pretrained(folder)
    with pytest.raises(InterruptedSaveError):
        ContinualVLM(tiny_backbone("clip")).load_adapter(folder, "cxr")
    assert _tree(folder) == inside  # nothing moved, rolled back, truncated or created
    assert cli_main(["recover", str(folder)]) == 0
    assert "rolled back" in capsys.readouterr().out
    assert list(ContinualVLM.from_pretrained(folder).domains) == ["cxr"]  # the previous save is back
    assert not transaction.has_leftovers(folder)
    assert cli_main(["recover", str(folder)]) == 0 and "nothing to recover" in capsys.readouterr().out
    assert _tree(home, skip=folder) == outside


def test_leftovers_of_a_committed_save_load_untouched(home):
    home, folder = home
    (folder / ".staging-old").mkdir()
    (folder / ".staging-old" / "x.json").write_text("{}")
    (folder / ".trash-old").mkdir()
    inside = _tree(folder)
    assert list(ContinualVLM.from_pretrained(folder).domains) == ["cxr"]
    assert _tree(folder) == inside
    assert list(ContinualVLM.from_pretrained(folder, recover=True).domains) == ["cxr"]
    assert not transaction.has_leftovers(folder)
