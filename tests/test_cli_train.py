"""`medadapt train` and `medadapt config show|init`: the main job from an installed medadapt, its
shipped configs, and a clean error (one line, status 2) in one process and through accelerate's launcher."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from medadapt.cli import main
from medadapt.configs import config_names, packaged_config, resolve_config
from medadapt.data import DataConfig
from medadapt.errors import ConfigError
from medadapt.training import commands
from medadapt.training.config import RunConfig, load_config
from medadapt.training.config_doc import KEY_HELP, commented_config

from .training_helpers import ROOT, one_thread, subprocess_env, tiny_run, write_yaml  # noqa: F401

PACKAGE = ROOT / "medadapt"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("show", "recover", "train", "config", "export", "demo"):
        assert command in text.split("positional arguments:")[1], command


def test_train_help_names_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--num-processes", "-q", "--resume", "--overwrite", "overrides", "accelerate launch -m medadapt.train"):
        assert option in text, option


def test_shipped_configs_are_package_data():
    assert set(config_names()) >= {"demo", "synthetic", "medmnist", "vqa_rad"}
    assert (PACKAGE / "py.typed").is_file()
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["medadapt"]
    assert "configs/*.yaml" in data and "py.typed" in data
    assert resolve_config("demo") == packaged_config("demo")
    assert resolve_config(str(packaged_config("synthetic"))) == packaged_config("synthetic")
    with pytest.raises(ConfigError, match="shipped configs"):
        resolve_config("no_such_config")
    with pytest.raises(ConfigError, match="not found"):
        resolve_config("some/where/run.yaml")


def _fields(cls, prefix):
    return [f"{prefix}{f.name}" for f in dataclasses.fields(cls)]


def test_every_config_key_has_help():
    from medadapt.training.config import AdapterSettings, DomainSettings, RehearsalSettings, TrackingSettings, TrainSettings

    keys = _fields(RunConfig, "") + _fields(AdapterSettings, "adapter.") + _fields(RehearsalSettings, "rehearsal.")
    keys += _fields(TrainSettings, "train.") + _fields(TrackingSettings, "tracking.") + _fields(DomainSettings, "domains.")
    keys += _fields(DataConfig, "domains.data.")
    missing = [k for k in keys if not KEY_HELP.get(k)]
    assert not missing, missing


@pytest.mark.parametrize("name", ["demo", "synthetic", "vqa_rad", "medmnist"])
def test_commented_config_reads_back_to_the_same_run_and_comments_every_key(name, tmp_path):
    text = commented_config(packaged_config(name))
    out = tmp_path / "c.yaml"
    out.write_text(text)
    assert load_config(out).to_dict() == load_config(packaged_config(name)).to_dict()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip().removeprefix("- ")
        if stripped.startswith("#") or ":" not in stripped:
            continue
        assert lines[i - 1].strip().startswith("#"), f"key line without a comment above it: {line!r}"
    assert "# LoRA rank" in text and "train:" in text and "epochs:" in text


def test_config_show_and_init(tmp_path, capsys, monkeypatch):
    assert main(["config", "show", "synthetic"]) == 0
    shown = capsys.readouterr().out
    assert shown == commented_config(packaged_config("synthetic"))
    monkeypatch.chdir(tmp_path)
    assert main(["config", "init"]) == 0  # default: the demo config into ./medadapt.yaml
    written = tmp_path / "medadapt.yaml"
    assert load_config(written).to_dict() == load_config(packaged_config("demo")).to_dict()
    capsys.readouterr()
    assert main(["config", "init"]) == 2  # never replaces a file silently
    assert "already exists" in capsys.readouterr().err
    assert main(["config", "init", "--from", "synthetic", "--force"]) == 0
    assert yaml.safe_load(written.read_text())["output_dir"] == "runs/synthetic"


def test_bad_run_in_process_prints_one_line_and_exits_2(tmp_path, capsys):
    config = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    assert main(["train", "--config", str(config), "train.epochz=1", "-q"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: unknown config key(s) ['train.epochz']"), captured.err
    assert main(["train", "--config", "missing.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_train_in_process_runs_the_job_with_overrides_between_options(tmp_path, capsys, one_thread):  # noqa: F811
    config = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out", n_train=16, n_test=12))
    status = main(["train", "--config", str(config), "train.max_steps_per_stage=2", "-q", "--paradigm", "continual", "rehearsal.size=0"])
    out = capsys.readouterr().out
    assert status == 0, out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["paradigm"] == "continual" and results["config"]["rehearsal"]["size"] == 0
    assert "continual: accuracy matrix" in out


def test_child_status_of_each_launcher_failure():
    failure = subprocess.CalledProcessError(2, ["python", "-m", "medadapt.train"])
    assert commands._child_status(failure) == 2
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {1: ProcessFailure(local_rank=1, pid=11, exitcode=1, error_file=""), 0: ProcessFailure(local_rank=0, pid=10, exitcode=2, error_file="")}
    assert commands._child_status(ChildFailedError("medadapt.train", failures)) == 2
    only = {0: ProcessFailure(local_rank=0, pid=10, exitcode=3, error_file="")}
    assert commands._child_status(ChildFailedError("medadapt.train", only)) == 3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bad_run_through_accelerates_launcher_prints_only_medadapts_error(tmp_path):
    """Two processes through accelerate's launcher API: the launcher's CalledProcessError/ChildFailedError
    report is replaced by the child's status 2; stderr holds medadapt's message and no traceback."""
    config = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-m", "medadapt.cli", "train", "--config", str(config), "train.epochz=1", "--num-processes", "2"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=170)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: unknown config key(s) ['train.epochz']" in done.stderr
    for noise in ("Traceback", "CalledProcessError", "ChildFailedError", "torch.distributed"):
        assert noise not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("error:") == 1, done.stderr


def test_python_m_medadapt_train_takes_the_run_options(capsys):
    from medadapt.train import main as train_main

    with pytest.raises(SystemExit) as info:
        train_main(["--help"])
    assert info.value.code == 0
    assert "accelerate launch -m medadapt.train" in capsys.readouterr().out
