"""Issue 13, section 4 and training-side reliability: --resume from a complete, verified checkpoint or a
clear refusal; non-finite loss stops with the last good checkpoint kept; two trainings into one
output_dir; a checkpoint killed at random instants is still resumable."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time

import pytest
import torch

from medadapt.errors import CheckpointError, MedAdaptError, SaveLockedError, TrainingError
from medadapt.locking import writer_lock
from medadapt.training.checkpoint import latest_checkpoint, save_checkpoint
from medadapt.training.cli import main
from medadapt.training.resume_check import verify_checkpoint
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config, tiny_run, write_yaml  # noqa: F401


class Interrupted(BaseException):
    pass


def _interrupted_run(folder, monkeypatch):
    """A tiny run stopped (like a kill) right after its first mid-phase checkpoint (which holds optimizer state)."""
    real = ContinualTrainer._checkpoint

    def checkpoint_then_stop(self, optimizer):
        real(self, optimizer)
        if optimizer is not None:
            raise Interrupted()

    monkeypatch.setattr(ContinualTrainer, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(Interrupted):
        ContinualTrainer(tiny_config(folder, n_domains=1, n_train=24, n_test=12), progress=False).run()
    monkeypatch.setattr(ContinualTrainer, "_checkpoint", real)
    state = json.loads((folder / "checkpoints" / "state.json").read_text())
    assert state["optimizer"] and state["loop"]["step"] > 0
    return tiny_config(folder, n_domains=1, n_train=24, n_test=12)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "optimizer.safetensors").unlink(), r"optimizer.safetensors \(the optimizer state .*\) is missing"),
        (lambda c: (c / "optimizer.safetensors").write_bytes((c / "optimizer.safetensors").read_bytes()[:50]), "optimizer.safetensors does not match the sha256"),
        (lambda c: (c / "state.json").unlink(), r"checkpoints/state.json is missing"),
        (lambda c: shutil.rmtree(c), r"checkpoints/ is missing"),
        (lambda c: (c / "model" / "xr" / "adapter_model.safetensors").write_bytes(b"x"), "adapters do not verify: .*sha256 mismatch"),
    ],
)
def test_resume_refuses_an_incomplete_or_modified_checkpoint(tmp_path, monkeypatch, one_thread, damage, message):  # noqa: F811
    config = _interrupted_run(tmp_path / "run", monkeypatch)
    damage(tmp_path / "run" / "checkpoints")
    with pytest.raises(CheckpointError, match=message) as info:
        ContinualTrainer(config, resume=True, progress=False).setup()
    assert "--overwrite" in str(info.value)  # says what to do: starting over is explicit
    # the explicit choice works
    ContinualTrainer(config, overwrite=True, progress=False).setup()


def test_cli_resume_of_a_damaged_checkpoint_exits_2_with_the_reason(tmp_path, monkeypatch, one_thread, capsys):  # noqa: F811
    _interrupted_run(tmp_path / "run", monkeypatch)
    (tmp_path / "run" / "checkpoints" / "optimizer.safetensors").unlink()
    yaml = write_yaml(tmp_path / "c.yaml", tiny_run(tmp_path / "run", n_domains=1, n_train=24, n_test=12))
    assert main(["--config", str(yaml), "--resume", "--no-progress"]) == 2
    assert "optimizer.safetensors" in capsys.readouterr().err


def test_non_finite_loss_stops_with_a_clear_error_keeping_the_last_good_checkpoint(tmp_path, one_thread):  # noqa: F811
    config = tiny_config(tmp_path / "run", n_domains=1, n_train=48, n_test=12, overrides=["train.lr=1e9", "train.checkpoint_every=1"])
    with pytest.raises(TrainingError, match=r"(?s)(loss became nan|NaN or infinite).*train\.lr=1e\+09.*--overwrite") as info:
        ContinualTrainer(config, progress=False).run()
    assert isinstance(info.value, MedAdaptError)
    # checkpoint_every=1: step 1 ran on the initial finite weights and was checkpointed before lr=1e9 blew up
    folder = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert folder is not None, "the last good checkpoint was deleted (or never written) when training stopped"
    verify_checkpoint(folder, tmp_path / "run")
    from safetensors.torch import load_file

    weights = list((folder / "model").glob("*/adapter_model.safetensors"))
    assert weights, f"no adapter weights in the last good checkpoint {folder}"
    for path in weights:  # every checkpoint written holds finite weights only
        assert all(torch.isfinite(t).all() for t in load_file(path).values())


def test_a_second_training_into_the_same_output_dir_is_refused_naming_the_first(tmp_path, one_thread):  # noqa: F811
    out = tmp_path / "run"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: "the other training" holding output_dir
        try:
            with writer_lock(out, "training"):
                os.write(write_end, b"x")
                time.sleep(30)
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        with pytest.raises(SaveLockedError, match=rf"locked by another writer \(pid {pid} .*training since"):
            ContinualTrainer(tiny_config(out, n_domains=1, n_train=24, n_test=12), progress=False).setup()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    results = ContinualTrainer(tiny_config(out, n_domains=1, n_train=24, n_test=12), progress=False).run()  # lock released
    assert results["accuracy_matrix"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_checkpoint_killed_at_random_instants_stays_resumable(tmp_path):
    from medadapt import ContinualVLM
    from medadapt.tiny import tiny_backbone
    from tests.conftest import core_lora_config

    torch.set_num_threads(1)
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("xr", ["a", "b"], adapter=core_lora_config())
    params = model.set_trainable(["xr"])
    optimizer = torch.optim.AdamW(params, lr=0.01)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    folder, out = tmp_path / "checkpoints", tmp_path
    save_checkpoint(folder, model, optimizer, {"loop": {"phase": 0, "step": 0}})
    started = time.perf_counter()
    save_checkpoint(folder, model, optimizer, {"loop": {"phase": 0, "step": 1}})
    duration = time.perf_counter() - started
    rng = random.Random(1)
    for trial in range(15):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                save_checkpoint(folder, model, optimizer, {"loop": {"phase": 0, "step": 2 + trial}})
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 1.5 * duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        found = latest_checkpoint(folder)
        assert found is not None, trial
        state = verify_checkpoint(found, out)  # complete and verified, old or new
        assert state["loop"]["step"] in range(0, 3 + trial)
    save_checkpoint(folder, model, optimizer, {"loop": {"phase": 0, "step": 99}})  # leftovers of the kills are tidied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
