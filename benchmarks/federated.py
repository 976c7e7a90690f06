#!/usr/bin/env python
"""Federated continual adapters against centralized training, on real data (issue 17).

Three simulated sites (``recipes/configs/federated.yaml``): PneumoniaMNIST split over the three
non-IID (Dirichlet label skew, alpha 0.5, fixed seed), BreastMNIST at site-a, VQA-RAD organ at
site-b; stages pneumonia -> breast -> organ. Rows, on the same partitions and seeds:

- ``centralized_rehearsal``: today's rehearsal recipe on the pooled data (epochs = rounds x local epochs);
- ``centralized_joint``: one shared adapter on all pooled data;
- ``federated_fedavg`` / ``federated_exact``: federated rehearsal with FedAvg / FFA-LoRA aggregation;
- ``federated_naive``: federated, no rehearsal memory;
- ``federated_fedavg_fresh_optimizer``: FedAvg with ``keep_optimizer_state: false`` (every round
  restarts each site's AdamW) and ``memory_weight: samples``: the aggregation before both options;
- ``federated_fedavg_sample_weights``: FedAvg keeping the optimizer state but weighing memory-only
  sites by their memory's size (``memory_weight: samples``);
- ``local_only``: each site trains alone (its own domains) and its shared adapter is scored on
  every domain's test split; the row is the mean over sites.

Writes ``benchmarks/results/federated.json`` (``rows`` with ``acc`` and ``bwt`` each, plus
``bytes_per_site_round``, ``base_bytes``, ``bytes_to_final`` and ``quick_wall_s``). Run from the
repository root::

    python benchmarks/federated.py            # 3 seeds
    python benchmarks/federated.py --quick    # 1 seed

Without ``../shared/data`` it says so and exits 0. The base is tiny-clip (random weights), so
absolute accuracies are low; the comparison between rows is what the numbers show.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import check, results_record, write_results  # noqa: E402

CONFIG = ROOT / "recipes" / "configs" / "federated.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "federated.json"
ROWS = ("centralized_rehearsal", "centralized_joint", "federated_fedavg", "federated_exact", "federated_naive", "federated_fedavg_fresh_optimizer", "federated_fedavg_sample_weights",
        "federated_fedavg_secure", "local_only")


@dataclass
class Settings:
    """What the benchmark ran with."""

    seeds: list[int]
    rounds_per_stage: int
    local_epochs: int
    threads: int


def base_config(data_dir: Path) -> dict[str, Any]:
    """The federated recipe config with data paths pointed at ``data_dir``."""
    config = yaml.safe_load(CONFIG.read_text())
    for d in config["domains"]:
        d["data"]["path"] = str(data_dir / Path(d["data"]["path"]).name)
    return config


def federated(config: dict[str, Any], out: Path, **fed: Any) -> dict[str, Any]:
    from medadapt.federated import federated_config_from_dict
    from medadapt.federated.simulation import run_simulation

    cfg = copy.deepcopy(config)
    cfg["output_dir"] = str(out)
    cfg["federation"].update(fed)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}.sites", ignore_errors=True)
    return run_simulation(federated_config_from_dict(cfg))


def centralized(config: dict[str, Any], out: Path, paradigm: str) -> dict[str, Any]:
    from accelerate import Accelerator

    from medadapt.training.config import load_config
    from medadapt.training.trainer import ContinualTrainer

    cfg = copy.deepcopy(config)
    fed = cfg.pop("federation")
    cfg.update(paradigm=paradigm, output_dir=str(out))
    cfg["train"]["epochs"] = fed["rounds_per_stage"] * fed["local_epochs"]
    run = load_config(None, defaults=cfg)
    return ContinualTrainer(run, overwrite=True, accelerator=Accelerator(cpu=True), progress=False).run()


def local_only(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Each site alone: its own domains in stage order; its shared adapter scored on every domain."""
    from medadapt import ContinualVLM
    from medadapt.data import load_domain
    from medadapt.training.batches import PixelStore
    from medadapt.training.evaluate import evaluate_view

    accs, bwts = [], []
    for site in config["federation"]["sites"]:
        cfg = copy.deepcopy(config)
        cfg["domains"] = [d for d in cfg["domains"] if d["name"] in site["data"]]
        cfg["federation"]["sites"] = [site]
        cfg["federation"]["min_sites"] = 1
        results = federated(cfg, out / site["name"])
        bwts.append(results["bwt"])
        model = ContinualVLM.from_pretrained(out / site["name"])
        store = PixelStore(model.preprocess)
        for d in config["domains"]:
            if d["name"] not in model.domains:
                model.add_domain(d["name"], d["labels"], d["prompt"], adapter="none")
            store.register(d["name"], "test", load_domain(d["name"], d["labels"], d["data"]).splits["test"])
        metrics = evaluate_view(model, store, {d["name"]: "shared" for d in config["domains"]}, 128)
        accs.append(float(np.mean([m["accuracy"] for m in metrics.values()])))
    return {"acc": float(np.mean(accs)), "bwt": float(np.mean(bwts)), "per_site_acc": accs}


def base_bytes() -> int:
    from medadapt.tiny import tiny_base

    base = tiny_base("tiny-clip", seed=0)
    return int(sum(p.numel() * p.element_size() for p in base.model.parameters()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "federated")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.data_dir / "pneumoniamnist.npz").is_file():
        print(f"no real data in {args.data_dir} (see ../shared/data/DATA.md); nothing to benchmark.")
        return 0
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    config = base_config(args.data_dir)
    settings = Settings(seeds, config["federation"]["rounds_per_stage"], config["federation"]["local_epochs"], args.threads)
    started = time.perf_counter()
    per_seed: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    stamps: dict[str, float] = {}
    traffic: dict[str, Any] = {}
    quick_wall = None
    for seed in seeds:
        cfg = copy.deepcopy(config)
        cfg["seed"] = seed
        runs = args.runs / f"seed{seed}"
        tick = time.perf_counter()
        for row, fn in (
            ("centralized_rehearsal", lambda: centralized(cfg, runs / "centralized_rehearsal", "rehearsal")),
            ("centralized_joint", lambda: centralized(cfg, runs / "centralized_joint", "joint")),
            ("federated_fedavg", lambda: federated(cfg, runs / "federated_fedavg", aggregation="fedavg")),
            ("federated_exact", lambda: federated(cfg, runs / "federated_exact", aggregation="ffa_lora")),
            ("federated_naive", lambda: federated({**cfg, "rehearsal": {**cfg["rehearsal"], "size": 0}}, runs / "federated_naive", aggregation="fedavg")),
            ("federated_fedavg_fresh_optimizer", lambda: federated(cfg, runs / "federated_fedavg_fresh_optimizer", aggregation="fedavg", keep_optimizer_state=False, memory_weight="samples")),
            ("federated_fedavg_sample_weights", lambda: federated(cfg, runs / "federated_fedavg_sample_weights", aggregation="fedavg", memory_weight="samples")),
            ("federated_fedavg_secure", lambda: federated(cfg, runs / "federated_fedavg_secure", aggregation="fedavg", privacy={"secure_aggregation": True})),
            ("local_only", lambda: local_only(cfg, runs / "local_only")),
        ):
            t0 = time.perf_counter()
            result = fn()
            wall = time.perf_counter() - t0
            entry = {"acc": float(result["acc"]), "bwt": float(result["bwt"]), "wall_s": round(wall, 2), "seed": seed}
            if "accuracy_matrix" in result:
                entry["accuracy_matrix"] = result["accuracy_matrix"]
            if "per_site_acc" in result:
                entry["per_site_acc"] = result["per_site_acc"]
            if row.startswith("federated"):
                fed = result["federation"]
                entry["bytes_up_per_site_round"] = fed["bytes_up_per_site_round"]
                entry["bytes_total"] = fed["bytes_up_total"] + fed["bytes_down_total"]
                entry["rounds"] = fed["completed_rounds"]
                if row == "federated_fedavg" and seed == seeds[0]:
                    quick_wall = wall
                    traffic = {"bytes_per_site_round": fed["bytes_up_per_site_round"], "bytes_to_final": entry["bytes_total"]}
                if row == "federated_exact" and seed == seeds[0]:
                    traffic["exact_bytes_per_site_round"] = fed["bytes_up_per_site_round"]
                    traffic["exact_bytes_to_final"] = entry["bytes_total"]
                if row == "federated_fedavg_secure" and seed == seeds[0]:
                    traffic["secure_bytes_per_site_round"] = fed["bytes_up_per_site_round"]
                    traffic["secure_wall_s"] = round(wall, 2)
            per_seed[row].append(entry)
            print(f"seed {seed} {row}: ACC {entry['acc']:.3f} BWT {entry['bwt']:+.3f} ({wall:.0f} s)", flush=True)
        stamps[f"seed{seed}"] = round(time.perf_counter() - tick, 2)

    def mean(row: str, key: str) -> float:
        return float(statistics.fmean(e[key] for e in per_seed[row]))

    def std(row: str, key: str) -> float:
        values = [e[key] for e in per_seed[row]]
        return float(statistics.pstdev(values)) if len(values) > 1 else 0.0

    rows = {row: {"acc": mean(row, "acc"), "bwt": mean(row, "bwt"), "acc_std": std(row, "acc"), "bwt_std": std(row, "bwt"), "per_seed": per_seed[row]} for row in ROWS}
    central, local = rows["centralized_rehearsal"]["acc"], rows["local_only"]["acc"]
    naive_bwt = rows["federated_naive"]["bwt"]
    targets = {}
    for row in ("federated_fedavg", "federated_exact"):
        acc, bwt = rows[row]["acc"], rows[row]["bwt"]
        gap = acc - central
        targets[f"{row}_acc_vs_centralized"] = check((">=", -0.03), gap, cause=f"ACC {acc:.3f} vs centralized rehearsal {central:.3f}: gap {gap:+.3f}; per-seed matrices in rows.{row}.per_seed")
        targets[f"{row}_acc_vs_local_only"] = check((">=", 0.05), acc - local, cause=f"ACC {acc:.3f} vs local-only mean {local:.3f}")
        targets[f"{row}_bwt"] = check((">=", -0.03), bwt, flags={"federated_naive_forgets": naive_bwt < -0.01}, cause=f"BWT {bwt:+.3f}")
    fresh, sample_weights, fedavg = (rows[r]["acc"] for r in ("federated_fedavg_fresh_optimizer", "federated_fedavg_sample_weights", "federated_fedavg"))
    targets["kept_optimizer_state_gain"] = check((">", 0.0), sample_weights - fresh, cause=f"FedAvg ACC {sample_weights:.3f} keeping each site's AdamW state vs {fresh:.3f} restarting it every round (both sample-weighted)")
    targets["replay_ratio_weight_gain"] = check((">", 0.0), fedavg - sample_weights, cause=f"FedAvg ACC {fedavg:.3f} with replay_ratio memory weights vs {sample_weights:.3f} with sample weights")
    secure_gap = max(abs(a["acc"] - b["acc"]) for a, b in zip(per_seed["federated_fedavg_secure"], per_seed["federated_fedavg"]))
    targets["secure_aggregation_acc_gap"] = check(("<=", 0.01), secure_gap, cause="largest per-seed |ACC(SecAgg+) - ACC(FedAvg)|: only SecAgg+'s quantisation differs")
    traffic["secure_bytes_over_fedavg"] = traffic["secure_bytes_per_site_round"] / traffic["bytes_per_site_round"]
    bb = base_bytes()
    values = {
        "bytes_per_site_round": float(traffic["bytes_per_site_round"]),
        "base_bytes": float(bb),
        "bytes_to_final": float(traffic["bytes_to_final"]),
        "quick_wall_s": float(quick_wall or 0.0),
    }
    record = results_record(
        values, targets, "quick" if args.quick else "full", settings, "wall",
        measurements={"traffic": {**traffic, "bytes_per_site_round_over_base": traffic["bytes_per_site_round"] / bb}},
        stamps=stamps, started=started, rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, record)
    for row in ROWS:
        print(f"{row:24s} ACC {rows[row]['acc']:.3f} ± {rows[row]['acc_std']:.3f}  BWT {rows[row]['bwt']:+.3f} ± {rows[row]['bwt_std']:.3f}")
    print(f"bytes per site per round {values['bytes_per_site_round']:.0f} ({values['bytes_per_site_round'] / bb:.4f} of the base's {bb} bytes); to final {values['bytes_to_final']:.0f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
