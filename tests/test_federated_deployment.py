"""Flower's deployment runtime for real (issue 17): a SuperLink and two SuperNodes as processes on
127.0.0.1, ``flwr run`` of a 2-round tiny federation, then the model save it wrote.

Takes minutes (every ClientApp message starts a process that builds the tiny base), so it is marked
``deployment`` and ``slow``: README's default test command deselects it and .ci/run runs it in its
own block. Every process is bounded by time and stopped by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tests.test_federated import tiny_config  # noqa: E402

pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "recipes" / "federated_app"


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(logs.iterdir()))


def _wait_for(predicate: Any, seconds: float, procs: list[subprocess.Popen], logs: Path, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        dead = [p.args[0] for p in procs if p.poll() is not None and p.args[0] != "flwr"]
        assert not dead, f"{dead} exited while waiting for {what}\n{_logs(logs)}"
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f} s\n{_logs(logs)}"
        time.sleep(1)


def test_superlink_two_supernodes_and_flwr_run_write_a_save(tmp_path: Path) -> None:
    from medadapt import ContinualVLM

    cfg = tiny_config(tmp_path / "run", sites=2, rounds=2, domains=1)
    cfg["federation"]["round_timeout_s"] = 120
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    control, node_a, node_b = _ports(3)
    # flower-superexec and the flwr-serverapp / flwr-clientapp processes it starts must find this
    # python (venv bin on PATH) and this checkout of medadapt (PYTHONPATH).
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{control}"\ninsecure = true\n')
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, *args: str) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "w")
        proc = subprocess.Popen([_tool(args[0]), *args[1:]], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        procs.append(proc)
        return proc

    superlink_log = logs / "superlink.log"
    try:
        # Flower 1.42: the SuperLink serves its Runtime, Control and Fleet APIs over one HTTP address.
        # Without --disable-runtime-dependency-installation its SuperExec `uv sync`s the FAB's
        # dependencies (medadapt[federated]) into a fresh env, which fails offline (exit code 608).
        start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(control))
        _wait_for(lambda: "Uvicorn running" in superlink_log.read_text(errors="replace"), 90, procs, logs, "SuperLink")
        for site, port in (("hospital-0", node_a), ("hospital-1", node_b)):
            start(site, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{control}", "--port", str(port),
                  "--node-config", f"site='{site}' config='{config}' state-dir='{tmp_path / 'state' / site}'")
        _wait_for(lambda: superlink_log.read_text(errors="replace").count("Activated node_id") >= 2, 90, procs, logs, "two activated SuperNodes")
        # --stream: the ServerApp's log comes back into flwr-run.log; the stream ends with the run
        run = start("flwr-run", "flwr", "run", str(APP), "local", "--stream", "--run-config", f"config='{config}'")
        _wait_for(lambda: (tmp_path / "run" / "results.json").is_file() or run.poll() is not None, 360, procs, logs, "results.json")
        if run.poll() is None:
            run.wait(timeout=60)
        assert "ServerApp raised an exception" not in (logs / "flwr-run.log").read_text(errors="replace"), _logs(logs)
        assert (tmp_path / "run" / "results.json").is_file(), f"flwr run ended (rc {run.returncode}) without results.json\n{_logs(logs)}"
        model = ContinualVLM.from_pretrained(tmp_path / "run")
        assert model.adapter_names() == ["xray", "shared"]
        assert model.provenance["shared"]["federated"]["rounds"] == 2
        assert sorted(model.provenance["shared"]["federated"]["sites"]) == ["site-1", "site-2"]
        samples = model.provenance["shared"]["federated"]["samples_per_site"]
        assert all(n > 0 for n in samples.values())
        # every ClientApp message is a fresh process: the site's AdamW state crossed rounds through its state-dir
        kept = json.loads((tmp_path / "state" / "hospital-0" / "optimizer" / "shared.json").read_text())
        assert (kept["stage"], kept["round"]) == (0, 1)
        steps = load_file(str(tmp_path / "state" / "hospital-0" / "optimizer" / "shared.safetensors"))["0.step"].item()
        assert steps == 2 * -(-(samples["site-1"] // 2) // 16), (steps, samples)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
