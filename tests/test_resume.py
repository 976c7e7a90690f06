"""SIGKILL a recipe mid-way through stage 2, rerun it with --resume, and compare with an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from .training_helpers import ROOT, one_thread, recipe_command, run_recipe, subprocess_env, tiny_run, write_yaml  # noqa: F401

# 2 domains x (domain adapter phase + shared phase) x 20 steps: slow enough to be caught mid-stage
# (checkpoints every 2 steps), a few seconds per run on one thread.
SETTINGS = dict(n_domains=2, n_train=80, n_test=30, train={"epochs": 2, "batch_size": 8, "lr": 0.005, "checkpoint_every": 2, "eval_batch_size": 64}, rehearsal={"size": 24, "policy": "class_balanced", "ratio": 0.5})


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loop_position(folder):
    try:
        return json.loads((folder / "checkpoints" / "state.json").read_text())["loop"]
    except (OSError, ValueError, KeyError):  # not written yet, or being swapped in right now
        return None


def adapter_files(folder):
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.glob("*/adapter_model.safetensors"))}


# the generative family runs the same recipe: a tiny LLaVA, LoRA on its language model (the family default)
GENERATIVE = dict(model="tiny-llava", adapter={"type": "lora", "r": 4, "alpha": 8, "target_modules": None})


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("family", [{}, GENERATIVE], ids=["dual-encoder", "generative"])
def test_sigkill_mid_stage_then_resume_matches_an_uninterrupted_run(tmp_path, family):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    killed_cfg = write_yaml(tmp_path / "killed.yaml", tiny_run(killed_dir, "rehearsal", **SETTINGS, **family))
    reference_cfg = write_yaml(tmp_path / "reference.yaml", tiny_run(reference_dir, "rehearsal", **SETTINGS, **family))
    env = subprocess_env()
    reference = subprocess.Popen(recipe_command("rehearsal", "--config", str(reference_cfg), "--no-progress"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(recipe_command("rehearsal", "--config", str(killed_cfg), "--no-progress"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # phases are [xr adapter, shared, us adapter, shared]: phase >= 2 with step > 0 = inside stage 2
        deadline = time.monotonic() + 240
        position = None
        while time.monotonic() < deadline and victim.poll() is None:
            position = loop_position(killed_dir)
            if position and position["phase"] >= 2 and position["step"] > 0:
                break
            time.sleep(0.02)
        assert victim.poll() is None, f"the run ended before it could be interrupted (last position {position})"
        assert position and position["phase"] >= 2 and position["step"] > 0, f"never saw a mid-stage-2 checkpoint: {position}"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "results.json").exists(), "killed too late: the run had finished"
    stage1 = killed_dir / "xr" / "adapter_model.safetensors"
    assert stage1.is_file(), "stage 1's adapter is saved when stage 1 ends"
    stage1_before = sha(stage1)

    resumed = run_recipe("rehearsal", "--config", str(killed_cfg), "--no-progress", "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out

    got = json.loads((killed_dir / "results.json").read_text())
    want = json.loads((reference_dir / "results.json").read_text())
    assert len(got["accuracy_matrix"]) == len(want["accuracy_matrix"]) == 2
    for row_got, row_want in zip(got["accuracy_matrix"], want["accuracy_matrix"]):
        assert row_got == pytest.approx(row_want, abs=0.01)
    assert got["accuracy_matrix"] == want["accuracy_matrix"]  # batches, optimizer and RNG are all restored: exact
    assert got["specialist_accuracy_matrix"] == want["specialist_accuracy_matrix"]
    assert got["buffer"] == want["buffer"]
    # the finished stage's adapter was not rewritten by the resumed run, and equals the uninterrupted one
    assert sha(stage1) == stage1_before == sha(reference_dir / "xr" / "adapter_model.safetensors")
    assert adapter_files(killed_dir) == adapter_files(reference_dir)


# -- in-process edge cases of --resume (cheap: one tiny domain) ------------------------------------------
def _tiny(folder):
    from .training_helpers import tiny_config

    return tiny_config(folder, "rehearsal", n_domains=1, n_train=24, n_test=12)


def test_resume_before_the_first_checkpoint_starts_from_the_beginning(tmp_path, one_thread):  # noqa: F811
    import shutil

    from medadapt.training.trainer import ContinualTrainer

    want = ContinualTrainer(_tiny(tmp_path / "run"), progress=False).run()
    for name in ("checkpoints", "results.json", "xr", "shared", "manifest.json"):  # as if killed right after run.json
        path = tmp_path / "run" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_file = tmp_path / "run" / "run.json"  # as written at the start, before any checkpoint
    run_file.write_text(json.dumps({k: v for k, v in json.loads(run_file.read_text()).items() if k != "checkpointed"}))
    trainer = ContinualTrainer(_tiny(tmp_path / "run"), resume=True, progress=False)
    trainer.setup()
    assert trainer.state.phase == 0 and trainer.state.step == 0
    assert trainer.run()["accuracy_matrix"] == want["accuracy_matrix"]


def test_resume_finds_a_checkpoint_parked_by_an_interrupted_swap(tmp_path, one_thread):  # noqa: F811
    from medadapt.training.checkpoint import latest_checkpoint
    from medadapt.training.trainer import ContinualTrainer

    want = ContinualTrainer(_tiny(tmp_path / "run"), progress=False).run()
    # a kill between the two renames of the atomic swap: the old checkpoint is parked, the new one not yet in place
    parked = tmp_path / "run" / ".checkpoints.old-x1"
    parked.mkdir()
    (tmp_path / "run" / "checkpoints").rename(parked / "d")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") == parked / "d"
    trainer = ContinualTrainer(_tiny(tmp_path / "run"), resume=True, progress=False)
    trainer.setup()
    assert trainer.state.phase == 2 and len(trainer.buffer) > 0  # restored: both phases were done
    assert trainer.run()["accuracy_matrix"] == want["accuracy_matrix"]
    ContinualTrainer(_tiny(tmp_path / "run"), overwrite=True, progress=False).setup()
    assert not parked.exists()  # --overwrite clears such leftovers too
