"""The unchanged recipe under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medadapt import ContinualVLM
from medadapt.locking import LOCK_FILES

from .test_resume import GENERATIVE
from .training_helpers import RECIPES, ROOT, free_port, subprocess_env, tiny_run, write_yaml


def launcher(port: int) -> list[str]:
    """`accelerate launch` (its console script beside this Python, else torchrun) for 2 processes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if accelerate.is_file() or shutil.which("accelerate"):
        exe = str(accelerate) if accelerate.is_file() else shutil.which("accelerate")
        return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", [{}, GENERATIVE], ids=["dual-encoder", "generative"])
def test_two_process_cpu_run(tmp_path, family):
    out = tmp_path / "run"
    settings = tiny_run(out, "rehearsal", n_domains=2, n_train=32, n_test=30, **family)
    settings["compare_naive"] = True  # the naive baseline runs on the same 2 processes
    config = write_yaml(tmp_path / "run.yaml", settings)
    command = launcher(free_port()) + [str(RECIPES / "rehearsal.py"), "--config", str(config), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    # the main process alone prints the results and writes the outputs
    assert done.stdout.count("accuracy matrix of the `shared` adapter") == 1
    assert done.stdout.count("naive sequential training") == 1
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2
    assert results["buffer_consistent"] is True
    assert results["buffer"]["items"] == settings["rehearsal"]["size"]
    assert len(results["accuracy_matrix"]) == 2 and "naive_comparison" in results
    assert json.loads((out / "naive_baseline" / "results.json").read_text())["num_processes"] == 2
    leftovers = [p.name for p in out.rglob(".*") if p.name not in LOCK_FILES]  # atomic writes leave no temporary files behind
    assert not leftovers, leftovers

    # the save loads and scores like the run said it would
    model = ContinualVLM.from_pretrained(out)
    assert list(model.domains) == ["xr", "us"] and "shared" in model.shared
    from medadapt.data import load_domain

    spec = settings["domains"][0]
    test = load_domain(spec["name"], spec["labels"], spec["data"]).splits["test"]
    probs = model.predict_proba([test[i][0] for i in range(len(test))], domain="xr", adapter="shared")
    accuracy = float((probs.argmax(-1).numpy() == test.labels).mean())
    assert accuracy == pytest.approx(results["final_metrics"]["xr"]["accuracy"], abs=1e-9)
