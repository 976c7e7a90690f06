"""Flower's deployment runtime for real (issue 17): a SuperLink and SuperNodes as processes on
127.0.0.1, ``flwr run`` of a 2-round tiny federation, then the model save it wrote; and the same
with SecAgg+ on three SuperNodes, one of them SIGKILLed mid-run.

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


class Deployment:
    """A SuperLink and one SuperNode per site as processes on 127.0.0.1, then ``flwr run``; :meth:`stop` ends them all."""

    def __init__(self, tmp_path: Path, cfg: dict[str, Any]) -> None:
        self.tmp = tmp_path
        self.config = tmp_path / "fed.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.sites = [s["name"] for s in cfg["federation"]["sites"]]
        self.control, *self.node_ports = _ports(1 + len(self.sites))
        # flower-superexec and the flwr-serverapp / flwr-clientapp processes it starts must find this
        # python (venv bin on PATH) and this checkout of medadapt (PYTHONPATH).
        self.env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "OMP_NUM_THREADS": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        (tmp_path / "flwr-home").mkdir()
        (tmp_path / "flwr-home" / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.control}"\ninsecure = true\n')
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.run: subprocess.Popen | None = None

    def start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([_tool(args[0]), *args[1:]], cwd=self.tmp, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def wait_for(self, predicate: Any, seconds: float, what: str) -> None:
        _wait_for(predicate, seconds, [p for p in self.procs if p not in self.killed()], self.logs, what)

    def killed(self) -> list[subprocess.Popen]:
        return [p for p in self.nodes.values() if p.returncode == -signal.SIGKILL]

    def launch(self) -> None:
        """Start the SuperLink and every SuperNode, wait until all are activated, then ``flwr run --stream``."""
        superlink_log = self.logs / "superlink.log"
        # Flower 1.42: the SuperLink serves its Runtime, Control and Fleet APIs over one HTTP address.
        # Without --disable-runtime-dependency-installation its SuperExec `uv sync`s the FAB's
        # dependencies (medadapt[federated]) into a fresh env, which fails offline (exit code 608).
        self.start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.control))
        self.wait_for(lambda: "Uvicorn running" in superlink_log.read_text(errors="replace"), 90, "SuperLink")
        for site, port in zip(self.sites, self.node_ports):
            self.nodes[site] = self.start(site, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.control}", "--port", str(port),
                                          "--node-config", f"site='{site}' config='{self.config}' state-dir='{self.tmp / 'state' / site}'")
        self.wait_for(lambda: superlink_log.read_text(errors="replace").count("Activated node_id") >= len(self.sites), 90, f"{len(self.sites)} activated SuperNodes")
        # --stream: the ServerApp's log comes back into flwr-run.log; the stream ends with the run
        self.run = self.start("flwr-run", "flwr", "run", str(APP), "local", "--stream", "--run-config", f"config='{self.config}'")

    def kill(self, site: str) -> None:
        """SIGKILL ``site``'s SuperNode and the ClientApp processes it started (a hospital that goes dark)."""
        os.killpg(self.nodes[site].pid, signal.SIGKILL)
        self.nodes[site].wait(timeout=15)

    def finish(self, out: Path, seconds: float) -> None:
        """Wait for the run's results.json (or the end of ``flwr run``) and check the ServerApp did not raise."""
        assert self.run is not None
        self.wait_for(lambda: (out / "results.json").is_file() or self.run.poll() is not None, seconds, "results.json")
        if self.run.poll() is None:
            self.run.wait(timeout=60)
        assert "ServerApp raised an exception" not in (self.logs / "flwr-run.log").read_text(errors="replace"), _logs(self.logs)
        assert (out / "results.json").is_file(), f"flwr run ended (rc {self.run.returncode}) without results.json\n{_logs(self.logs)}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def test_superlink_two_supernodes_and_flwr_run_write_a_save(tmp_path: Path) -> None:
    from medadapt import ContinualVLM

    cfg = tiny_config(tmp_path / "run", sites=2, rounds=2, domains=1)
    cfg["federation"]["round_timeout_s"] = 120
    fed = Deployment(tmp_path, cfg)
    try:
        fed.launch()
        fed.finish(tmp_path / "run", 360)
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
        fed.stop()


def test_secure_aggregation_on_three_supernodes_survives_one_killed_mid_run(tmp_path: Path) -> None:
    """SecAgg+ on the real runtime; hospital-2's SuperNode is SIGKILLed once round 1 is complete.

    Round 2 goes on with the two others (SecAgg+ needs 2 of 3 key shares; min_sites is 2), records
    the dead site as failed, and the run writes its save.
    """
    from medadapt import ContinualVLM

    cfg = tiny_config(tmp_path / "run", sites=3, rounds=2, domains=1, privacy={"secure_aggregation": True})
    cfg["federation"]["round_timeout_s"] = 60
    fed = Deployment(tmp_path, cfg)
    state = tmp_path / "run" / "federation" / "state.json"
    try:
        fed.launch()
        fed.wait_for(lambda: state.is_file() and len(json.loads(state.read_text())["history"]) >= 1, 300, "round 1 to complete")
        fed.kill("hospital-2")
        fed.finish(tmp_path / "run", 420)
        rounds = json.loads((tmp_path / "run" / "results.json").read_text())["federation"]["rounds"]
        assert [r["secure_aggregation"] for r in rounds] == [True, True]
        assert rounds[0]["sites"] == ["site-1", "site-2", "site-3"]
        assert rounds[1]["sites"] == ["site-1", "site-2"], rounds[1]
        server_log = (fed.logs / "flwr-run.log").read_text(errors="replace")
        # either round 2's SecAgg+ asked the dead node and recovered its masks, or the SuperLink had already dropped it
        assert rounds[1]["failed"] == [{"site": "site-3", "error": "dropped out of the SecAgg+ round"}] or "left the federation" in server_log, (rounds[1], server_log[-3000:])
        model = ContinualVLM.from_pretrained(tmp_path / "run")
        assert model.provenance["shared"]["federated"]["rounds"] == 2
        assert model.adapter_names() == ["xray", "shared"]
        assert "Secure aggregation completed" in server_log
    finally:
        fed.stop()
