"""Smoke test of benchmarks/serving.py: it runs end to end, writes every key with its target, finds no
wrong result, and make_table.py renders it (no speed assertions: smoke numbers mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow

KEYS = ("concurrent_wrong_results", "threads_4_throughput_ratio", "hot_load_during_serving_ms")


def run(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_serving_smoke_writes_every_key_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "results" / "serving.json"
    run(str(BENCH / "serving.py"), "--smoke", "--out", str(out))
    assert [p.name for p in out.parent.iterdir()] == ["serving.json"]  # atomic write, no temp file left
    result = json.loads(out.read_text())
    assert result["benchmark"] == "serving" and result["mode"] == "smoke"
    for key in KEYS:
        assert isinstance(result[key], (int, float)) and key in result["targets"]
    assert result["concurrent_wrong_results"] == 0
    assert result["measurements"]["wrong_results"]["calls"] == 32
    assert result["measurements"]["latency_loading"]["loads"] >= 1  # the hot loader ran while serving
    run(str(BENCH / "make_table.py"), "--out", str(tmp_path / "tables.md"), str(out))
    tables = (tmp_path / "tables.md").read_text()
    assert "Serving from threads" in tables and all(f"`{key}`" in tables for key in KEYS)
