"""Smoke tests of the generative benchmarks: benchmarks/generative_speed.py and benchmarks/paradigms.py on
recipes/configs/vqa_rad.yaml run end to end in their smoke modes, write every key, and make_table.py
renders them into a README (no speed or quality assertions: smoke numbers mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
DATA = REPO.parent / "shared" / "data"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow


def run_script(*args: str, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def render_readme(tmp_path: Path, results: list[Path]) -> str:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- benchmarks:start -->\nold\n<!-- benchmarks:end -->\ntail\n", encoding="utf-8")
    run_script(str(BENCH / "make_table.py"), "--out", str(tmp_path / "tables.md"), "--readme", str(readme), *map(str, results), timeout=60)
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text and text.endswith("tail\n")
    return text


@pytest.mark.timeout(120)
def test_generative_speed_smoke_writes_all_keys(tmp_path: Path) -> None:
    out = tmp_path / "results" / "generative_speed.json"
    run_script(str(BENCH / "generative_speed.py"), "--smoke", "--out", str(out), timeout=110)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [p.name for p in out.parent.iterdir()] == ["generative_speed.json"]  # atomic write, no temp file left
    assert result["benchmark"] == "generative_speed" and result["mode"] == "smoke" and result["quick"] is True
    for key in ("train_step_ratio", "score_5_vs_1_labels", "score_5_separately_vs_1", "mixed_generation_ratio"):
        assert isinstance(result[key], float) and result[key] > 0, key
        assert "pass" in result["targets"][key], key
    for key, entry in result["targets"].items():
        assert entry["pass"] is not False or entry.get("cause"), f"{key} missed without a measured cause"
    m = result["measurements"]
    assert m["training_overhead"]["same_first_loss"]  # the hand-written peft step computes the same loss
    assert m["label_scoring"]["joint_matches_separate"]  # 5 labels with a shared prefix == 5 one-label calls
    assert m["mixed_generation"]["mixed_matches_per_domain"] and m["mixed_generation"]["adapters_differ"]
    assert m["mixed_generation"]["public_generate_serves_the_adapter"]  # ContinualVLM.generate, not the scorer alone
    for key in ("train_step_ratio", "score_5_vs_1_labels", "mixed_generation_ratio"):  # gated by correctness flags
        assert result["targets"][key]["correct"], key
    assert set(result["versions"]) >= {"python", "torch", "transformers", "peft", "medadapt"}
    assert "## Generative family speed (CPU)" in render_readme(tmp_path, [out])


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (DATA / "vqa-rad").is_dir() or not (DATA / "pneumoniamnist.npz").is_file(),
                    reason=f"real data not found in {DATA} (pneumoniamnist.npz and vqa-rad/)")
def test_generative_paradigms_smoke_writes_all_keys(tmp_path: Path) -> None:
    out = tmp_path / "generative_paradigms.json"
    run_script(str(BENCH / "paradigms.py"), "--config", "recipes/configs/vqa_rad.yaml", "--smoke",
               "--out", str(out), "--runs-dir", str(tmp_path / "runs"), timeout=290)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["benchmark"] == "generative_paradigms" and result["smoke"] is True
    assert result["domains"] == ["pneumonia", "closed", "open"]
    keys = [r["key"] for r in result["rows"]]
    assert {"specialized", "joint", "continual_naive", "continual_rehearsal", "rehearsal"} <= set(keys)
    by_key = {r["key"]: r for r in result["rows"]}
    for key in ("continual_naive", "continual_rehearsal", "rehearsal"):
        s = by_key[key]["summary"]
        assert {"acc", "bwt", "forgetting", "final_accuracy", "final_metrics"} <= set(s), key
        assert set(s["final_metrics"]["open"]) == {"exact_match", "token_f1", "bleu1"}  # per-task metrics of the open task
        assert len(s["accuracy_matrix_mean"]) == 3
    open_seed = by_key["rehearsal"]["per_seed"][0]["final"]["open"]
    assert 0.0 <= open_seed["accuracy"] <= 1.0 and "top_answers" in open_seed
    assert set(by_key["rehearsal"]["per_seed"][0]["final"]["closed"]["predicted_share"]) == {"no", "yes"}
    info = result["domain_info"]
    assert info["open"]["open_ended"] and info["open"]["train_majority_answer"]
    assert 0.0 < info["closed"]["majority_baseline_accuracy"] < 1.0
    assert {"continual_rehearsal", "rehearsal"} <= set(result["quality_bar"]["checks"])
    assert set(result["forgetting_diagnosis"]) == {"continual_naive", "continual_rehearsal", "rehearsal"}
    assert "buffer_sensitivity" not in result and "cross_domain" not in result
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Generative family: continual-learning paradigms" in md and "open token_f1" not in md
    assert "open exact match" in md and "What is forgotten" in md
    assert "### Generative family: continual-learning paradigms" in render_readme(tmp_path, [out])
