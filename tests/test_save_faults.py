"""Issue 13, sections 2 and 3: saves never lose the previous good save, whatever fails or is killed,
and concurrent writers / readers of one folder get a clear error or a consistent snapshot.

Fault injection is bounded (a few seconds): a forked child does the save, so a "kill" is a real
``os._exit`` / SIGKILL with no cleanup, while the test process keeps the models built once.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time

import pytest
import torch

from medadapt import ContinualVLM, PromptConfig
from medadapt.errors import SaveLockedError, StorageError
from medadapt.saves import transaction
from medadapt.locking import LOCK_FILES, writer_lock
from medadapt.tiny import tiny_backbone
from tests.conftest import core_lora_config, perturb_prompt

pytestmark = [pytest.mark.usefixtures("core_single_thread"), pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]


def _model(variant: int) -> ContinualVLM:
    """Variant 0: cxr (LoRA) + derm (prompt); variant 1: cxr changed, derm gone, eye added (replace/remove/create)."""
    backbone = tiny_backbone("clip")
    model = ContinualVLM(backbone)
    torch.manual_seed(10 + variant)
    model.add_domain("cxr", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config())
    if variant == 0:
        model.add_domain("derm", ["benign", "malignant"], "a skin photo of {}.", adapter=PromptConfig(), seed=1)
        perturb_prompt(model, "derm")
    else:
        model.add_domain("eye", ["healthy", "retinopathy"], "a fundus image of {}.", adapter=core_lora_config())
    return model


def _signature(model: ContinualVLM) -> tuple:
    return tuple(sorted(model.adapter_names())), tuple(float(v.double().sum()) for v in model.lora.state_dict("cxr").values())


@pytest.fixture(scope="module")
def models():
    return [_model(0), _model(1)]


def _which(root, models, recover: bool = True) -> int:
    """0 or 1: which complete save the folder loads as (fails the test on anything else).

    ``recover=True``: the owner's load, which first finishes or undoes a save killed mid-swap (a plain
    load refuses such a folder, see tests/test_security_folder.py)."""
    loaded = ContinualVLM.from_pretrained(root, recover=recover)
    signature = _signature(loaded)
    assert signature in {_signature(m): i for i, m in enumerate(models)}, signature
    return [_signature(m) for m in models].index(signature)


def _leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.name not in LOCK_FILES)


def _steps(models, root, back: bool = False) -> list[str]:
    """The fault-hook steps of a save that replaces, creates and removes folders: saving ``models[1]``
    over ``models[0]`` (``back``: ``models[0]`` over ``models[1]``, whose folders differ); the folder
    ends holding ``models[0]``."""
    seen: list[str] = []
    if back:
        models[1].save_pretrained(root)
    transaction.FAULT_HOOK = seen.append
    try:
        models[0 if back else 1].save_pretrained(root)
    finally:
        transaction.FAULT_HOOK = None
    models[0].save_pretrained(root)
    return seen


def _in_child(action) -> int:
    """Run ``action`` in a forked child; returns the child's pid (exits with 0 after it, 1 on an error)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            action()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_a_write_error_at_every_step_keeps_a_complete_save(models, tmp_path):
    root = tmp_path / "save"
    models[0].save_pretrained(root)
    steps = _steps(models, root)
    assert {"journal", "park-manifest", "manifest", "journal-remove", "cleanup"} <= set(steps)
    assert any(s.startswith("park:") for s in steps) and any(s.startswith("move-in:") for s in steps)
    for failing in steps:
        current = _which(root, models)

        def fail(step, failing=failing):
            if step == failing:
                raise OSError(errno.ENOSPC, "No space left on device")

        transaction.FAULT_HOOK = fail
        try:
            with pytest.raises(StorageError, match="disk is full.*previous save there is intact"):
                models[1 - current].save_pretrained(root)
        finally:
            transaction.FAULT_HOOK = None
        after = _which(root, models)
        committed = steps.index(failing) > steps.index("manifest")
        assert after == (1 - current if committed else current), failing
        ContinualVLM.from_pretrained(root, recover=True)  # the owner's load tidies what a failure after the commit left
        assert _leftovers(root) == [], failing


def test_a_write_error_while_staging_files_keeps_the_previous_save(models, tmp_path, monkeypatch):
    import medadapt.saves.io as hub_io

    root = tmp_path / "save"
    models[0].save_pretrained(root)
    real = hub_io.save_file
    for failing_call in (1, 2):
        calls = []

        def failing_save_file(*args, _n=failing_call, **kwargs):
            calls.append(1)
            if len(calls) == _n:
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, **kwargs)

        monkeypatch.setattr(hub_io, "save_file", failing_save_file)
        with pytest.raises(StorageError, match="read-only filesystem"):
            models[1].save_pretrained(root)
        monkeypatch.setattr(hub_io, "save_file", real)
        assert _which(root, models) == 0 and _leftovers(root) == []


def _expected(steps: list[str], last: str | None, current: int) -> set[int]:
    """What a folder may load as after a save of ``1 - current`` died right before step ``last``.

    The manifest rename is the commit: dying before it (or before any step) keeps the old save;
    dying after it gives the new one; dying at the manifest step itself may give either.
    """
    if last is None or steps.index(last) < steps.index("manifest"):
        return {current}
    if last == "manifest":
        return {0, 1}
    return {1 - current}


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def test_killed_at_every_step_and_at_random_instants_the_folder_loads_old_or_new(models, tmp_path):
    root = tmp_path / "save"
    models[0].save_pretrained(root)
    steps = _steps(models, root)
    steps_to = {1: steps, 0: _steps(models, root, back=True)}  # the steps of a save of models[target]
    assert "manifest" in steps and "manifest" in steps_to[0] and steps != steps_to[0]
    # 1) killed (no cleanup at all) right before each step: old before the commit, new after it
    for dying in steps:
        current = _which(root, models)

        def save_and_die(dying=dying, target=models[1 - current]):
            def die(step):
                if step == dying:
                    os._exit(9)

            transaction.FAULT_HOOK = die
            target.save_pretrained(root)

        _, status = os.waitpid(_in_child(save_and_die), 0)
        assert os.waitstatus_to_exitcode(status) == 9, dying
        committed = steps.index(dying) > steps.index("manifest")
        assert _which(root, models) == (1 - current if committed else current), dying
    # 2) SIGKILL at random instants of a save; the child reports each step it reaches through a pipe,
    # and sleeps 2 ms per step so that a kill can land between steps on fast hardware too
    started = time.perf_counter()
    models[1].save_pretrained(root)
    duration = time.perf_counter() - started + 2e-3 * len(steps)
    rng = random.Random(0)
    outcomes = []  # (steps reached before the kill, whether the child finished, the folder loads as the new save)
    for _ in range(20):
        current = _which(root, models)
        read_end, write_end = os.pipe()

        def save_reporting(target=models[1 - current], fd=write_end):
            def report(step):
                os.write(fd, f"{step}\n".encode())
                time.sleep(2e-3)

            transaction.FAULT_HOOK = report
            target.save_pretrained(root)
            os.write(fd, b"<done>\n")

        pid = _in_child(save_reporting)
        os.close(write_end)
        time.sleep(rng.uniform(0, 1.5 * duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reached = _read_all(read_end).split()
        finished = "<done>" in reached
        reached = [s for s in reached if s != "<done>"]
        after = _which(root, models)
        if finished:
            assert after == 1 - current
        else:
            assert after in _expected(steps_to[1 - current], reached[-1] if reached else None, current), reached
        outcomes.append((len(reached), finished, after != current))
    mid_save = [o for o in outcomes if 0 < o[0] and not o[1]]
    assert mid_save, f"no kill landed inside a save (steps reached, finished, new) per kill: {outcomes}"
    assert any(new for _, _, new in outcomes) and not all(new for _, _, new in outcomes), outcomes  # both ends were hit
    models[0].save_pretrained(root)  # the next save recovers and cleans everything
    assert _leftovers(root) == []


def test_a_second_writer_gets_an_error_naming_the_holder(models, tmp_path):
    root = tmp_path / "save"
    models[0].save_pretrained(root)
    read_end, write_end = os.pipe()

    def hold():
        def slow(step):
            if step == "journal":
                os.write(write_end, b"x")
                time.sleep(1)

        transaction.FAULT_HOOK = slow
        models[1].save_pretrained(root)

    pid = _in_child(hold)
    os.read(read_end, 1)  # the child is inside its save
    with pytest.raises(SaveLockedError, match=rf"locked by another writer \(pid {pid} on .*saving since"):
        models[0].save_pretrained(root)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _which(root, models) == 1  # the first writer's save is complete


def test_a_lock_left_by_a_killed_process_is_stale(models, tmp_path):
    root = tmp_path / "save"
    read_end, write_end = os.pipe()

    def hold_forever():
        with writer_lock(root, "saving"):
            os.write(write_end, b"x")
            time.sleep(60)

    pid = _in_child(hold_forever)
    os.read(read_end, 1)
    with pytest.raises(SaveLockedError, match=f"pid {pid}"):
        models[0].save_pretrained(root)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    models[0].save_pretrained(root)  # the dead holder's lock does not block
    assert _which(root, models) == 0


def test_readers_get_a_consistent_snapshot_while_saves_run_back_to_back(models, tmp_path):
    root = tmp_path / "save"
    models[0].save_pretrained(root)

    def keep_saving():
        for i in range(1, 16):
            models[i % 2].save_pretrained(root)

    pid = _in_child(keep_saving)
    loads, status = 0, None
    while status is None:
        _which(root, models, recover=False)  # never a missing manifest, a hash mismatch or a mixed model
        loads += 1
        done, code = os.waitpid(pid, os.WNOHANG)
        status = code if done else None
    assert os.waitstatus_to_exitcode(status) == 0
    assert loads >= 2  # loads overlapped the writer's saves; each one above was a complete save


def test_two_threads_saving_to_one_folder_give_one_complete_save_and_a_clear_error(models, tmp_path):
    import threading

    root = tmp_path / "save"
    inside, release = threading.Event(), threading.Event()

    def hook(step):
        if step == "journal" and threading.current_thread().name == "first":
            inside.set()
            release.wait(30)

    outcome: dict = {}

    def save(i: int) -> None:
        try:
            models[i].save_pretrained(root)
            outcome[i] = "saved"
        except SaveLockedError as exc:
            outcome[i] = exc

    transaction.FAULT_HOOK = hook
    try:
        first = threading.Thread(target=save, args=(1,), name="first")
        first.start()
        assert inside.wait(30)  # the first thread is inside its save, holding the folder's lock
        save(0)  # the same process, another thread, the same folder
        release.set()
        first.join(30)
    finally:
        transaction.FAULT_HOOK = None
    assert outcome[1] == "saved"
    assert isinstance(outcome[0], SaveLockedError) and "another thread of this process" in str(outcome[0])
    assert _which(root, models, recover=False) == 1 and not _leftovers(root)
