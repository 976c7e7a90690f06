""".ci/lowest_constraints.py: the constraints file of CI's lowest-versions job pins each core dependency to
the floor pyproject.toml gives it, and refuses a pyproject without a floor for one of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "lowest_constraints.py"
CORE = {"torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "huggingface_hub"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_pins_each_core_dependency_at_its_floor():
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {d.split(">=")[0].strip(): d.split(">=")[1].split(",")[0].strip() for d in deps if ">=" in d}
    done = run()
    assert done.returncode == 0, done.stderr
    pins = dict(line.split("==") for line in done.stdout.splitlines() if "==" in line)
    assert set(pins) == CORE
    assert all(pins[name] == floors[name] for name in CORE), (pins, floors)
    everything = dict(line.split("==") for line in run("--all").stdout.splitlines() if "==" in line)
    assert everything == floors


def test_refuses_a_pyproject_without_a_floor(tmp_path):
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project]\nname = "x"\ndependencies = ["torch>=2.13", "peft", "transformers>=5.24"]\n')
    done = run("--pyproject", str(fake))
    assert done.returncode == 1 and "no >= floor" in done.stderr and "peft" in done.stderr
