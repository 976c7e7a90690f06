#!/usr/bin/env python
"""Paradigm benchmark on real medical data: specialized, joint, naive continual, continual with
rehearsal and the rehearsal paradigm, trained on PneumoniaMNIST -> BreastMNIST -> VQA-RAD organ
(the domains of ``recipes/configs/medmnist.yaml``), over several seeds.

Writes ``benchmarks/results/paradigms.json`` (atomically; the source of truth) and
``benchmarks/results/paradigms.md`` (rendered by ``benchmarks/make_table.py``). Also reports
rehearsal-memory size sensitivity, the quality bar (rehearsal against naive continual training)
and a cross-domain matrix (each specialist adapter scored on the other domains, against the shared
rehearsal adapter). Run from the repository root::

    python benchmarks/paradigms.py                 # 3 seeds, ~10 min on 2 busy CPU cores
    python benchmarks/paradigms.py --quick         # 1 seed, fewer samples, < 3 min
    python benchmarks/paradigms.py --seeds 0 1 2 3 4 --out /tmp/paradigms.json

The data is read in place from ``<repo>/../shared/data`` (or ``--data-dir``); without it the
script prints why and exits 0. The backbone is the config's ``model`` (``tiny-clip``: a 2-layer
CLIP built from config with random weights; no pretrained medical weights), so absolute accuracies
are low and the comparison between paradigms is what the numbers show.

Training runs go to ``benchmarks/runs/paradigms/seed<S>/<variant>/`` (git-ignored) and are kept,
so later rows can be computed from them. To add a row computed from trained runs (for example a
*merged* adapter), write ``fn(model, run_dir) -> {domain: adapter}`` or a full evaluator and add a
:class:`PostRow` to :data:`POST_ROWS`; :func:`evaluate_run` scores any adapter mapping of a
trained run dir and returns per-domain accuracy and AUROC.

Torch uses one thread by default (``--threads``): on a machine whose cores are shared with other
jobs, two spinning OpenMP threads per process made training ~50x slower here.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # measure this checkout's medadapt, not whichever one is installed
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "medmnist.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = HERE / "results" / "paradigms.json"
DEFAULT_RUNS = HERE / "runs" / "paradigms"
CONFIG_DATA_PREFIX = ("..", "shared", "data")  # how the recipe configs spell the shared data folder

REAL_TOWER = "efficientnet-lite0"
# the real tower's settings: head specialists (medadapt.adapters.head), a LoRA shared adapter on the
# tower's default CNN targets (a head serves one domain's labels, so it cannot be shared)
REAL_TOWER_OVERRIDES = {"adapter": {"type": "head", "head_init": "auto"},
                        "shared_adapter": {"type": "lora", "r": 16, "alpha": 32}}
REAL_TOWER_SKIPPED = ("rehearsal_cb200",)  # variants the real-tower table leaves out
QUALITY_BAR = {"bwt_min": -0.03, "naive_bwt_max": -0.03, "acc_gain_min": 0.02}
QUICK_CAPS = {"pneumonia": 500, "breast": 300}  # train samples per domain in --quick
DEFAULT_SIZES = (0, 50, 200, 800)

BACKBONE_TEXT = {
    "tiny-clip": (
        "`tiny-clip`, medadapt's built-in 2-layer CLIP (hidden size 32, 32x32 input, byte-level tokenizer) "
        "built from config with random weights; no pretrained and no medical weights (none can be downloaded "
        "on the machine that produced these numbers). Accuracies are therefore far below what a pretrained "
        "medical VLM (e.g. PubMedCLIP) would reach; compare the paradigms with each other, not with the literature."
    ),
    "tiny-siglip": "`tiny-siglip`, medadapt's built-in 2-layer SigLIP built from config with random weights (no pretrained weights).",
    "tiny-llava": (
        "`tiny-llava`, medadapt's built-in 2-layer LLaVA (CLIP vision tower + Llama, hidden size 32, 32x32 input, "
        "byte-level tokenizer, output head scaled by `LOGIT_SCALE`) built from config with random weights; no pretrained "
        "and no medical weights. It reads questions and writes answers one byte at a time, so open answers are hard for "
        "it; compare the paradigms with each other and with the prior (majority) rates, not with the literature."
    ),
}


# -- what is trained and what is reported -------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One training run per seed: the benchmark config with ``overrides`` merged in."""

    key: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """A table row: the ``view`` (``shared`` or ``specialists``) of a variant's runs."""

    key: str
    label: str
    variant: str
    view: str
    note: str = ""


@dataclass(frozen=True)
class PostRow:
    """A row computed after training from a variant's run dirs (no accuracy matrix: final metrics only).

    ``adapters(model, run_dir)`` returns ``{domain: adapter}`` for :func:`evaluate_run` (``"base"`` =
    frozen model). A merged-adapter row would build the merged adapter inside ``adapters`` (add it to
    ``model``) and return its name for every domain.
    """

    key: str
    label: str
    variant: str
    adapters: Callable[[Any, Path], dict[str, str | None]]
    note: str = ""


VARIANTS = [
    Variant("specialized", {"paradigm": "specialized"}),
    Variant("joint", {"paradigm": "joint"}),
    Variant("continual_naive", {"paradigm": "continual", "rehearsal": {"size": 0}}),
    Variant("continual_rehearsal", {"paradigm": "continual"}),
    Variant("rehearsal", {"paradigm": "rehearsal"}),
    # the memory the recipe used before the fix, kept as a row to show what changed
    Variant("rehearsal_cb200", {"paradigm": "rehearsal", "rehearsal": {"policy": "class_balanced", "size": 200}}),
]

ROWS = [
    Row("specialized", "specialized: one LoRA per domain", "specialized", "specialists",
        "each domain keeps its own adapter, so BWT is 0 by construction; needs the domain at inference"),
    Row("joint", "joint: one LoRA on all data at once", "joint", "shared",
        "not continual (all domains available together): an upper reference for one shared adapter; single stage, so no BWT"),
    Row("continual_naive", "continual, naive (no rehearsal)", "continual_naive", "shared", "one shared adapter trained domain after domain"),
    Row("continual_rehearsal", "continual + rehearsal", "continual_rehearsal", "shared", "the same, replaying the rehearsal memory"),
    Row("rehearsal", "rehearsal paradigm: shared adapter", "rehearsal", "shared",
        "the recipe's default: per-domain specialists plus a shared adapter trained with rehearsal (this row)"),
    Row("rehearsal_specialists", "rehearsal paradigm: specialists", "rehearsal", "specialists", "the same runs' per-domain adapters"),
    Row("rehearsal_cb200", "rehearsal paradigm, previous memory (class_balanced, 200)", "rehearsal_cb200", "shared",
        "the recipe's memory before the fix: class-balanced replay shows BreastMNIST 50/50 instead of its 27/73 class mix"),
]

def merged(method: str) -> Callable[[Any, Path], dict[str, str | None]]:
    """Merge the run's domain LoRAs into one adapter (peft ``add_weighted_adapter``) and score every domain with it."""

    def adapters(model: Any, run_dir: Path) -> dict[str, str | None]:
        model.merge_adapters(list(model.domains), into=f"merged_{method}", method=method)
        return {d: f"merged_{method}" for d in model.domains}

    return adapters


POST_ROWS: list[PostRow] = [
    PostRow("merged_ties", "rehearsal paradigm: domain LoRAs merged (ties)", "rehearsal", merged("ties"),
            "the specialists merged after training, no rehearsal: compare with the rehearsal-trained shared adapter"),
    PostRow("merged_linear", "rehearsal paradigm: domain LoRAs merged (linear)", "rehearsal", merged("linear"),
            "the same with a plain weighted average of the LoRA updates"),
    PostRow("stacked", "rehearsal paradigm: own + shared adapter stacked", "rehearsal",
            lambda model, run_dir: {d: (d, "shared") for d in model.domains},
            "each domain's specialist and the shared adapter both active"),
    PostRow("base", "frozen base, no adapter (zero-shot)", "rehearsal", lambda model, run_dir: {d: "base" for d in model.domains},
            "random-weight backbone: about chance"),
]

VIEW_ADAPTER = {"shared": lambda d: "shared", "specialists": lambda d: d}

# the generative family (recipes/configs/vqa_rad.yaml): the paradigms, scored by each task's main metric
GENERATIVE_VARIANTS = VARIANTS[:5]
GENERATIVE_ROWS = ROWS[:6]  # the same rows without the previous-memory one (a domain here is a task)
GENERATIVE_POST_ROWS = [
    PostRow("base", "frozen base, no adapter (zero-shot)", "rehearsal", lambda model, run_dir: {d: "base" for d in model.domains},
            "random-weight backbone: closed tasks near their prior, open answers byte noise"),
]


@dataclass(frozen=True)
class Suite:
    """What one benchmark trains and reports: variants, rows, the extra sections and where results go."""

    name: str  # the results file's "benchmark" field (picks its renderer in make_table.py)
    variants: list[Variant]
    rows: list[Row]
    post_rows: list[PostRow]
    out: Path
    runs: Path
    quick_caps: dict[str, dict[str, int]]  # domain -> split caps in --quick
    sensitivity: bool = True
    cross_domain: bool = True


SUITES = {
    "dual-encoder": Suite("paradigms", VARIANTS, ROWS, POST_ROWS, DEFAULT_OUT, DEFAULT_RUNS,
                          {d: {"train": n} for d, n in QUICK_CAPS.items()}),
    "generative": Suite("generative_paradigms", GENERATIVE_VARIANTS, GENERATIVE_ROWS, GENERATIVE_POST_ROWS,
                        HERE / "results" / "generative_paradigms.json", HERE / "runs" / "generative_paradigms",
                        {"pneumonia": {"train": 600}, "closed": {"train": 600}}, sensitivity=False, cross_domain=False),
}
#: --smoke: every variant and key in seconds (numbers meaningless); used by the test-suite
SMOKE = {"caps": {"train": 16, "test": 12}, "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16}, "rehearsal": {"size": 8}}


def suite_for(config: dict[str, Any]) -> str:
    """``generative`` when the config names a generative model or an open-ended (``task: vqa``) domain."""
    from medadapt.tiny_generative import TINY_GENERATIVE_NAMES

    if config.get("model") in TINY_GENERATIVE_NAMES or any(d.get("task") == "vqa" for d in config["domains"]):
        return "generative"
    return "dual-encoder"


# -- config and data ----------------------------------------------------------------------------
def remap_path(path: str, data_dir: Path) -> str:
    """A config data path ``../shared/data/x`` -> ``<data_dir>/x``; other relative paths from the repo root."""
    parts = Path(path).parts
    if parts[: len(CONFIG_DATA_PREFIX)] == CONFIG_DATA_PREFIX:
        return str(data_dir.joinpath(*parts[len(CONFIG_DATA_PREFIX):]))
    if not Path(path).is_absolute():
        return str((REPO / path).resolve())
    return path


def base_config(config_path: Path, data_dir: Path, quick: bool, smoke: bool = False) -> dict[str, Any]:
    """The benchmark config as a plain dict: data paths remapped, quick (or smoke) caps applied."""
    import yaml

    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    quick_caps = SUITES[suite_for(data)].quick_caps
    for dom in data["domains"]:
        if dom["data"].get("path"):
            dom["data"]["path"] = remap_path(dom["data"]["path"], data_dir)
        limits = SMOKE["caps"] if smoke else quick_caps.get(dom["name"], {}) if quick else {}
        if limits:
            caps = dict(dom["data"].get("max_samples") or {})
            for split, n in limits.items():
                caps[split] = min(caps.get(split, n), n)
            dom["data"]["max_samples"] = caps
    data["compare_naive"] = False
    if smoke:
        data = merge(data, {k: v for k, v in SMOKE.items() if k != "caps"})
    return data


def missing_data(config: dict[str, Any]) -> list[str]:
    return [d["data"]["path"] for d in config["domains"] if d["data"].get("path") and not Path(d["data"]["path"]).exists()]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


_TEST_CACHE: dict[str, Any] = {}


def test_split(domain_cfg: dict[str, Any]) -> Any:
    """The test split (an ``ImageLabelDataset``) of a config's domain, loaded once per process."""
    from medadapt.data import load_domain

    key = json.dumps(domain_cfg, sort_keys=True, default=str)
    if key not in _TEST_CACHE:
        _TEST_CACHE[key] = load_domain(domain_cfg["name"], domain_cfg.get("labels"), domain_cfg["data"])
    return _TEST_CACHE[key]


def domain_info(config: dict[str, Any]) -> dict[str, Any]:
    """Split sizes and the majority-class reference (predict the train split's most common class)."""
    import numpy as np

    out = {}
    for dom in config["domains"]:
        data = test_split(dom)
        if getattr(data.splits["train"], "open_ended", False):
            out[dom["name"]] = open_answer_prior(data)
            continue
        train, test = np.asarray(data.splits["train"].labels), np.asarray(data.splits["test"].labels)
        major = int(np.bincount(train).argmax())
        out[dom["name"]] = {
            "labels": data.labels,
            "n_train": int(len(train)),
            "n_test": int(len(test)),
            "test_class_counts": np.bincount(test, minlength=len(data.labels)).tolist(),
            "train_majority_class": data.labels[major],
            "majority_baseline_accuracy": float(np.mean(test == major)),
        }
    return out


def open_answer_prior(data: Any) -> dict[str, Any]:
    """An open-ended domain's reference: always give the one answer that scores best on the train split.

    Candidates are the 50 most common train answers and their words; the winner is chosen by train
    token recall (the main metric) and scored on the test split: ``majority_baseline_accuracy`` is
    its test recall ("open accuracy"), the other VQA metrics of it are kept beside.
    """
    from collections import Counter

    from medadapt.vqa_metrics import normalize_answer, score_vqa

    train, test = data.splits["train"], data.splits["test"]
    counts = Counter(normalize_answer(a) for a in train.answers)
    candidates = sorted({a for a, _ in counts.most_common(50)} | {w for a, _ in counts.most_common(50) for w in a.split()})

    def recall(answer: str, refs: list[str]) -> float:
        return score_vqa([answer] * len(refs), refs, ["open"] * len(refs))["open"]["recall"]

    answer = max(candidates, key=lambda a: (recall(a, train.answers), counts[a]))
    scores = score_vqa([answer] * len(test.answers), test.answers, ["open"] * len(test.answers))["open"]
    return {
        "labels": [], "open_ended": True, "n_train": len(train.answers), "n_test": len(test.answers),
        "train_majority_answer": answer, "majority_baseline_accuracy": scores["recall"],
        "majority_baseline_metrics": {"exact_match": scores["accuracy"], "token_f1": scores["token_f1"], "bleu1": scores["bleu1"]},
    }


# -- training and evaluation --------------------------------------------------------------------
def train(config: dict[str, Any], accelerator: Any) -> dict[str, Any]:
    """Train one configured run (overwriting its output dir) and return its results dict."""
    from medadapt.training.config import load_config
    from medadapt.training.trainer import ContinualTrainer

    cfg = load_config(None, defaults=config)
    return ContinualTrainer(cfg, overwrite=True, accelerator=accelerator, progress=False).run()


def finished_run(config: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The results of a finished run in ``run_dir`` trained with exactly ``config`` (same fingerprint), else None.

    Lets seeds be trained by separate processes (``--seeds 1 --reuse-runs`` each) and collected by one."""
    from medadapt.training.config import load_config

    try:
        run = json.loads((run_dir / "run.json").read_text())
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if run.get("fingerprint") == load_config(None, defaults=config).fingerprint() else None


def evaluate_run(run_dir: Path, adapters: dict[str, Any] | Callable[[Any, Path], dict[str, Any]], batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Score a trained run's saved model on its domains' test splits.

    ``adapters`` maps each domain to the adapter that scores it (a domain name = that specialist,
    ``"shared"``, ``"base"`` = frozen model), or is a callable ``(model, run_dir) -> mapping`` that may
    first add adapters to the model (e.g. a merged one). Each domain is scored with its own label
    prompts through the chosen adapter: ``model.predict_proba(images, domain=d, adapter=a)``.
    Returns ``{domain: {"accuracy", "auroc", "n"}}``.
    """
    import numpy as np
    import torch

    from medadapt.evaluation import accuracy, auroc
    from medadapt.model import ContinualVLM

    from transformers.utils import logging as hf_logging

    run = json.loads((run_dir / "run.json").read_text())["config"]
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for every reload
    try:
        model = ContinualVLM.from_pretrained(run_dir)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    mapping = adapters(model, run_dir) if callable(adapters) else adapters
    by_name = {d["name"]: d for d in run["domains"]}
    if model.family.kind == "generative":
        return evaluate_generative(model, mapping, by_name, run["train"]["eval_batch_size"])
    out = {}
    for domain, adapter in mapping.items():
        test = test_split(by_name[domain]).splits["test"]
        probs = []
        for start in range(0, len(test), batch_size):
            images = [test[i][0] for i in range(start, min(start + batch_size, len(test)))]
            probs.append(model.predict_proba(images, domain=domain, adapter=adapter))
        p = torch.cat(probs).numpy()
        y = np.asarray(test.labels)
        out[domain] = {"accuracy": accuracy(y, p), "auroc": float(auroc(y, p)), "n": int(len(y))}
    return out


def evaluate_generative(model: Any, mapping: dict[str, Any], by_name: dict[str, dict[str, Any]], batch_size: int) -> dict[str, dict[str, Any]]:
    """Score a generative run's adapters as the trainer does (closed: label likelihoods, open: generation).

    Besides each task's metrics (``accuracy`` = its main metric: accuracy or token recall), records
    what the adapter answers: the share of each label among closed predictions, and the most common
    generated open answers, so that a forgotten task shows *how* it was forgotten.
    """
    from collections import Counter

    import numpy as np

    from medadapt.evaluation import accuracy, auroc
    from medadapt.training.batches import PixelStore
    from medadapt.training.evaluate import generate_split, predict_split
    from medadapt.vqa_metrics import score_vqa

    store = PixelStore(model.preprocess)
    out: dict[str, dict[str, Any]] = {}
    with model.evaluating():
        for domain, adapter in mapping.items():
            test = test_split(by_name[domain]).splits["test"]
            store.register(domain, "test", test)
            adapter = None if adapter == "base" else adapter
            if model.get_domain(domain).task == "vqa":
                pairs = generate_split(model, store, domain, adapter, batch_size)
                answers = [p for p, _ in pairs]
                s = score_vqa(answers, [r for _, r in pairs], ["open"] * len(pairs))["open"]
                out[domain] = {
                    "accuracy": s["recall"], "exact_match": s["accuracy"], "token_f1": s["token_f1"], "bleu1": s["bleu1"],
                    "n": len(pairs), "distinct_answers": len(set(answers)), "top_answers": Counter(answers).most_common(5),
                }
                continue
            probs, labels = predict_split(model, store, domain, adapter, batch_size)
            share = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / max(len(labels), 1)
            with np.errstate(all="ignore"):
                area = float(auroc(labels, probs))
            out[domain] = {"accuracy": accuracy(labels, probs), "auroc": area, "n": int(len(labels)),
                           "predicted_share": dict(zip(model.get_domain(domain).labels, share.tolist()))}
    return out


def summary(values: list[float | None]) -> dict[str, Any] | None:
    vals = [float(v) for v in values if v is not None and v == v]  # None and NaN left out
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals), "values": vals}


TASK_METRICS = ("exact_match", "token_f1", "bleu1")


def summarise_seeds(per_seed: list[dict[str, Any]], domains: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        key: summary([s.get(key) for s in per_seed]) for key in ("acc", "bwt", "forgetting", "wall_time_s")
    }
    out["final_accuracy"] = {d: summary([s["final"][d]["accuracy"] for s in per_seed]) for d in domains}
    out["final_auroc"] = {d: summary([s["final"][d].get("auroc") for s in per_seed]) for d in domains}
    extra = {d: sorted({k for s in per_seed for k, v in s["final"][d].items() if k in TASK_METRICS}) for d in domains}
    if any(extra.values()):  # per-task metrics of open-ended domains (exact match, token F1, BLEU-1)
        out["final_metrics"] = {d: {k: summary([s["final"][d].get(k) for s in per_seed]) for k in keys} for d, keys in extra.items() if keys}
    shares = {d: sorted({k for s in per_seed for k in s["final"][d].get("predicted_share", {})}) for d in domains}
    if any(shares.values()):
        out["predicted_share"] = {d: {k: summary([s["final"][d].get("predicted_share", {}).get(k) for s in per_seed]) for k in keys}
                                  for d, keys in shares.items() if keys}
    matrices = [s["accuracy_matrix"] for s in per_seed if s.get("accuracy_matrix")]
    if matrices:
        out["accuracy_matrix_mean"] = [
            [statistics.fmean(m[i][j] for m in matrices) for j in range(len(matrices[0][0]))] for i in range(len(matrices[0]))
        ]
    return out


def row_entry(results: dict[str, Any], view: str, final: dict[str, dict[str, float]], seed: int, run_dir: Path) -> dict[str, Any]:
    """One seed of a row: the view's accuracy matrix and metrics, final per-domain metrics."""
    v = results["views"][view]
    single_stage = len(v["accuracy_matrix"]) == 1
    return {
        "seed": seed,
        "run_dir": os.path.relpath(run_dir, REPO),
        "accuracy_matrix": v["accuracy_matrix"],
        "acc": v["acc"],
        "bwt": None if single_stage else v["bwt"],
        "forgetting": None if single_stage else v["forgetting"],
        "final": final,
        "wall_time_s": results["wall_time_s"],
    }


@dataclass
class Bench:
    """Runs every variant for every seed and collects the rows, sensitivity and cross-domain data."""

    config: dict[str, Any]
    seeds: list[int]
    runs_dir: Path
    sizes: list[int]
    sensitivity_seeds: list[int]
    accelerator: Any
    suite: Suite = SUITES["dual-encoder"]
    reuse: bool = False  # take a finished run from its run dir when its config fingerprint matches
    results: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.runs_dir / f"seed{seed}" / variant

    def train(self, variant: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
        key = (variant, seed)
        if key not in self.results:
            out = self.run_dir(variant, seed)
            cfg = merge(self.config, {**overrides, "seed": seed, "output_dir": str(out)})
            results = (self.reuse and finished_run(cfg, out)) or train(cfg, self.accelerator)
            self.results[key] = results
            self.log(
                f"  seed {seed} {variant:<24} ACC {results['acc']:.3f}  BWT {results['bwt']:+.3f}  "
                f"({results['wall_time_s']:.0f} s, load {os.getloadavg()[0]:.1f})"
            )
        return self.results[key]

    def rows(self) -> list[dict[str, Any]]:
        domains = [d["name"] for d in self.config["domains"]]
        variants = {v.key: v for v in self.suite.variants}
        rows = []
        for seed in self.seeds:
            for v in self.suite.variants:
                self.train(v.key, v.overrides, seed)
        for row in self.suite.rows:
            per_seed = []
            for seed in self.seeds:
                results = self.results[(row.variant, seed)]
                run_dir = self.run_dir(row.variant, seed)
                final = evaluate_run(run_dir, {d: VIEW_ADAPTER[row.view](d) for d in domains})
                check = results["views"][row.view]["accuracy_matrix"][-1]
                if any(abs(final[d]["accuracy"] - check[j]) > 1e-6 for j, d in enumerate(domains)):
                    raise RuntimeError(f"{row.key} seed {seed}: reloaded model disagrees with the trainer's evaluation ({final} vs {check})")
                per_seed.append(row_entry(results, row.view, final, seed, run_dir))
            rows.append(self._row(row.key, row.label, row.variant, row.view, row.note, per_seed, variants[row.variant], domains))
        for post in self.suite.post_rows:
            per_seed = []
            for seed in self.seeds:
                run_dir = self.run_dir(post.variant, seed)
                final = evaluate_run(run_dir, post.adapters)
                per_seed.append({
                    "seed": seed, "run_dir": os.path.relpath(run_dir, REPO), "accuracy_matrix": None,
                    "acc": statistics.fmean(m["accuracy"] for m in final.values()), "bwt": None, "forgetting": None,
                    "final": final, "wall_time_s": None,
                })
            rows.append(self._row(post.key, post.label, post.variant, "post-hoc", post.note, per_seed, variants[post.variant], domains))
        return rows

    def _row(self, key: str, label: str, variant: str, view: str, note: str, per_seed: list[dict[str, Any]], v: Variant, domains: list[str]) -> dict[str, Any]:
        cfg = merge(self.config, v.overrides)
        first = self.results[(variant, self.seeds[0])]
        return {
            "key": key, "label": label, "variant": variant, "view": view, "note": note,
            "paradigm": cfg["paradigm"], "rehearsal": cfg.get("rehearsal", {}) if cfg["paradigm"] in ("continual", "rehearsal") else None,
            "stages": first["stages"] if per_seed[0].get("accuracy_matrix") else None,
            "per_seed": per_seed, "summary": summarise_seeds(per_seed, domains),
        }

    def sensitivity(self) -> dict[str, Any]:
        """Continual + rehearsal with each memory size (size 0 = naive continual)."""
        domains = [d["name"] for d in self.config["domains"]]
        reh = self.config.get("rehearsal", {})
        points = []
        for size in self.sizes:
            per_seed = []
            for seed in self.sensitivity_seeds:
                if size == 0:
                    variant, overrides = "continual_naive", {"paradigm": "continual", "rehearsal": {"size": 0}}
                elif size == reh.get("size"):
                    variant, overrides = "continual_rehearsal", {"paradigm": "continual"}
                else:
                    variant, overrides = f"continual_size{size}", {"paradigm": "continual", "rehearsal": {"size": size}}
                results = self.train(variant, overrides, seed)
                final = {d: {"accuracy": results["accuracy_matrix"][-1][j], "auroc": results["auroc"][d]} for j, d in enumerate(domains)}
                per_seed.append(row_entry(results, "shared", final, seed, self.run_dir(variant, seed)))
            points.append({"size": size, "per_seed": per_seed, "summary": summarise_seeds(per_seed, domains)})
        return {
            "paradigm": "continual", "policy": reh.get("policy"), "ratio": reh.get("ratio"),
            "seeds": self.sensitivity_seeds, "points": points,
        }

    def cross_domain(self, source: str = "rehearsal") -> dict[str, Any]:
        """Every adapter of ``source``'s runs on every domain (its label prompts through that adapter)."""
        domains = [d["name"] for d in self.config["domains"]]
        adapters = [*domains, "shared", "base"]
        labels = {d: f"{d} specialist" for d in domains} | {"shared": "shared (rehearsal)", "base": "frozen base (no adapter)"}
        per_seed = []
        for seed in self.seeds:
            run_dir = self.run_dir(source, seed)
            cells = {a: evaluate_run(run_dir, {d: a for d in domains}) for a in adapters}
            per_seed.append({"seed": seed, "accuracy": {a: {d: cells[a][d]["accuracy"] for d in domains} for a in adapters},
                             "auroc": {a: {d: cells[a][d]["auroc"] for d in domains} for a in adapters}})
        acc: dict[str, dict[str, Any]] = {}
        for a in adapters:
            acc[a] = {d: summary([s["accuracy"][a][d] for s in per_seed]) for d in domains}
            acc[a]["mean"] = summary([statistics.fmean(s["accuracy"][a][d] for d in domains) for s in per_seed])
            others = {d: acc[a][d] for d in domains if d != a} if a in domains else None
            if others:
                acc[a]["other_domains_mean"] = summary([statistics.fmean(s["accuracy"][a][d] for d in others) for s in per_seed])
        return {"source": source, "adapters": adapters, "labels": labels, "domains": domains, "seeds": self.seeds,
                "accuracy": acc, "per_seed": per_seed}


def quality_bar(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The issue's bar: rehearsal BWT >= -0.03, naive BWT < -0.03, ACC at least 0.02 above naive (means over seeds)."""
    by_key = {r["key"]: r for r in rows}
    naive = by_key["continual_naive"]
    checks = {}
    for key in ("continual_rehearsal", "rehearsal", "rehearsal_cb200"):
        if key not in by_key:
            continue
        r = by_key[key]
        s, n = r["summary"], naive["summary"]
        passing = 0
        for a, b in zip(r["per_seed"], naive["per_seed"]):
            passing += (a["bwt"] >= QUALITY_BAR["bwt_min"] and b["bwt"] < QUALITY_BAR["naive_bwt_max"] and a["acc"] - b["acc"] >= QUALITY_BAR["acc_gain_min"])
        checks[key] = {
            "label": r["label"], "bwt": s["bwt"]["mean"], "naive_bwt": n["bwt"]["mean"], "acc": s["acc"]["mean"],
            "naive_acc": n["acc"]["mean"], "acc_gain": s["acc"]["mean"] - n["acc"]["mean"],
            "pass": bool(s["bwt"]["mean"] >= QUALITY_BAR["bwt_min"] and n["bwt"]["mean"] < QUALITY_BAR["naive_bwt_max"]
                         and s["acc"]["mean"] - n["acc"]["mean"] >= QUALITY_BAR["acc_gain_min"]),
            "seeds_passing": int(passing), "n_seeds": len(seeds),
        }
    return {**QUALITY_BAR, "on": "means over seeds; seeds_passing counts seeds meeting all three on their own", "checks": checks}


def forgetting_diagnosis(rows: list[dict[str, Any]], info: dict[str, Any], domains: list[str]) -> dict[str, Any]:
    """What each continual row forgets, per domain: main metric right after learning it, at the end,
    the drop, and (closed tasks) the share of the majority label among the final predictions against
    the test split's own share, so that a forgotten task reads as "collapsed to one answer" or not."""
    out: dict[str, Any] = {}
    for row in rows:
        if row["key"] not in ("continual_naive", "continual_rehearsal", "rehearsal") or not row["summary"].get("accuracy_matrix_mean"):
            continue
        matrix, cells = row["summary"]["accuracy_matrix_mean"], {}
        for j, d in enumerate(domains):
            cell = {"just_learned": matrix[j][j], "final": matrix[-1][j], "drop": matrix[j][j] - matrix[-1][j],
                    "prior": info[d]["majority_baseline_accuracy"]}
            share = row["summary"].get("predicted_share", {}).get(d)
            if share and info[d].get("train_majority_class") in share:
                major = info[d]["train_majority_class"]
                counts = info[d]["test_class_counts"]
                cell["majority_label"] = major
                cell["predicted_majority_share"] = share[major]["mean"]
                cell["test_majority_share"] = counts[info[d]["labels"].index(major)] / max(sum(counts), 1)
            tops = [s["final"][d]["top_answers"][0] for s in row["per_seed"] if s["final"][d].get("top_answers")]
            if tops:  # open task: the final adapter's most common answer, per seed, with its share of the test split
                cell["top_answers"] = [[a, n / max(s["final"][d]["n"], 1)] for (a, n), s in zip(tops, row["per_seed"])]
            cells[d] = cell
        out[row["key"]] = cells
    return out


def replay_token_share(config: dict[str, Any], sample: int = 400) -> dict[str, Any] | None:
    """How much of the causal-LM loss replay carries at each stage that replays.

    The generative objective averages the loss over answer tokens, not rows, so a replayed yes/no
    row (a few tokens) weighs less than a new open-answer row. From each domain's mean answer length
    (tokenised as in training, up to ``sample`` train samples) and the replay ratio, returns per stage
    the share of rows and of loss tokens that come from replay (memory mixed in proportion to the
    earlier domains' train sizes, as a reservoir memory holds them). Built-in tiny models only."""
    from medadapt.model import ContinualVLM
    from medadapt.rehearsal import replay_count
    from medadapt.tiny import tiny_base, tiny_names

    if config.get("model") not in tiny_names() or not config.get("rehearsal", {}).get("size"):
        return None
    model = ContinualVLM(tiny_base(config["model"], seed=0))
    tokens, sizes = {}, {}
    for dom in config["domains"]:
        train = test_split(dom).splits["train"]
        question = dom.get("prompt", "{}").split("{}")[0].strip()
        n = min(sample, len(train.labels))
        asked = getattr(train, "questions", None)
        given = getattr(train, "answers", None)
        answers = [given[i] if given is not None else dom["labels"][int(train.labels[i])] for i in range(n)]
        questions = [asked[i] if asked is not None else question for i in range(n)]
        tokens[dom["name"]] = statistics.fmean(len(model.scorer.encode(q, [a]).answers[0]) for q, a in zip(questions, answers))
        sizes[dom["name"]] = len(train.labels)
    batch, ratio = config["train"]["batch_size"], config["rehearsal"]["ratio"]
    replayed = replay_count(batch, ratio)
    names = [d["name"] for d in config["domains"]]
    stages = {}
    for i, d in enumerate(names[1:], start=1):
        earlier = names[:i]
        memory = sum(tokens[e] * sizes[e] for e in earlier) / sum(sizes[e] for e in earlier)
        stages[d] = {"new_rows": batch, "replay_rows": replayed, "new_answer_tokens": tokens[d], "replay_answer_tokens": memory,
                     "replay_row_share": replayed / (batch + replayed),
                     "replay_token_share": replayed * memory / (batch * tokens[d] + replayed * memory)}
    return {"mean_answer_tokens": tokens, "ratio": ratio, "stages": stages}


# -- the real tower's baselines and targets ------------------------------------------------------
QUICK_WALL_MAX_S = 600  # the whole real-tower benchmark in --quick on 2 CPU cores
PROBE_MARGIN = 0.01  # a specialist may trail the linear probe by at most this, in ACC and in AUROC
SPEED_RESULTS = HERE / "results" / "speed.json"


def summarise_baselines(raw: dict[str, Any], domains: list[str]) -> dict[str, Any]:
    """Each baseline's per-domain ACC / AUROC summaries over seeds (the per-seed values kept)."""
    out = {}
    for key, b in raw.items():
        out[key] = {**b, "summary": {
            "final_accuracy": {d: summary([s["final"][d]["accuracy"] for s in b["per_seed"]]) for d in domains},
            "final_auroc": {d: summary([s["final"][d]["auroc"] for s in b["per_seed"]]) for d in domains},
            "train_s": summary([sum(m["train_s"] for m in s["final"].values()) for s in b["per_seed"]]),
        }}
    return out


def real_tower_targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on the real tower, judged from this run's means over seeds."""
    rows = {r["key"]: r for r in result["rows"]}
    probe = result["baselines"]["linear_probe"]["summary"]
    spec = rows["specialized"]["summary"]
    out: dict[str, Any] = {}
    for d in ("pneumonia", "breast"):
        if d not in probe["final_accuracy"]:
            continue
        for metric in ("accuracy", "auroc"):
            ours, base = spec[f"final_{metric}"][d]["mean"], probe[f"final_{metric}"][d]["mean"]
            out[f"specialist_vs_probe_{d}_{metric}"] = {
                "value": round(ours - base, 4), "target": f">= -{PROBE_MARGIN}", "pass": bool(ours - base >= -PROBE_MARGIN - 1e-12),
                "specialist": ours, "linear_probe": base}
    shared, naive = rows["rehearsal"]["summary"], rows["continual_naive"]["summary"]
    out["shared_rehearsal_bwt"] = {"value": round(shared["bwt"]["mean"], 4), "target": f">= {QUALITY_BAR['bwt_min']}",
                                   "pass": bool(shared["bwt"]["mean"] >= QUALITY_BAR["bwt_min"])}
    gain = shared["acc"]["mean"] - naive["acc"]["mean"]
    out["shared_rehearsal_acc_gain_over_naive"] = {"value": round(gain, 4), "target": f">= {QUALITY_BAR['acc_gain_min']}",
                                                   "pass": bool(gain >= QUALITY_BAR["acc_gain_min"]),
                                                   "acc": shared["acc"]["mean"], "naive_acc": naive["acc"]["mean"]}
    if result["quick"] and len(result["seeds"]) == 1 and "--reuse-runs" not in result["command"]:  # the --quick run as shipped
        wall = result["total_wall_time_s"]
        out["quick_wall_time_s"] = {"value": round(wall, 1), "target": f"<= {QUICK_WALL_MAX_S}", "pass": bool(wall <= QUICK_WALL_MAX_S),
                                    "load_average": result["load_average"], "cores": os.cpu_count(),
                                    "process_cpu_s": result.get("process_cpu_s")}
    try:
        speed = json.loads(SPEED_RESULTS.read_text(encoding="utf-8"))["targets"]["cnn_train_step_ratio"]
        out["cnn_train_step_ratio"] = {**{k: speed.get(k) for k in ("value", "target", "pass")}, "source": "benchmarks/results/speed.json"}
    except (OSError, ValueError, KeyError):
        pass
    return out


# -- entry point --------------------------------------------------------------------------------
def environment(threads: int) -> dict[str, Any]:
    import accelerate
    import peft
    import torch
    import transformers

    import medadapt

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "accelerate": accelerate.__version__, "medadapt": getattr(medadapt, "__version__", "?"),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Paradigm benchmark on real medical data (see the module docstring).")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--quick", action="store_true", help=f"1 seed, train caps {QUICK_CAPS}, < 3 min")
    p.add_argument("--smoke", action="store_true", help=f"1 seed, tiny caps and one epoch ({SMOKE}): checks the script runs, numbers meaningless")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON to write (the .md goes beside it; default results/paradigms.json, or results/generative_paradigms.json for a generative config)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="benchmark config (default recipes/configs/medmnist.yaml; recipes/configs/vqa_rad.yaml runs the generative family)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding the real data (default <repo>/../shared/data)")
    p.add_argument("--runs-dir", type=Path, default=None, help="where training runs go (default benchmarks/runs/paradigms[-quick])")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="rehearsal memory sizes for the sensitivity table")
    p.add_argument("--sensitivity-seeds", type=int, nargs="+", default=None, help="seeds for the sensitivity table (default: --seeds)")
    p.add_argument("--reuse-runs", action="store_true",
                   help="use finished runs found in the runs dir with the same config instead of retraining them")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; see the docstring)")
    p.add_argument("--backbone", choices=["config", REAL_TOWER], default="config",
                   help=f"'config': the config's model (tiny-clip); '{REAL_TOWER}': the pretrained tower of "
                        "benchmarks/real_tower.py with head specialists and a shared LoRA (results in paradigms_<backbone>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        print(f"skipping the paradigm benchmark: real data folder {data_dir} not found "
              "(expected <repo>/../shared/data with pneumoniamnist.npz, breastmnist.npz, vqa-rad/; pass --data-dir).")
        return 0
    config = base_config(args.config, data_dir, args.quick, args.smoke)
    if args.backbone == REAL_TOWER:
        sys.path.insert(0, str(HERE))
        import real_tower

        if not real_tower.available():
            print(f"skipping the real-tower paradigm benchmark: {real_tower.missing_reason()}.")
            return 0
        config = merge(config, {**REAL_TOWER_OVERRIDES, "model": str(real_tower.real_tower_base())})
        BACKBONE_TEXT[config["model"]] = real_tower.DESCRIPTION
    suite = SUITES[suite_for(config)]
    if args.backbone == REAL_TOWER:  # merged rows add LoRA specialists; the real tower's specialists are heads
        import dataclasses

        heads = {"specialized": "specialized: one head per domain", "rehearsal_specialists": "rehearsal paradigm: specialists (heads)"}
        # the paradigm rows only: the previous-memory row documents a tiny-clip fix; the memory-size table
        # stays in full runs (--quick must fit 10 min on 2 cores)
        rows = [dataclasses.replace(r, label=heads.get(r.key, r.label)) for r in suite.rows if r.variant not in REAL_TOWER_SKIPPED]
        suite = dataclasses.replace(suite, variants=[v for v in suite.variants if v.key not in REAL_TOWER_SKIPPED], rows=rows,
                                    post_rows=[], cross_domain=False,  # a head scores its own domain's labels only
                                    sensitivity=suite.sensitivity and not (args.quick or args.smoke))
    args.quick = args.quick or args.smoke
    args.out = args.out or (suite.out.with_name(f"paradigms_{REAL_TOWER}.json") if args.backbone == REAL_TOWER else suite.out)
    missing = missing_data(config)
    if missing:
        print(f"skipping the paradigm benchmark: data not found: {', '.join(missing)}")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from accelerate import Accelerator

    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    runs = suite.runs.with_name(suite.runs.name + f"-{REAL_TOWER}") if args.backbone == REAL_TOWER else suite.runs
    runs_dir = args.runs_dir or (runs.with_name(runs.name + "-quick") if args.quick else runs)
    started, load_start, cpu_started = time.perf_counter(), round(os.getloadavg()[0], 1), time.process_time()
    print(f"paradigm benchmark: seeds {seeds}, runs in {runs_dir}, model {config.get('model')}")
    bench = Bench(config, seeds, runs_dir, args.sizes, args.sensitivity_seeds or seeds, Accelerator(cpu=not torch.cuda.is_available()), suite, args.reuse_runs)
    info = domain_info(config)
    rows = bench.rows()
    sensitivity = bench.sensitivity() if suite.sensitivity else None
    cross = bench.cross_domain() if suite.cross_domain else None
    baselines = None
    if args.backbone == REAL_TOWER:  # plain PyTorch loops on the same tower and images, in this run
        import baselines as plain

        print("plain PyTorch baselines (same tower, images, epochs, batch size and seeds):")
        baselines = summarise_baselines(plain.run_baselines(config, seeds, test_split), [d for d in info if not info[d].get("open_ended")])
        baselines["paper_reference"] = plain.PAPER
    model = config.get("model", "tiny-clip")
    result = {
        "benchmark": suite.name,
        "schema": 1,
        "smoke": args.smoke,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "command": "python benchmarks/paradigms.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": os.path.relpath(args.config.resolve(), REPO),
        "data_dir": str(data_dir),
        "runs_dir": os.path.relpath(runs_dir.resolve(), REPO),
        "backbone": {"model": model, "pretrained": args.backbone == REAL_TOWER or model not in BACKBONE_TEXT, "description": BACKBONE_TEXT.get(model, f"`{model}`")},
        "domains": [d["name"] for d in config["domains"]],
        "domain_info": info,
        "settings": {k: config.get(k) for k in ("adapter", "rehearsal", "train")}
        | {"max_samples": {d["name"]: d["data"].get("max_samples") for d in config["domains"]}},
        "seeds": seeds,
        "rows": rows,
        "row_notes": {r["label"]: r["note"] for r in rows if r.get("note")},
        "quality_bar": quality_bar(rows, seeds),
        **({"buffer_sensitivity": sensitivity} if sensitivity is not None else {}),
        **({"cross_domain": cross} if cross is not None else {}),
        **({"baselines": baselines} if baselines is not None else {}),
        **({"forgetting_diagnosis": forgetting_diagnosis(rows, info, [d["name"] for d in config["domains"]]),
            "replay_token_share": replay_token_share(config)} if suite.name == "generative_paradigms" else {}),
        "environment": environment(args.threads),
        "load_average": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
        "total_wall_time_s": time.perf_counter() - started,
        "process_cpu_s": time.process_time() - cpu_started,  # this process's CPU time (1 torch thread): the wall time of an idle core
    }
    if baselines is not None:
        result["targets"] = real_tower_targets(result)
    from medadapt._io import atomic_write_json

    sys.path.insert(0, str(HERE))
    from make_table import render_document, write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    args.out.chmod(0o644)
    md = args.out.with_suffix(".md")
    write_text(md, render_document([args.out], full=True)[0])
    bar = result["quality_bar"]["checks"]
    print("\nquality bar (means over seeds):")
    for key, c in bar.items():
        print(f"  {c['label']}: BWT {c['bwt']:+.3f}, naive BWT {c['naive_bwt']:+.3f}, ACC gain {c['acc_gain']:+.3f} -> "
              f"{'pass' if c['pass'] else 'FAIL'} ({c['seeds_passing']}/{c['n_seeds']} seeds)")
    for key, t in (result.get("targets") or {}).items():
        print(f"  target {key}: {t['value']} ({t['target']}) -> {t['pass']}")
    print(f"\nwrote {args.out} and {md} in {result['total_wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
