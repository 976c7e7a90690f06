"""A federated run on Flower's *deployment* runtime on this machine: a SuperLink and one SuperNode per
site as processes on 127.0.0.1, then ``flwr run`` of medadapt's Flower App (``medadapt/federated/app``).

This is the real runtime (gRPC/HTTP between processes, a ClientApp process per message, SecAgg+ and
dropouts as in production) on one machine: what ``python recipes/federated.py --runtime loopback``
runs, and what the deployment tests drive. Every process is started in its own session, bounded by
``timeout_s`` and stopped on exit (also on Ctrl-C or an error).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable

import yaml

from .._io import atomic_write_bytes, read_json_file
from ..errors import FederationError
from ..training.config import merge_config, parse_overrides, read_config_file
from .settings import FederatedConfig, load_federated_config
from .simulation import site_state_root

APP_DIR = Path(__file__).parent / "app"
"""medadapt's Flower App: a ``pyproject.toml`` whose ``[tool.flwr.app.components]`` name medadapt's apps."""


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def flower_tool(name: str) -> str:
    """The path of Flower's command ``name`` beside this python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FederationError(f"Flower's `{name}` command is not installed beside {sys.executable} or on PATH; pip install \"medadapt[federated]\".")
    return found


def effective_config(path: str | Path, overrides: list[str], config: FederatedConfig, workdir: Path) -> Path:
    """Write ``path`` with ``overrides`` applied (``config``, already loaded from them) and ``output_dir`` made
    absolute into ``workdir``; every process reads that one file, so the server and the sites agree on its fingerprint."""
    raw = merge_config(read_config_file(path), parse_overrides(overrides))
    raw["output_dir"] = str(Path(config.run.output_dir).resolve())
    out = workdir / "federated.yaml"
    atomic_write_bytes(out, yaml.safe_dump(raw, sort_keys=False).encode())
    return out


class LoopbackFederation:
    """``config`` (a federated run config) run by a SuperLink and one SuperNode per site on 127.0.0.1.

    Relative data paths resolve against ``data_dir`` (default: the current directory, as in a
    simulation); each site keeps its memory and optimizer state under ``<output_dir>.sites/<site>``;
    the effective config and the processes' logs go to ``workdir`` (default ``<output_dir>.loopback``).
    Use as a context manager, or call :meth:`stop`.
    """

    def __init__(self, config: str | Path, overrides: list[str] | None = None, workdir: str | Path | None = None,
                 data_dir: str | Path | None = None, timeout_s: float = 3600.0, echo: Callable[[str], None] | None = None) -> None:
        overrides = list(overrides or [])
        loaded = load_federated_config(config, overrides)  # checked before any process starts
        out = Path(loaded.run.output_dir).resolve()
        self.workdir = Path(workdir) if workdir is not None else out.parent / f"{out.name}.loopback"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.config_path = effective_config(config, overrides, loaded, self.workdir)
        self.config = loaded
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else Path.cwd()
        self.output_dir = out
        self.timeout_s = float(timeout_s)
        self.echo = echo
        self.sites = [s.name for s in self.config.federation.sites]
        self.control, *self.site_ports = free_ports(1 + len(self.sites))
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        atomic_write_bytes(home / "config.toml", f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.control}"\ninsecure = true\n'.encode())
        # flower-superexec starts flwr-serverapp / flwr-clientapp: they must find this python and this medadapt
        package_root = str(Path(__file__).resolve().parents[2])
        self.env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        self.processes: dict[str, subprocess.Popen] = {}
        self._pumps: list[threading.Thread] = []

    # -- processes ------------------------------------------------------------------------------
    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w", encoding="utf-8")
        proc = subprocess.Popen([flower_tool(args[0]), *args[1:]], cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        pump = threading.Thread(target=self._pump, args=(proc.stdout, log, name == "flwr-run"), daemon=True)
        pump.start()
        self._pumps.append(pump)
        self.processes[name] = proc
        return proc

    def _pump(self, stream: IO[str], log: IO[str], echo: bool) -> None:
        with log:
            for line in stream:
                log.write(line)
                log.flush()
                if echo and self.echo is not None:
                    self.echo(line.rstrip("\n"))

    def log_text(self, name: str) -> str:
        """What process ``name`` (``superlink``, a site, ``flwr-run``) printed so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""

    def _tails(self) -> str:
        return "\n".join(f"--- {name}\n{self.log_text(name)[-3000:]}" for name in self.processes)

    def wait_for(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        """Poll ``predicate`` until true; a :class:`FederationError` (with the logs' tails) when a needed process exits or time runs out."""
        deadline = time.monotonic() + seconds
        while not predicate():
            exited = [n for n, p in self.processes.items() if p.poll() is not None and n != "flwr-run" and p.returncode != -signal.SIGKILL]
            if exited:
                raise FederationError(f"{exited} exited while waiting for {what}.\n{self._tails()}")
            if time.monotonic() > deadline:
                raise FederationError(f"no {what} within {seconds:.0f} s.\n{self._tails()}")
            time.sleep(0.5)

    def start(self) -> None:
        """Start the SuperLink and every site's SuperNode; returns once all are connected."""
        # Flower 1.42 serves the Runtime, Control and Fleet APIs on one HTTP address. Without
        # --disable-runtime-dependency-installation the SuperExec `uv sync`s the App's dependencies
        # (medadapt[federated]) into a fresh env, which fails offline or off the package index.
        self._start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.control))
        self.wait_for(lambda: "Uvicorn running" in self.log_text("superlink"), 120, "SuperLink")
        state_root = site_state_root(self.config).resolve()
        for site, port in zip(self.sites, self.site_ports):
            self._start(site, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.control}", "--port", str(port), "--node-config",
                        f"site='{site}' config='{self.config_path.resolve()}' data-dir='{self.data_dir}' state-dir='{state_root / site}'")
        self.wait_for(lambda: self.log_text("superlink").count("Activated node_id") >= len(self.sites), 120, f"{len(self.sites)} connected SuperNodes")

    def launch(self) -> None:
        """``flwr run`` medadapt's App on this federation (its log streams into ``logs/flwr-run.log``)."""
        self._start("flwr-run", "flwr", "run", str(APP_DIR), "local", "--stream", "--run-config", f"config='{self.config_path.resolve()}'")

    def wait(self) -> dict[str, Any]:
        """Wait for the run to end (``timeout_s``); its results (``output_dir/results.json``), or a :class:`FederationError`."""
        results = self.output_dir / "results.json"
        run = self.processes["flwr-run"]
        self.wait_for(lambda: results.is_file() or run.poll() is not None, self.timeout_s, f"results.json in {self.output_dir}")
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if "ServerApp raised an exception" in self.log_text("flwr-run") or not results.is_file():
            raise FederationError(f"the federated run on the loopback runtime failed (flwr run exit {run.returncode}).\n{self._tails()}")
        return read_json_file(results)

    def run(self) -> dict[str, Any]:
        """Start everything, run, stop everything; returns the results."""
        with self:
            self.start()
            self.launch()
            return self.wait()

    def kill(self, site: str) -> None:
        """SIGKILL ``site``'s SuperNode and the ClientApp processes it started (a hospital going dark)."""
        proc = self.processes[site]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop every process this federation started (SIGTERM, then SIGKILL after 15 s)."""
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for pump in self._pumps:
            pump.join(timeout=5)

    def __enter__(self) -> "LoopbackFederation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
