"""What a run leaves in ``output_dir``: results.json, accuracy_matrix.png, report.md, run.json."""

from __future__ import annotations

import math
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_json
from ..evaluation import average_accuracy, backward_transfer, forgetting, plot_accuracy_matrix
from ..locking import LOCK_FILES, writer_lock
from .config import ConfigError, RunConfig

RUN_FILE = "run.json"
OWNED = ("run.json", "results.json", "report.md", "accuracy_matrix.png", "manifest.json", "checkpoints", "base", "naive_baseline", "README.md")


def check_output_path(out: Path) -> None:
    """Refuse an ``output_dir`` that is a file, or lies below one (``a_file/run``), before anything is written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} exists and is not a folder; pick another output_dir.")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output_dir {out} lies below {parent}, which is a file, not a folder; pick another output_dir.")
            break


def check_output_dir(config: RunConfig, resume: bool, overwrite: bool) -> None:
    """Refuse an output directory holding another run unless ``resume`` (same run) or ``overwrite``."""
    out = Path(config.output_dir)
    check_output_path(out)
    if not out.exists() or not any(p.name not in LOCK_FILES for p in out.iterdir()):
        if resume:
            raise ConfigError(f"--resume given but {out} holds no run to resume.")
        return
    run_file = out / RUN_FILE
    previous = None
    if run_file.is_file():
        import json

        try:
            previous = json.loads(run_file.read_text()).get("fingerprint")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
            if not overwrite:
                raise ConfigError(f"{run_file} is unreadable ({exc}); use --overwrite or another output_dir.") from exc
            previous = "unreadable"
    if overwrite:
        if previous is None and not (out / "manifest.json").exists():
            raise ConfigError(f"{out} holds files medadapt did not write; refusing to overwrite it. Pick another output_dir.")
        clear_output_dir(out)
        return
    if resume:
        if previous != config.fingerprint():
            raise ConfigError(
                f"--resume: {out} holds a run with another configuration (fingerprint {previous}, this one "
                f"{config.fingerprint()}); use the same config or --overwrite."
            )
        return
    what = "a different run" if previous and previous != config.fingerprint() else "an earlier run"
    raise ConfigError(
        f"output_dir {out} already holds {what}; pass --resume to continue it or --overwrite to replace it (or "
        f"output_dir=ANOTHER_FOLDER to keep it and start a new run beside it)."
    )


def lock_output_dir(config: RunConfig, resume: bool, overwrite: bool) -> ExitStack:
    """Take ``output_dir``'s writer lock for the whole run, then check it (:func:`check_output_dir`).

    A second training into the same output_dir gets :class:`~medadapt.errors.SaveLockedError` naming the first.
    Close the returned stack when the run ends. If the check fails, a folder created only for the lock goes again.
    """
    out = Path(config.output_dir)
    check_output_path(out)
    existed = out.exists()
    stack = ExitStack()
    stack.enter_context(writer_lock(out, "training"))
    try:
        check_output_dir(config, resume, overwrite)
    except BaseException:
        stack.close()
        if not existed and out.is_dir() and all(p.name in LOCK_FILES for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return stack


def clear_output_dir(out: Path) -> None:
    """Remove what medadapt wrote in ``out`` (manifest-listed adapter folders included), nothing else."""
    import json

    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            for entry in json.loads(manifest.read_text()).get("adapters", {}).values():
                path = out / entry.get("path", "")
                if path.is_dir() and path.parent == out:
                    shutil.rmtree(path)
        except (OSError, json.JSONDecodeError):
            pass
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for leftover in out.glob(".checkpoints.*"):  # halves of an atomic swap a kill interrupted
        shutil.rmtree(leftover, ignore_errors=True)


def summarise(matrix: list[list[float]]) -> dict[str, float]:
    """ACC, BWT and forgetting of an accuracy matrix (rows = stages, columns = domains)."""
    R = np.asarray(matrix, dtype=float)
    return {"acc": average_accuracy(R), "bwt": backward_transfer(R), "forgetting": forgetting(R)}


NULL_REASONS_KEY = "null_reasons"


def run_results(config: RunConfig, stages: list[str], primary: str, rows: dict[str, list[list[float]]],
                final: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The part of ``results.json`` every run shares (centralized or federated): paradigm, domains,
    training stages, the primary view's accuracy matrix and its summary, final metrics, and every view."""
    matrix = rows[primary]
    return {
        "paradigm": config.paradigm,
        "rehearsal": config.rehearsal.size > 0 and config.paradigm in ("continual", "rehearsal"),
        "model": config.model,
        "evaluated_adapter": primary,
        "domains": [d.name for d in config.domains],
        "stages": list(stages),
        "accuracy_matrix": matrix,
        **summarise(matrix),
        "final_metrics": final,
        "auroc": {d: m.get("auroc", float("nan")) for d, m in final.items()},
        "views": {view: {"accuracy_matrix": r, **summarise(r)} for view, r in rows.items()},
    }


def _null_reason(path: str) -> str:
    if path.endswith("auroc"):
        return ("AUROC is undefined: the domain's test split holds a single class, or the domain is open-ended "
                "(task vqa, scored by generated answers)")
    return "undefined for this domain (not a finite number)"


def strict_json(data: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """``data`` with every NaN/inf replaced by ``None`` (JSON ``null``), and ``{dotted.path: reason}`` for each."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, {path: _null_reason(path)}
    if isinstance(data, dict):
        out, reasons = {}, {}
        for key, value in data.items():
            out[key], more = strict_json(value, f"{path}.{key}" if path else str(key))
            reasons.update(more)
        return out, reasons
    if isinstance(data, (list, tuple)):
        items, reasons = [], {}
        for i, value in enumerate(data):
            item, more = strict_json(value, f"{path}[{i}]")
            items.append(item)
            reasons.update(more)
        return items, reasons
    return data, {}


def strict_results(results: dict[str, Any]) -> dict[str, Any]:
    """Results fit for strict JSON: NaN/inf become ``null``, each listed with its reason under ``null_reasons``."""
    clean, reasons = strict_json({k: v for k, v in results.items() if k != NULL_REASONS_KEY})
    if reasons:
        clean[NULL_REASONS_KEY] = reasons
    return clean


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """results.json (strict JSON, see :func:`strict_results`), accuracy_matrix.png and report.md (main process only)."""
    atomic_write_json(out / "results.json", strict_results(results))
    plot_accuracy_matrix(
        np.asarray(results["accuracy_matrix"], dtype=float),
        results["domains"],
        out / "accuracy_matrix.png",
        title=f"{results['paradigm']} ({results['evaluated_adapter']}): accuracy after each stage",
        stages=results["stages"],
    )
    atomic_write_bytes(out / "report.md", render_report(results).encode())


def matrix_table(results: dict[str, Any], key: str = "accuracy_matrix") -> str:
    domains = results["domains"]
    lines = ["| after stage | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    for stage, row in zip(results["stages"], results[key]):
        lines.append(f"| {stage} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def render_report(results: dict[str, Any]) -> str:
    """A short markdown report of a run."""
    lines = [
        f"# medadapt run: {results['paradigm']}",
        "",
        f"Model: `{results['model']}`. Evaluated adapter: `{results['evaluated_adapter']}`. "
        f"Wall time {results['wall_time_s']:.1f} s on {results['num_processes']} process(es).",
        "",
        "## Accuracy matrix (row i = after training stage i, column j = domain j's test split)",
        "",
        matrix_table(results),
        "",
        f"ACC {results['acc']:.3f} | BWT {results['bwt']:+.3f} | forgetting {results['forgetting']:.3f}",
        "",
        "## Per-domain AUROC (after the last stage)",
        "",
        "| domain | accuracy | AUROC |",
        "|---|---|---|",
    ]
    for d in results["domains"]:
        m = results["final_metrics"][d]
        lines.append(f"| {d} | {_fmt(m['accuracy'])} | {_fmt(m['auroc'])} |")
    if results.get("specialist_accuracy_matrix"):
        lines += ["", "## Specialist adapters (each domain through its own adapter)", "", matrix_table(results, "specialist_accuracy_matrix")]
    if results.get("naive_comparison"):
        c = results["naive_comparison"]
        lines += [
            "",
            "## Against naive sequential training (no rehearsal)",
            "",
            "| run | ACC | BWT | forgetting |",
            "|---|---|---|---|",
            f"| {results['paradigm']} | {results['acc']:.3f} | {results['bwt']:+.3f} | {results['forgetting']:.3f} |",
            f"| naive continual | {c['acc']:.3f} | {c['bwt']:+.3f} | {c['forgetting']:.3f} |",
        ]
    return "\n".join(lines) + "\n"
