"""Smoke test of benchmarks/gpu.py: on CPU with tiny bases it runs every section end to end, writes strict
JSON with every key, marks what needs CUDA as null with a reason, and make_table.py renders it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
KEYS = ["trl_time_ratio", "trl_memory_ratio", "grad_ckpt_memory_ratio", "gemma3_4b_bf16_gc_batch8_peak_gb",
        "qlora_memory_ratio", "qlora_time_ratio", "generate_8_vs_1_adapters", "score_5_vs_1_labels",
        "trl_epoch2_throughput_ratio", "trl_epoch1_time_ratio"]


@pytest.mark.timeout(300)
def test_gpu_benchmark_smoke_writes_every_key_and_renders(tmp_path):
    pytest.importorskip("trl", reason="the GPU benchmark compares against TRL's SFTTrainer (pip install trl)")
    out = tmp_path / "results" / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True, timeout=290, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    result = json.loads(out.read_text(encoding="utf-8"), parse_constant=refuse)
    assert [p.name for p in out.parent.iterdir()] == ["gpu.json"]  # written atomically
    assert result["mode"] == "smoke" and result["device"] == "cpu"
    for key in KEYS:
        assert key in result, key
        value = result[key]
        assert (isinstance(value, float) and value > 0) or (value is None and result["null_reasons"][key]), key
    # timings run on CPU too; memory and QLoRA need CUDA and say so
    for key in ("trl_time_ratio", "generate_8_vs_1_adapters", "score_5_vs_1_labels", "trl_epoch2_throughput_ratio", "trl_epoch1_time_ratio"):
        assert isinstance(result[key], float), key
    assert "CUDA" in result["null_reasons"]["trl_memory_ratio"] and "bitsandbytes" in result["null_reasons"]["llava_4bit"]
    assert result["trl"]["tokens_per_step"] == result["gemma3_train"]["no_gc"]["tokens_per_step"] > 0  # same tokens on both sides
    assert set(result["targets"]) == {"trl_time_ratio", "trl_memory_ratio", "gemma3_4b_bf16_gc_batch8_peak_gb",
                                      "trl_epoch2_throughput_ratio", "trl_epoch1_time_ratio"}
    cached = result["gemma3_cached"]["cache"]  # epoch 2 read every image's tokens from the cache
    assert cached["hits"] >= 2 and cached["refusals"] == {} and result["gemma3_cached"]["bytes_per_image"] > 0

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rendered = make_table.render_file(out)
    assert rendered and "smoke run" in rendered and "not measured (no CUDA device" in rendered
    assert f"{result['score_5_vs_1_labels']:.3f}" in rendered
