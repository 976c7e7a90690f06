"""benchmarks/harness.py: targets are judged as written and fail when a correctness flag is false."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "harness.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("benchmarks_harness", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("op, value, expected", [(">=", 3.0, True), (">=", 2.999, False), (">", 3.0, False), (">", 3.001, True),
                                                 ("<=", 3.0, True), ("<=", 3.001, False), ("<", 3.0, False)])
def test_each_comparison_is_evaluated_as_written(harness, op, value, expected):
    assert harness.check((op, 3.0), value)["pass"] is expected


def test_a_false_correctness_flag_fails_a_met_target_and_says_which(harness):
    entry = harness.check(("<=", 1.2), 0.5, {"same_losses": True, "mixed_matches_per_domain": False}, cause="slow")
    assert entry["pass"] is False
    assert "mixed_matches_per_domain is false" in entry["cause"] and "slow" not in entry["cause"]  # the value met its target
    met = harness.check(("<=", 1.2), 0.5, {"same_losses": True})
    assert met["pass"] is True and "cause" not in met and met["correct"] == {"same_losses": True}
    missed = harness.check(("<=", 1.2), 1.5, {"same_losses": True}, cause="slow")
    assert missed["pass"] is False and missed["cause"] == "slow"
    assert harness.check(None, 1.5)["pass"] is None  # reported only


def test_results_are_written_through_medadapt_io_in_record_order(harness, tmp_path, monkeypatch):
    import medadapt._io as io

    calls = []
    real = io.atomic_write_bytes
    monkeypatch.setattr(io, "atomic_write_bytes", lambda path, data: (calls.append(path), real(path, data)))
    harness.write_results(tmp_path / "r.json", {"b": 1, "a": 2})
    assert calls == [tmp_path / "r.json"] and list(json.loads((tmp_path / "r.json").read_text())) == ["b", "a"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_resident_memory_is_read(harness):
    before = harness.rss_bytes()
    block = bytearray(64 << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert harness.rss_bytes() - before > 32 << 20
