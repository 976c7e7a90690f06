"""The recipe scripts: --help, a tiny rehearsal run printing its results, and bad overrides."""

from __future__ import annotations

import json
import runpy
import sys

import pytest

from .training_helpers import RECIPES, run_recipe, tiny_run, write_yaml

RECIPE_NAMES = ["rehearsal", "continual", "joint", "specialized"]


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_help(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(RECIPES / f"{name}.py"), run_name="__main__")
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--resume", "--overwrite", "--no-progress", "overrides"):
        assert option in text
    assert "accelerate launch recipes/" in text


def test_every_recipe_defaults_to_the_demo_config_and_its_paradigm():
    for name in RECIPE_NAMES:
        source = (RECIPES / f"{name}.py").read_text()
        assert "default_config=DEFAULT_CONFIG" in source and "from medadapt.configs import DEFAULT_CONFIG" in source
        assert name == "rehearsal" or f'paradigm="{name}"' in source
    assert (RECIPES / "configs" / "demo.yaml").is_file()
    from medadapt.configs import DEFAULT_CONFIG, packaged_config

    assert DEFAULT_CONFIG == "demo"
    # the checkout's recipes/configs are the package's own files (links), so `--config recipes/configs/x.yaml` stays valid
    for path in (RECIPES / "configs").glob("*.yaml"):
        if path.stem == "federated":  # read by the federated runner (recipes/federated.py), not by `medadapt train`
            continue
        assert path.resolve() == packaged_config(path.stem).resolve(), path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rehearsal_recipe_prints_matrix_naive_comparison_and_progress(tmp_path):
    out = tmp_path / "run"
    settings = tiny_run(out, "rehearsal", n_domains=2, n_train=32, n_test=30)
    settings["compare_naive"] = True
    config = write_yaml(tmp_path / "run.yaml", settings)
    done = run_recipe("rehearsal", "--config", str(config), "train.epochs=1", "train.checkpoint_every=3")  # progress bars on
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    stdout = done.stdout
    assert "rehearsal: accuracy matrix of the `shared` adapter" in stdout
    assert "after stage" in stdout and "xr" in stdout and "us" in stdout
    assert "naive sequential training (continual, no rehearsal)" in stdout
    assert "rehearsal vs naive: ACC" in stdout
    # progress (stderr is not a terminal here): one line per phase with stage name, loss and samples/s
    for bar in ("stage 1/2 xr [xr]", "stage 1/2 xr [shared]", "stage 2/2 us [us]", "stage 2/2 us [shared]"):
        assert bar in done.stderr, bar
    phase_lines = [line for line in done.stderr.splitlines() if line.startswith("stage ")]
    assert len(phase_lines) == 6 and all(  # 4 phases + the naive run's 2
        " loss " in line and "samples/s" in line for line in phase_lines), phase_lines
    assert "\r" not in done.stderr and "FutureWarning" not in done.stderr
    results = json.loads((out / "results.json").read_text())
    naive = json.loads((out / "naive_baseline" / "results.json").read_text())
    assert results["naive_comparison"]["accuracy_matrix"] == naive["accuracy_matrix"]
    assert naive["paradigm"] == "continual" and naive["rehearsal"] is False and naive["config"]["rehearsal"]["size"] == 0
    assert "Against naive sequential training" in (out / "report.md").read_text()
    # the printed matrix is the one in results.json
    first_row = " ".join(f"{v:.3f}" for v in results["accuracy_matrix"][0])
    assert first_row in " ".join(stdout.split())


@pytest.mark.slow
def test_bad_override_exits_non_zero_with_a_clear_message(tmp_path):
    config = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "run"))
    done = run_recipe("joint", "--config", str(config), "--no-progress", "train.epohcs=2")
    assert done.returncode == 2
    assert "error: unknown config key(s) ['train.epohcs']; valid keys at this level: ['epochs'" in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_joint_recipe_with_mixed_precision_and_gradient_accumulation(tmp_path):
    """The same recipe, untouched, with bf16 autocast and accumulation (CPU autocast here; CUDA on a GPU)."""
    config = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "run", "rehearsal", n_domains=2, n_train=24, n_test=30))
    done = run_recipe("joint", "--config", str(config), "--no-progress", "train.mixed_precision=bf16", "train.grad_accum_steps=2", "train.batch_size=4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["paradigm"] == "joint" and len(results["accuracy_matrix"]) == 1
    assert results["config"]["train"]["mixed_precision"] == "bf16" and results["config"]["train"]["grad_accum_steps"] == 2
    assert "joint: accuracy matrix of the `shared` adapter" in done.stdout
