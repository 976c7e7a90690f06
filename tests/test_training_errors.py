"""Bad input fails with a clear MedAdaptError before any training starts (nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest

from medadapt.data import DataError, DataNotFoundError
from medadapt.errors import MedAdaptError
from medadapt.training.cli import main
from medadapt.training.config import ConfigError
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config, tiny_run, write_hf, write_npz, write_yaml  # noqa: F401


def assert_fails_before_training(config, error, match):
    """``run()`` raises ``error`` (a MedAdaptError) and the output dir was never created."""
    trainer = ContinualTrainer(config, progress=False)
    with pytest.raises(error, match=match) as info:
        trainer.run()
    assert isinstance(info.value, MedAdaptError)
    out = config.output_dir
    assert not (trainer.out / "checkpoints").exists(), f"training started in {out}"
    assert not trainer.out.exists(), f"{out} was written although the input was bad"


def test_domain_with_no_samples(tmp_path):
    config = tiny_config(tmp_path / "out", overrides=["domains.us.data.synthetic.n_train=0"])
    assert_fails_before_training(config, DataError, r"domain 'us' split 'train' has no samples")


def test_labels_outside_the_declared_list(tmp_path):
    npz = write_npz(tmp_path / "xr.npz", n_classes=3)  # labels 0..2, but only two declared
    domain = {"name": "xr", "labels": ["normal", "pneumonia"], "prompt": "an x-ray showing {}", "data": {"format": "npz", "path": str(npz)}}
    config = tiny_config(tmp_path / "out", domains=[domain])
    assert_fails_before_training(config, DataError, r"label values \[2\] are outside the declared labels \['normal', 'pneumonia'\]")


def test_missing_column(tmp_path):
    folder = write_hf(tmp_path / "us", ["normal", "benign", "malignant"], image_column="img")
    domain = {"name": "us", "prompt": "an ultrasound with {}", "data": {"format": "hf", "path": str(folder)}}
    config = tiny_config(tmp_path / "out", domains=[domain])
    assert_fails_before_training(config, DataError, r"column\(s\) \['image'\] not in .*available columns: \['img', 'label'\]")


def test_missing_npz_key(tmp_path):
    npz = tmp_path / "xr.npz"
    write_npz(npz)
    import numpy as np

    arrays = dict(np.load(npz))
    del arrays["test_labels"]
    np.savez(npz, **arrays)
    domain = {"name": "xr", "labels": ["normal", "pneumonia"], "prompt": "an x-ray showing {}", "data": {"format": "npz", "path": str(npz)}}
    assert_fails_before_training(tiny_config(tmp_path / "out", domains=[domain]), DataError, r"key\(s\) \['test_labels'\] not in")


def test_missing_file(tmp_path):
    domain = {"name": "xr", "labels": ["normal", "pneumonia"], "prompt": "an x-ray showing {}", "data": {"format": "npz", "path": str(tmp_path / "nope.npz")}}
    config = tiny_config(tmp_path / "out", domains=[domain])
    assert_fails_before_training(config, DataNotFoundError, r"npz file not found: .*nope.npz")


def test_missing_split_of_a_domain(tmp_path):
    config = tiny_config(tmp_path / "out", overrides=["domains.xr.data.splits={train: train}"])
    assert_fails_before_training(config, DataError, r"domain 'xr' has no 'test' split")


def test_unknown_config_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['train.epcohs'\]; valid keys at this level: \['epochs', 'batch_size'"):
        tiny_config(tmp_path / "out", overrides=["train.epcohs=2"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['learning_rate'\]; valid keys at this level: \['model', 'paradigm'"):
        tiny_config(tmp_path / "out", overrides=["learning_rate=0.1"])
    assert not (tmp_path / "out").exists()


# -- an output directory that already holds a run ----------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, one_thread):  # noqa: F811
    """A finished one-domain run (copied per test, as some tests change it)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    ContinualTrainer(tiny_config(folder, "rehearsal", n_domains=1, n_train=16, n_test=12), progress=False).run()
    return folder


@pytest.fixture
def existing(tmp_path, finished_run):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    return folder


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_settings(folder, *overrides):
    return tiny_config(folder, "rehearsal", overrides=list(overrides), n_domains=1, n_train=16, n_test=12)


def test_output_dir_holding_a_different_run_is_refused(existing):
    before = snapshot(existing)
    with pytest.raises(ConfigError, match=r"already holds a different run; pass --resume to continue it or --overwrite to replace it"):
        ContinualTrainer(same_settings(existing, "train.lr=0.01"), progress=False).setup()
    with pytest.raises(ConfigError, match=r"already holds an earlier run"):
        ContinualTrainer(same_settings(existing), progress=False).setup()
    assert snapshot(existing) == before


def test_resume_with_another_config_is_refused(existing):
    before = snapshot(existing)
    with pytest.raises(ConfigError, match=r"--resume: .* holds a run with another configuration"):
        ContinualTrainer(same_settings(existing, "rehearsal.size=3"), resume=True, progress=False).setup()
    assert snapshot(existing) == before


def test_resume_of_nothing_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume given but .* holds no run to resume"):
        ContinualTrainer(same_settings(tmp_path / "empty"), resume=True, progress=False).setup()


def test_a_finished_run_resumes_to_the_same_results(existing):
    before = json.loads((existing / "results.json").read_text())
    results = ContinualTrainer(same_settings(existing), resume=True, progress=False).run()
    assert results["accuracy_matrix"] == before["accuracy_matrix"]


def test_overwrite_replaces_the_run(existing):
    config = same_settings(existing, "train.lr=0.01")
    results = ContinualTrainer(config, overwrite=True, progress=False).run()
    on_disk = json.loads((existing / "results.json").read_text())
    assert on_disk["config"]["train"]["lr"] == 0.01 and on_disk["accuracy_matrix"] == results["accuracy_matrix"]
    assert json.loads((existing / "run.json").read_text())["fingerprint"] == config.fingerprint()


def test_overwrite_with_bad_data_keeps_the_old_run(existing):
    before = snapshot(existing)
    with pytest.raises(DataError, match="has no samples"):
        ContinualTrainer(same_settings(existing, "domains.0.data.synthetic.n_test=0"), overwrite=True, progress=False).run()
    assert snapshot(existing) == before


def test_overwrite_refuses_a_folder_medadapt_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="holds files medadapt did not write"):
        ContinualTrainer(same_settings(folder), overwrite=True, progress=False).setup()
    assert (folder / "notes.txt").read_text() == "precious"


def test_cli_reports_errors_without_traceback(tmp_path, existing, capsys):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(existing, "rehearsal", n_domains=1, n_train=16, n_test=12))
    assert main(["--config", str(path), "--no-progress", "train.lr=0.02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output_dir") and "--overwrite" in err and "Traceback" not in err
    assert main(["--config", str(path), "--no-progress", "domains.0.data.path=x.npz", "domains.0.data.format=npz"]) == 2
    assert "not found" in capsys.readouterr().err
