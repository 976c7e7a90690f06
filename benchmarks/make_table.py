#!/usr/bin/env python
"""Render the benchmark JSON files in ``benchmarks/results/`` as markdown tables.

The JSON files are the source of truth; this script only formats them. Run from anywhere::

    python benchmarks/make_table.py                       # writes benchmarks/results/README_tables.md
    python benchmarks/make_table.py --out - paradigms.json  # print one file's tables
    python benchmarks/make_table.py --full --out benchmarks/results/paradigms.md paradigms.json  # re-render the full report

``paradigms.json`` (from ``benchmarks/paradigms.py``), ``speed.json`` (from
``benchmarks/speed.py``), ``gpu.json`` (from ``benchmarks/gpu.py``), the generative ones and ``serving.json``
(from ``benchmarks/serving.py``) have renderers; any other JSON file is listed as not rendered.
``benchmarks/paradigms.py`` writes ``paradigms.md`` with :func:`render_document` (``full=True``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "README_tables.md"


# -- formatting helpers -------------------------------------------------------------------------
def pm(stat: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``mean ± std`` of a summary ``{"mean", "std", "n"}`` (``n/a`` when missing)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    value = stat["mean"] if round(stat["mean"], digits) != 0 else 0.0  # no "-0.000"
    mean = f"{value:{sign}.{digits}f}"
    if stat.get("n", 1) > 1 and stat.get("std") is not None:
        return f"{mean} ± {stat['std']:.{digits}f}"
    return mean


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _seconds(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.0f}"


# -- paradigms.json -----------------------------------------------------------------------------
def paradigms_headline(data: dict[str, Any]) -> str:
    """One row per paradigm: per-domain final accuracy, ACC, BWT, forgetting, wall time."""
    domains = data["domains"]
    header = ["paradigm (evaluated adapter)", *domains, "ACC", "BWT", "forgetting", "train s/run"]
    rows = []
    for row in data["rows"]:
        s = row["summary"]
        rows.append(
            [row["label"]]
            + [pm(s["final_accuracy"].get(d)) for d in domains]
            + [pm(s["acc"]), pm(s.get("bwt"), signed=True), pm(s.get("forgetting")), _seconds(s.get("wall_time_s"))]
        )
    info = data.get("domain_info")
    if info:
        ref = [info[d]["majority_baseline_accuracy"] for d in domains]
        rows.append(["_reference: always the train split's majority class_"] + [f"{v:.3f}" for v in ref] + [f"{sum(ref) / len(ref):.3f}", "", "", ""])
    return table(header, rows)


def paradigms_auroc(data: dict[str, Any]) -> str:
    domains = data["domains"]
    rows = [[row["label"]] + [pm(row["summary"]["final_auroc"].get(d)) for d in domains] for row in data["rows"]]
    return table(["paradigm (evaluated adapter)", *domains], rows)


def paradigms_sensitivity(data: dict[str, Any]) -> str:
    sens = data.get("buffer_sensitivity")
    if not sens or not sens.get("points"):
        return ""
    domains = data["domains"]
    header = ["buffer size", *domains, "ACC", "BWT", "forgetting"]
    rows = []
    for p in sens["points"]:
        s = p["summary"]
        rows.append([str(p["size"])] + [pm(s["final_accuracy"].get(d)) for d in domains] + [pm(s["acc"]), pm(s["bwt"], signed=True), pm(s["forgetting"])])
    return table(header, rows)


def paradigms_cross_domain(data: dict[str, Any]) -> str:
    cross = data.get("cross_domain")
    if not cross:
        return ""
    domains = cross["domains"]
    header = ["adapter \\ test domain", *domains, "mean"]
    rows = []
    for adapter in cross["adapters"]:
        cells = cross["accuracy"][adapter]
        label = cross.get("labels", {}).get(adapter, adapter)
        rows.append([label] + [pm(cells.get(d)) for d in domains] + [pm(cells.get("mean"))])
    ref = data.get("domain_info", {})
    if ref:
        rows.append(["majority class of train split (reference)"] + [f"{ref[d]['majority_baseline_accuracy']:.3f}" for d in domains] + [""])
    return table(header, rows)


def paradigms_quality_bar(data: dict[str, Any]) -> str:
    bar = data.get("quality_bar")
    if not bar:
        return ""
    header = ["run vs naive continual", "BWT (>= %.2f)" % bar["bwt_min"], "naive BWT (< %.2f)" % bar["naive_bwt_max"], "ACC gain (>= %.2f)" % bar["acc_gain_min"], "seeds passing", "pass"]
    rows = []
    for key, r in bar["checks"].items():
        rows.append([
            r["label"], f"{r['bwt']:+.3f}", f"{r['naive_bwt']:+.3f}", f"{r['acc_gain']:+.3f}",
            f"{r['seeds_passing']}/{r['n_seeds']}", "yes" if r["pass"] else "**no**",
        ])
    return table(header, rows)


def _backbone_line(data: dict[str, Any]) -> str:
    return f"Backbone: {data['backbone']['description']}"


def _adapter_text(adapter: dict[str, Any]) -> str:
    if adapter.get("type") == "head":
        return f"head (init {adapter.get('head_init', 'auto')})"
    return f"{adapter['type']} r={adapter.get('r')}"


def _setup_line(data: dict[str, Any]) -> str:
    seeds = data["seeds"]
    st = data["settings"]
    reh = st["rehearsal"]
    tr = st["train"]
    caps = ", ".join(f"{d} {data['domain_info'][d]['n_train']}/{data['domain_info'][d]['n_test']}" for d in data["domains"])
    env = data.get("environment", {})
    return (
        f"Data (train/test images): {caps}. {len(seeds)} seed(s) {seeds}; mean ± std (sample std over seeds). "
        f"Adapter {_adapter_text(st['adapter'])}; {tr['epochs']} epochs, batch {tr['batch_size']}, lr {tr['lr']}; "
        f"rehearsal memory {reh['size']} ({reh['policy']}), replay ratio {reh['ratio']}. "
        f"CPU, {env.get('torch_threads', '?')} torch thread(s), {env.get('cpu_count', '?')} cores shared with other jobs "
        f"(load average {data.get('load_average', {}).get('start', '?')}); total {data.get('total_wall_time_s', 0):.0f} s."
    )


def real_tower_baselines(data: dict[str, Any]) -> str:
    """medadapt's specialists against the plain PyTorch baselines of the same run and the paper row."""
    b = data["baselines"]
    domains = [d for d in data["domains"] if d in b["linear_probe"]["summary"]["final_accuracy"]]
    header = ["run", *[f"{d} ACC / AUROC" for d in domains]]
    rows = []
    for row in data["rows"]:
        if row["key"] in ("specialized", "rehearsal"):
            s = row["summary"]
            rows.append([f"medadapt {row['label']}"] + [f"{pm(s['final_accuracy'].get(d))} / {pm(s['final_auroc'].get(d))}" for d in domains])
    for key in ("linear_probe", "full_finetune"):
        s = b[key]["summary"]
        rows.append([f"{b[key]['label']}, lr {b[key]['lr']:g}"] + [f"{pm(s['final_accuracy'][d])} / {pm(s['final_auroc'][d])}" for d in domains])
    paper = b.get("paper_reference")
    if paper:
        rows.append([f"_{paper['label']}_ (published)"]
                    + [f"{paper['accuracy'][d]:.3f} / {paper['auroc'][d]:.3f}" if d in paper["accuracy"] else "n/a" for d in domains])
    return table(header, rows)


def real_tower_targets(data: dict[str, Any]) -> str:
    rows = []
    order = ["specialist_vs_probe", "shared_rehearsal_bwt", "shared_rehearsal_acc", "cnn_train_step_ratio", "quick_wall_time_s"]
    targets = sorted((data.get("targets") or {}).items(), key=lambda kv: (next((i for i, o in enumerate(order) if kv[0].startswith(o)), 9), kv[0]))
    for key, t in targets:
        value = t.get("value")
        rows.append([f"`{key}`", "n/a" if value is None else f"{value:+.3f}" if key.startswith(("specialist", "shared")) else f"{value:.3f}",
                     t.get("target") or "", "" if t.get("pass") is None else ("yes" if t["pass"] else "**no**")])
    return table(["figure", "value", "target", "pass"], rows)


def render_paradigms(data: dict[str, Any], full: bool = True) -> str:
    """Markdown for a ``paradigms.json``; ``full`` adds the quality bar, matrices and notes."""
    real = "baselines" in data
    title = "Continual-learning paradigms on real medical data"
    if real:
        title += ", real pretrained image tower (EfficientNet-Lite0)"
    parts = [
        "## " + title + (" (quick run)" if data.get("quick") else ""),
        "",
        "PneumoniaMNIST -> BreastMNIST -> VQA-RAD organ (head/chest/abdomen), learned in that order. "
        "Per-domain columns: test accuracy after the last stage. ACC = mean of those; BWT = mean change on "
        "earlier domains between right after learning them and the end (negative = forgetting); "
        "forgetting = mean drop from each earlier domain's best accuracy.",
        "",
        paradigms_headline(data),
        "",
        _backbone_line(data),
        "",
        _setup_line(data),
    ]
    if real:
        parts += [
            "", "Specialists are `head` adapters (a linear head over the frozen tower's pooled features, see "
            "[the head adapter kind](#the-head-adapter-kind-a-linear-head-over-frozen-image-features)); the shared adapter is a LoRA on the "
            "tower's default CNN targets. Below: the same run's plain PyTorch baselines on the same tower, images, epochs, "
            "batch size and seeds, and the MedMNIST v2 paper's reference row.",
            "", real_tower_baselines(data),
            "", f"Reference: {data['baselines']['paper_reference']['citation']}",
            "", "Targets (means over seeds; specialist rows: specialist minus linear probe):", "", real_tower_targets(data),
        ]
    else:
        parts += [
            "",
            "BreastMNIST accuracy sits at or near its majority-class rate for every paradigm (this random-weight backbone "
            "separates its classes only weakly; AUROC in `paradigms.md`), so its BWT mostly measures whether an adapter keeps "
            "that class prior; the class-balanced memory row shows what happens when replay changes it.",
        ]
    notes = data.get("row_notes") or {}
    if notes and full:
        parts += ["", *[f"- **{label}**: {text}" for label, text in notes.items()]]
    if full:
        parts += [
            "", "### AUROC after the last stage",
            "",
            "BreastMNIST test is 27% malignant; AUROC shows how well each adapter ranks its cases regardless of the threshold.",
            "", paradigms_auroc(data),
        ]
    if data.get("quality_bar"):
        parts += ["", "### Quality bar: rehearsal against naive continual training", "", paradigms_quality_bar(data)]
    sens = paradigms_sensitivity(data)
    if sens:
        s = data["buffer_sensitivity"]
        parts += [
            "", "### Rehearsal memory size",
            "",
            f"`{s['paradigm']}` paradigm, `{s['policy']}` memory, replay ratio {s['ratio']}; size 0 is naive continual training. "
            f"{len(s['seeds'])} seed(s) {s['seeds']}.",
            "", sens,
        ]
    cross = paradigms_cross_domain(data)
    if cross:
        c = data["cross_domain"]
        parts += [
            "", "### Cross-domain generalisation of the adapters",
            "",
            f"Test accuracy of each adapter (rows) on each domain's test split (columns), scoring that domain's label prompts "
            f"through the adapter (`model.predict_proba(images, domain=column, adapter=row)`); adapters from the "
            f"`{c['source']}` paradigm's runs after the last stage, {len(c['seeds'])} seed(s). Off-diagonal specialist cells "
            "are domains the specialist never saw.",
            "", cross,
        ]
    if full:
        parts += ["", "### Mean accuracy matrices (row = after stage, column = test domain)", ""]
        for row in data["rows"]:
            matrix = row["summary"].get("accuracy_matrix_mean")
            if not matrix:
                continue
            stages = row.get("stages") or [f"stage {i + 1}" for i in range(len(matrix))]
            parts += [f"**{row['label']}**", "", table(["after stage", *data["domains"]], [[s] + [f"{v:.3f}" for v in r] for s, r in zip(stages, matrix)]), ""]
    return "\n".join(parts).rstrip() + "\n"


# -- speed.json ---------------------------------------------------------------------------------
def render_speed(data: dict[str, Any], full: bool = True) -> str:
    targets = data.get("targets") or {}
    rows = []
    for key, t in targets.items():
        value = t.get("value")
        passed = t.get("pass")
        rows.append([f"`{key}`", "n/a" if value is None else f"{value:.3f}", t.get("target") or "(reported)", "" if passed is None else ("yes" if passed else "**no**")])
    machine = data.get("machine", {})
    note = (
        f"Mode `{data.get('mode')}`, clock `{data.get('clock')}`, {machine.get('torch_threads', '?')} torch thread(s) on "
        f"{machine.get('cpu_count', '?')} CPU cores ({machine.get('cpu_model', '?')}); {data.get('total_seconds', 0):.0f} s in all."
    )
    missed = [f"- `{key}` misses its target: {t['cause']}." for key, t in targets.items() if t.get("pass") is False and t.get("cause")]
    parts = ["## Speed (CPU)", "", table(["measure", "value", "target", "pass"], rows), ""]
    if missed:
        parts += ["Measured causes of the missed targets:", "", *missed, ""]
    return "\n".join([*parts, note]) + "\n"


# -- generative_paradigms.json and generative_speed.json -------------------------------------------
GENERATIVE_TASK_COLUMNS = [("accuracy", "final_accuracy", "main"), ("auroc", "final_auroc", "AUROC")]
OPEN_METRICS = [("exact_match", "exact match"), ("token_f1", "token F1"), ("bleu1", "BLEU-1")]


def generative_task_metrics(data: dict[str, Any]) -> str:
    """Every per-task metric after the last stage: closed tasks accuracy + AUROC, open tasks recall + EM, F1, BLEU-1."""
    info = data["domain_info"]
    header, cells = ["paradigm (evaluated adapter)"], []
    for d in data["domains"]:
        if info[d].get("open_ended"):
            header += [f"{d} recall"] + [f"{d} {name}" for _, name in OPEN_METRICS]
            cells.append(lambda s, d=d: [pm(s["final_accuracy"].get(d))] + [pm(s.get("final_metrics", {}).get(d, {}).get(k)) for k, _ in OPEN_METRICS])
        else:
            header += [f"{d} accuracy", f"{d} AUROC"]
            cells.append(lambda s, d=d: [pm(s["final_accuracy"].get(d)), pm(s["final_auroc"].get(d))])
    rows = [[row["label"]] + [c for fn in cells for c in fn(row["summary"])] for row in data["rows"]]
    ref = ["_reference: majority class / most common answer_"]
    for d in data["domains"]:
        m = info[d]
        ref += [f"{m['majority_baseline_accuracy']:.3f}"] + (
            [f"{m['majority_baseline_metrics'][k]:.3f}" for k, _ in OPEN_METRICS] if m.get("open_ended") else [""]
        )
    return table(header, rows + [ref])


def generative_forgetting(data: dict[str, Any]) -> str:
    diag = data.get("forgetting_diagnosis") or {}
    labels = {r["key"]: r["label"] for r in data["rows"]}
    rows = []
    for key, cells in diag.items():
        for d in [d for d in data["domains"] if d in cells]:
            c = cells[d]
            share = (f"{c['predicted_majority_share']:.2f} '{c['majority_label']}' (test {c['test_majority_share']:.2f})"
                     if "predicted_majority_share" in c else
                     ", ".join(f"{n:.2f} '{a}'" for a, n in c.get("top_answers", [])) + " (top answer per seed)" if c.get("top_answers") else "")
            rows.append([labels.get(key, key), d, f"{c['just_learned']:.3f}", f"{c['final']:.3f}", f"{c['drop']:+.3f}", f"{c['prior']:.3f}", share])
    return table(["run", "task", "right after learning it", "after the last stage", "drop", "prior", "final share of majority answer"], rows) if rows else ""


def render_generative_paradigms(data: dict[str, Any], full: bool = True) -> str:
    """Markdown for a ``generative_paradigms.json`` (benchmarks/paradigms.py on recipes/configs/vqa_rad.yaml)."""
    info = data["domain_info"]
    refs = "; ".join(
        f"{d}: always '{info[d].get('train_majority_answer') or info[d].get('train_majority_class')}' scores {info[d]['majority_baseline_accuracy']:.3f}"
        for d in data["domains"]
    )
    parts = [
        "## Generative family: continual-learning paradigms on real medical data" + (" (quick run)" if data.get("quick") else ""),
        "",
        "PneumoniaMNIST posed as a yes/no question -> VQA-RAD closed (yes/no) questions -> VQA-RAD open questions "
        "(free-text answers, generated), learned in that order by one image-text-to-text model. Per-task columns: each "
        "task's main metric after the last stage (closed: accuracy of the most likely label; open: token recall of the "
        "greedy answer, \"open accuracy\"). ACC, BWT and forgetting are computed on those main metrics.",
        "",
        paradigms_headline(data),
        "",
        f"Reference rows use the train split's majority label, or for the open task the constant answer with the best train "
        f"recall ({refs}).",
        "",
        _backbone_line(data),
        "",
        _setup_line(data),
    ]
    if data.get("quality_bar"):
        parts += ["", "### Quality bar: rehearsal against naive continual training", "", paradigms_quality_bar(data)]
    parts += ["", "### Per-task metrics after the last stage", "", generative_task_metrics(data)]
    forgetting = generative_forgetting(data)
    if forgetting:
        parts += [
            "", "### What is forgotten",
            "",
            "Main metric of each task right after its own stage and after the last stage (means over seeds); for closed "
            "tasks, how often the final adapter answers the majority label, against its share in the test split; for the "
            "open task, the final adapter's most common generated answer and how often it gives it.",
            "", forgetting,
        ]
    share = data.get("replay_token_share")
    if share and share.get("stages"):
        parts += ["", "Replay's weight in the loss (the causal-LM loss averages over answer tokens, not rows): " + "; ".join(
            f"stage {d}: replay is {c['replay_row_share']:.0%} of the rows but {c['replay_token_share']:.0%} of the answer tokens "
            f"({c['replay_answer_tokens']:.1f} vs {c['new_answer_tokens']:.1f} tokens a row)" for d, c in share["stages"].items()) + "."]
    notes = data.get("row_notes") or {}
    if notes and full:
        parts += ["", *[f"- **{label}**: {text}" for label, text in notes.items()]]
    if full:
        parts += ["", "### Mean accuracy matrices (row = after stage, column = task; main metric)", ""]
        for row in data["rows"]:
            matrix = row["summary"].get("accuracy_matrix_mean")
            if matrix:
                stages = row.get("stages") or [f"stage {i + 1}" for i in range(len(matrix))]
                parts += [f"**{row['label']}**", "", table(["after stage", *data["domains"]], [[s] + [f"{v:.3f}" for v in r] for s, r in zip(stages, matrix)]), ""]
    return "\n".join(parts).rstrip() + "\n"


def render_generative_speed(data: dict[str, Any], full: bool = True) -> str:
    """Markdown for ``generative_speed.json``: the speed table with the generative title, plus each miss's measured cause."""
    body = render_speed(data, full).replace("## Speed (CPU)", "## Generative family speed (CPU)", 1)
    causes = [f"- `{k}`: {t['cause']}" for k, t in (data.get("targets") or {}).items() if t.get("cause")]
    return body + ("\n" + "\n".join(causes) + "\n" if causes else "")


GENERATIVE_RENDERERS = {"generative_paradigms": render_generative_paradigms, "generative_speed": render_generative_speed}


# -- gpu.json (benchmarks/gpu.py) ------------------------------------------------------------------
GPU_ROWS = [
    ("trl_time_ratio", "train step time vs TRL SFTTrainer (same LoRA, batch, tokens)"),
    ("trl_memory_ratio", "train step peak memory vs TRL SFTTrainer"),
    ("trl_epoch2_throughput_ratio", "LM-only stage, epoch 2 (image tokens cached): TRL step time / ours"),
    ("trl_epoch1_time_ratio", "LM-only stage, epoch 1 (image tokens being cached): our step time / TRL's"),
    ("grad_ckpt_memory_ratio", "peak memory with / without gradient checkpointing (Gemma 3 4B)"),
    ("gemma3_4b_bf16_gc_batch8_peak_gb", "Gemma 3 4B, bf16 + gradient checkpointing, batch 8: peak GB"),
    ("qlora_memory_ratio", "LLaVA-1.5-7B peak memory, 4-bit / bf16"),
    ("qlora_time_ratio", "LLaVA-1.5-7B step time, 4-bit / bf16"),
    ("generate_8_vs_1_adapters", "generate, 8 adapters in one batch / 1 adapter"),
    ("score_5_vs_1_labels", "label scoring, 5 labels / 1"),
]


def render_gpu(data: dict[str, Any], full: bool = True) -> str:
    """Markdown for ``gpu.json``: every ratio with its target; a value that was not measured says why."""
    targets, reasons = data.get("targets") or {}, data.get("null_reasons") or {}
    rows = []
    for key, what in GPU_ROWS:
        value, target = data.get(key), targets.get(key) or {}
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else f"not measured ({reasons.get(key, 'no value')})"
        passed = target.get("pass")
        rows.append([what, f"`{key}`", shown, target.get("target") or "(reported)", "" if passed is None else ("yes" if passed else "**no**")])
    title = "## GPU (" + str(data.get("device", "?")) + (", smoke run: numbers mean nothing" if data.get("mode") == "smoke" else "") + ")"
    return "\n".join([title, "", table(["measure", "key", "value", "target", "pass"], rows), "",
                      f"Mode `{data.get('mode')}`; {data.get('total_seconds', 0):.0f} s in all."]) + "\n"


FEDERATED_ROWS = [
    ("centralized_rehearsal", "centralized rehearsal (pooled data)"),
    ("centralized_joint", "centralized joint"),
    ("federated_fedavg", "federated rehearsal, FedAvg"),
    ("federated_exact", "federated rehearsal, exact (FFA-LoRA)"),
    ("federated_naive", "federated naive (no rehearsal)"),
    ("federated_fedavg_fresh_optimizer", "FedAvg, optimizer restarted every round, sample weights (before the fix)"),
    ("federated_fedavg_sample_weights", "FedAvg, optimizer kept, sample weights"),
    ("federated_fedavg_secure", "federated rehearsal, FedAvg under SecAgg+"),
    ("local_only", "local-only (mean of sites)"),
]


def render_federated(data: dict[str, Any], full: bool = True) -> str:
    """Markdown for ``federated.json``: ACC/BWT per row (mean ± std over seeds, each seed's ACC), the
    targets with their measured values, and the communication figures."""
    rows_in = data.get("rows") or {}

    def pm(row: dict[str, Any], key: str) -> str:
        value, std = row.get(key), row.get(f"{key}_std")
        if not isinstance(value, (int, float)):
            return "n/a"
        shown = f"{value:+.3f}" if key == "bwt" else f"{value:.3f}"
        return shown if std is None else f"{shown} ± {std:.3f}"

    rows = []
    for key, what in FEDERATED_ROWS:
        row = rows_in.get(key)
        if row is None:
            continue
        seeds = ", ".join(f"{r['acc']:.3f}" for r in row.get("per_seed", []) if isinstance(r.get("acc"), (int, float)))
        rows.append([what, pm(row, "acc"), pm(row, "bwt"), seeds])
    targets = [[f"`{k}`", f"{t['value']:+.3f}" if isinstance(t.get("value"), (int, float)) else "n/a", t.get("target", ""),
                "yes" if t.get("pass") else "**no**"] for k, t in (data.get("targets") or {}).items()]
    base, per_round = data.get("base_bytes") or 0, data.get("bytes_per_site_round") or 0
    comm = (f"Bytes sent per site per round (FedAvg): {per_round:,.0f} ({per_round / base:.2f}x the base's {base:,.0f}); "
            f"{(data.get('bytes_to_final') or 0) / 1e6:.1f} MB in all to the final ACC; "
            f"{data.get('quick_wall_s', 0):.0f} s per quick federated simulation run.") if base else ""
    traffic = (data.get("measurements") or {}).get("traffic") or {}
    if comm and traffic.get("secure_bytes_per_site_round"):
        comm += (f" Under SecAgg+: {traffic['secure_bytes_per_site_round']:,.0f} bytes per site per round "
                 f"({traffic.get('secure_bytes_over_fedavg', 0):.2f}x FedAvg's: masked 64-bit integers, and a second slot for the shared adapter where some sites only rehearse), "
                 f"{traffic.get('secure_wall_s', 0):.0f} s per run.")
    title = "## Federated continual training (Flower simulation, 3 sites)" + (" (quick: 1 seed)" if data.get("quick") else "")
    return "\n".join([title, "", table(["row", "ACC", "BWT", "ACC per seed"], rows), "",
                      table(["target", "value", "target", "pass"], targets), "", comm]).rstrip() + "\n"


RENDERERS: dict[str, Callable[[dict[str, Any], bool], str]] = {"paradigms": render_paradigms, "speed": render_speed, "gpu": render_gpu,
                                                             "federated": render_federated}
RENDERERS.update(GENERATIVE_RENDERERS)
RENDERERS["serving"] = lambda data, full=True: render_speed(data, full).replace("## Speed (CPU)", "## Serving from threads (CPU)", 1)


def kind_of(path: Path, data: dict[str, Any]) -> str:
    return str(data.get("benchmark") or path.stem)


def render_file(path: Path, full: bool = False) -> str | None:
    data = json.loads(path.read_text(encoding="utf-8"))
    renderer = RENDERERS.get(kind_of(path, data))
    return renderer(data, full) if renderer else None


def render_document(files: list[Path], full: bool = False) -> tuple[str, list[str]]:
    """Markdown for ``files`` (paradigms first), and the names of files no renderer knows."""
    order = {"paradigms": 0, "paradigms_efficientnet-lite0": 0.5, "speed": 1}
    files = sorted(files, key=lambda p: (order.get(p.stem, 9), p.name))
    parts = ["<!-- generated by benchmarks/make_table.py from benchmarks/results/*.json; do not edit by hand -->", ""]
    skipped = []
    for path in files:
        text = render_file(path, full)
        if text is None:
            skipped.append(path.name)
            continue
        parts += [text.rstrip(), "", f"_Source: `benchmarks/results/{path.name}`._", ""]
    return "\n".join(parts).rstrip() + "\n", skipped


def write_text(path: Path, text: str) -> None:
    """Atomic write, readable by everyone (like the other files in the repository)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medadapt._io import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
    path.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="JSON files (default: every benchmarks/results/*.json)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file to write, or - for stdout")
    parser.add_argument("--full", action="store_true", help="include the detailed sections (AUROC, notes, matrices)")
    parser.add_argument("--readme", default=None, help="also replace the tables between the benchmark markers of this README")
    args = parser.parse_args(argv)
    files = [Path(f) if Path(f).exists() else RESULTS / f for f in args.files] or sorted(RESULTS.glob("*.json"))
    text, skipped = render_document(files, args.full)
    if skipped:
        print(f"no renderer for: {', '.join(skipped)} (left out)", file=sys.stderr)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        write_text(Path(args.out), text)
        print(f"wrote {args.out}")
    if args.readme:
        update_readme(Path(args.readme), text)
        print(f"updated {args.readme}")
    return 0


README_START, README_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def update_readme(path: Path, tables: str) -> None:
    """Replace what lies between the README's benchmark markers with ``tables`` (headings demoted)."""
    readme = path.read_text(encoding="utf-8")
    if README_START not in readme or README_END not in readme:
        raise SystemExit(f"{path} has no {README_START} ... {README_END} markers")
    body = "\n".join("#" + line if line.startswith("#") else line for line in tables.strip().splitlines())
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    write_text(path, f"{head}{README_START}\n{body}\n{README_END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
