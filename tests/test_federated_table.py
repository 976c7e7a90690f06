"""make_table.py renders benchmarks/results/federated.json (issue 17: the README table is generated)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return make_table


def test_federated_results_render_every_row_target_and_the_communication_figures(tmp_path):
    rows = {
        "centralized_rehearsal": {"acc": 0.8, "bwt": 0.01, "acc_std": 0.02, "bwt_std": 0.005, "per_seed": [{"acc": 0.78}, {"acc": 0.82}]},
        "federated_fedavg": {"acc": 0.74, "bwt": -0.02, "per_seed": [{"acc": 0.74}]},
        "local_only": {"acc": 0.5, "bwt": 0.0},
    }
    targets = {"federated_fedavg_acc_vs_centralized": {"value": -0.06, "target": ">= -0.03", "pass": False},
               "federated_fedavg_bwt": {"value": -0.02, "target": ">= -0.03", "pass": True}}
    data = {"rows": rows, "targets": targets, "base_bytes": 1000.0, "bytes_per_site_round": 250.0, "bytes_to_final": 3.0e6, "quick_wall_s": 12.0}
    path = tmp_path / "federated.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    rendered = _make_table().render_file(path)
    assert rendered is not None
    assert "| centralized rehearsal (pooled data) | 0.800 ± 0.020 | +0.010 ± 0.005 | 0.780, 0.820 |" in rendered
    assert "| federated rehearsal, FedAvg | 0.740 | -0.020 | 0.740 |" in rendered
    assert "exact (FFA-LoRA)" not in rendered  # a row the file does not hold is left out, not invented
    assert "| `federated_fedavg_acc_vs_centralized` | -0.060 | >= -0.03 | **no** |" in rendered
    assert "| `federated_fedavg_bwt` | -0.020 | >= -0.03 | yes |" in rendered
    assert "250 (0.25x the base's 1,000)" in rendered and "3.0 MB" in rendered
