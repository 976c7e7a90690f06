"""Smoke test of benchmarks/speed.py: it runs end to end and writes every key (no speed assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"

REQUIRED = [
    "train_step_ratio",
    "frozen_tower_speedup",
    "mixed_batch_ratio",
    "mixed_vs_per_image_speedup",
    "adapter_load_ratio_20_vs_2",
    "adapter_load_total_s_20",
    "memory_per_adapter_ratio",
    "mixed_batch_ratio_4",
    "mixed_batch_ratio_16",
    "mixed_batch_ratio_64",
    "peft_mixed_ratio_64",
    "adapter_load_ratio_100_vs_2",
    "adapter_load_total_s_100",
    "memory_100_adapters_ratio",
]


@pytest.mark.timeout(180)
def test_speed_script_writes_all_keys(tmp_path: Path) -> None:
    if not SCRIPT.is_file():
        pytest.skip("benchmarks/speed.py is not part of this checkout")
    out = tmp_path / "results" / "speed.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=170, env=env, cwd=SCRIPT.parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [p.name for p in out.parent.iterdir()] == ["speed.json"]  # written atomically, no temp file left
    for key in REQUIRED:
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
        assert key in result["targets"] and "pass" in result["targets"][key], key
    assert set(result["machine"]) >= {"cpu_model", "cpu_count", "platform"}
    assert set(result["versions"]) >= {"python", "torch", "transformers", "peft", "medadapt"}
    assert result["quick"] is True and result["mode"] == "smoke"
    for name in ("training_overhead", "frozen_tower_reuse", "mixed_domain_inference", "adapter_scaling", "many_domain_mixed_batch", "many_adapters"):
        assert "targets" in result["measurements"][name], name
    training = result["measurements"]["training_overhead"]
    assert training["medadapt_step"]["cpu"]["repeats_s"] and training["peft_baseline_step"]["wall"]["repeats_s"]
    assert training["same_losses"]  # the hand-written baseline does the same computation
    assert result["measurements"]["mixed_domain_inference"]["mixed_matches_per_domain"]
    assert result["measurements"]["frozen_tower_reuse"]["cache_used"]
    many = result["measurements"]["many_domain_mixed_batch"]
    assert many["mixed_path"] == "gathered" and many["peft_side_path"] == "peft"
    assert many["mixed_matches_per_domain"] and many["gathered_matches_peft_path"]
    for key, entry in result["targets"].items():  # every target is gated by its correctness flags
        if entry["target"] is not None:
            assert entry.get("correct"), f"{key} has no correctness flag"
            assert entry["pass"] is False or all(entry["correct"].values()), key
    # smoke runs measure tensor bytes, not resident memory: the memory targets cannot pass on them
    assert result["targets"]["memory_per_adapter_ratio"]["pass"] is False
    assert "memory_measured_rss is false" in result["targets"]["memory_per_adapter_ratio"]["cause"]


MODELS = SCRIPT.parents[2] / "shared" / "models" / "efficientnet-lite0"


@pytest.mark.timeout(120)
def test_speed_only_cnn_train_step_merges_into_existing_results(tmp_path: Path) -> None:
    """``--only cnn_train_step`` adds ``cnn_train_step_ratio`` (real tower, plain loop on the same LoRA
    parameters) to an existing results file and keeps that file's other values."""
    if not SCRIPT.is_file():
        pytest.skip("benchmarks/speed.py is not part of this checkout")
    out = tmp_path / "speed.json"
    out.write_text(json.dumps({"schema": 1, "train_step_ratio": 0.5, "targets": {"train_step_ratio": {"value": 0.5, "target": "<= 1.1", "pass": True}},
                               "measurements": {"training_overhead": {"value": 0.5}}, "section_seconds": {"training_overhead": 1.0}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "cnn_train_step", "--out", str(out)],
                          capture_output=True, text=True, timeout=110, env=env, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["train_step_ratio"] == 0.5 and result["measurements"]["training_overhead"] == {"value": 0.5}  # kept
    assert result["targets"]["train_step_ratio"]["pass"] is True
    entry = result["targets"]["cnn_train_step_ratio"]
    section = result["measurements"]["cnn_training_overhead"]
    if not (MODELS / "model.safetensors").is_file():
        assert entry["pass"] is None and "efficientnet-lite0" in entry["skipped"] and "cnn_train_step_ratio" not in result
        return
    assert isinstance(result["cnn_train_step_ratio"], float) and result["cnn_train_step_ratio"] > 0
    assert entry["target"] == "<= 1.1" and set(entry["correct"]) == {"same_losses", "same_trainable_parameters"}
    assert section["same_losses"] and section["same_trainable_parameters"]  # the plain loop trains the same parameters
    assert section["trainable_parameters"]["medadapt"] > 0
    assert section["profile"]["medadapt"]["top_ops_self_ms"] and section["plain_step"]["cpu"]["repeats_s"]
