"""Silent failures on the training side (issue 21): resume on changed data, edited checkpoint state,
one-class domains written as strict JSON, output_dir below a file; and trackers that get steps and stage results."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from medadapt.errors import CheckpointError, ConfigError
from medadapt.training.checkpoint import state_digest
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config, write_npz  # noqa: F401


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _npz_config(tmp_path, data: Path, overrides=()):
    return tiny_config(
        tmp_path / "run", "continual", overrides=list(overrides), n_domains=1,
        domains=[{"name": "xr", "labels": ["normal", "pneumonia"], "data": {"format": "npz", "path": str(data)}}],
    )


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, one_thread):  # noqa: F811
    """A one-domain run on npz data stopped inside its only phase, right after its first checkpoint."""
    root = tmp_path_factory.mktemp("interrupted")
    data = write_npz(root / "xr.npz", n=16)
    original = ContinualTrainer._checkpoint

    def stop_after_checkpoint(self, optimizer):
        original(self, optimizer)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ContinualTrainer, "_checkpoint", stop_after_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            ContinualTrainer(_npz_config(root, data, ["train.checkpoint_every=1", "train.batch_size=8"]), progress=False).run()
    loop = json.loads((root / "run" / "checkpoints" / "state.json").read_text())["loop"]
    assert (loop["phase"], loop["step"]) == (0, 1)
    return root, data


def _copy(interrupted, folder: Path) -> Path:
    import shutil

    shutil.copytree(interrupted[0] / "run", folder / "run")
    return folder


def test_run_records_a_data_fingerprint(interrupted):
    root, _ = interrupted
    recorded = json.loads((root / "run" / "run.json").read_text())["data"]["xr"]
    assert recorded["splits"]["train"]["n"] == 16 and len(recorded["splits"]["train"]["sha256"]) == 64
    assert recorded["source"]["size"] == (root / "xr.npz").stat().st_size


def test_resume_on_changed_data_is_refused_unless_resume_anyway(interrupted, tmp_path):
    root, data = interrupted
    same = _copy(interrupted, tmp_path / "same")
    changed = _copy(interrupted, tmp_path / "changed")
    data.touch()  # another mtime alone (a copy, a restore) is no change
    assert "resumed_on_changed_data" not in ContinualTrainer(_npz_config(same, data, ["train.checkpoint_every=1", "train.batch_size=8"]), resume=True, progress=False).run()
    original = data.read_bytes()
    try:  # the same path (same config fingerprint), other content
        arrays = dict(np.load(data))
        arrays["train_labels"] = 1 - arrays["train_labels"]
        np.savez(data, **arrays)
        config = _npz_config(changed, data, ["train.checkpoint_every=1", "train.batch_size=8"])
        with pytest.raises(CheckpointError, match=r"training data changed.*'xr' split 'train': its content changed.*--resume-anyway"):
            ContinualTrainer(config, resume=True, progress=False).setup()
        results = ContinualTrainer(config, resume=True, resume_anyway=True, progress=False).run()
        assert results["resumed_on_changed_data"] == ["domain 'xr' split 'train': its content changed"]
    finally:
        data.write_bytes(original)


def _edit_state(folder: Path, edit, rehash: bool) -> None:
    path = folder / "checkpoints" / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    if rehash:
        state["state_sha256"] = state_digest(state)
    path.write_text(json.dumps(state))


EDITS = [
    (lambda s: s["loop"].update(step=-5), r"loop.step=-5 is outside"),
    (lambda s: s["loop"].update(step=10**6), r"loop.step=1000000 is outside"),
    (lambda s: s["loop"].update(phase=7), r"loop.phase=7 is outside"),
    (lambda s: s["loop"].update(extra=1), r"unknown loop key\(s\) \['extra'\]"),
    (lambda s: s["loop"].update(step="3"), r"loop.step has the wrong type"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr=1e9), r"optimizer's \(lr, weight_decay\) \(1000000000.0"),
]


@pytest.mark.parametrize("edit, message", EDITS, ids=["step-5", "step1e6", "phase", "extra-key", "mistyped", "lr1e9"])
def test_edited_checkpoint_state_is_refused(interrupted, tmp_path, edit, message):
    folder = _copy(interrupted, tmp_path)
    config = _npz_config(folder, interrupted[1], ["train.checkpoint_every=1", "train.batch_size=8"])
    _edit_state(folder / "run", edit, rehash=False)
    with pytest.raises(CheckpointError, match="does not match the sha256 recorded in it"):
        ContinualTrainer(config, resume=True, progress=False).setup()
    _edit_state(folder / "run", lambda s: None, rehash=True)  # an editor who also recomputes the digest
    with pytest.raises(CheckpointError, match=message):
        ContinualTrainer(config, resume=True, progress=False).setup()


def test_a_one_class_domain_writes_null_with_a_reason_and_warns(tmp_path, one_thread, caplog):  # noqa: F811
    data = write_npz(tmp_path / "one.npz", n=12, n_classes=2)
    arrays = dict(np.load(data))
    arrays["train_labels"][:] = 0
    arrays["test_labels"][:] = 0
    np.savez(data, **arrays)
    with caplog.at_level(logging.WARNING, logger="medadapt.training.trainer"):
        results = ContinualTrainer(_npz_config(tmp_path, data, ["train.max_steps_per_stage=1"]), progress=False).run()
    assert any("training split holds a single class" in r.getMessage() for r in caplog.records)
    assert np.isnan(results["final_metrics"]["xr"]["auroc"])  # the Python result keeps NaN
    written = _strict((tmp_path / "run" / "results.json").read_text())
    assert written["final_metrics"]["xr"]["auroc"] is None
    assert "single class" in written["null_reasons"]["final_metrics.xr.auroc"]
    manifest = _strict((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["extras"]["results"]["final_metrics"]["xr"]["auroc"] is None
    _strict((tmp_path / "run" / "checkpoints" / "state.json").read_text())


def test_output_dir_below_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    config = tiny_config(tmp_path / "afile" / "run", "continual", n_domains=1, n_train=8, n_test=8)
    with pytest.raises(ConfigError, match=r"lies below .*afile, which is a file, not a folder"):
        ContinualTrainer(config, progress=False).run()
    assert (tmp_path / "afile").read_text() == "x"


def test_tensorboard_gets_steps_and_stage_results(tmp_path, one_thread):  # noqa: F811
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tmp_path / "run", "continual", overrides=["tracking.log_with=tensorboard", "tracking.project=tb"], n_domains=2, n_train=16, n_test=8)
    results = ContinualTrainer(config, progress=False).run()
    events = sorted((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))  # (hparams go to a subfolder)
    assert len(events) == 1, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    view = results["evaluated_adapter"]
    loss_steps = [e.step for e in acc.Scalars("shared/loss")]
    assert loss_steps == [1, 2, 3, 4]  # 2 stages x 2 steps, every point at its own step
    assert [e.step for e in acc.Scalars("shared/acc")] == loss_steps
    bwt = [(e.step, e.value) for e in acc.Scalars(f"stage/{view}/bwt")]
    assert [s for s, _ in bwt] == [2, 4] and bwt[-1][1] == pytest.approx(results["bwt"], abs=1e-6)
    assert acc.Scalars(f"stage/{view}/acc")[-1].value == pytest.approx(results["acc"], abs=1e-6)
    assert acc.Scalars(f"stage/{view}/forgetting")[-1].value == pytest.approx(results["forgetting"], abs=1e-6)
    per_domain = acc.Scalars(f"stage/{view}/xr/accuracy")
    assert per_domain[-1].value == pytest.approx(results["final_metrics"]["xr"]["accuracy"], abs=1e-6)
    images = acc.Images("accuracy_matrix")
    assert [i.step for i in images] == [2, 4] and images[-1].width > 50
