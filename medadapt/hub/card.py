"""Model cards for published stage repos, rendered from the Jinja templates in ``hub_cards/``.

The card is built from the repo's ``manifest.json`` (what the repo holds) plus optional training results:

``results`` (a dict, a path to a ``results.json``, or ``model.extras["results"]``) may hold
    ``accuracy_matrix``  ``R[i][j]`` = accuracy on domain ``j`` after stage ``i`` (see :mod:`medadapt.evaluation`);
    ``domains``          the matrix columns (default: the domains in stage order);
    ``stages``           the matrix rows (default: the first ``len(R)`` domains in stage order);
    ``metrics``          ``{domain: {metric: value}}`` (default: accuracy from the matrix's last row);
    ``datasets``         ``{domain: "hub/dataset-id"}`` (also read from a domain's ``metadata["dataset"]``);
    ``split``            the evaluation split (default ``"test"``).

Metadata follows the Hub's conventions for adapter repos (issue 20): ``base_model`` (an open_clip
``hf-hub:org/name`` base is ``org/name``), ``base_model_relation: adapter``, ``pipeline_tag`` of the base's
family, the base's licence carried over (or an explicit ``license=``), and each metric filed under the task
it measures (see :func:`task_of`).

``library_name`` is ``medadapt``, not ``peft``, on purpose. The Hub's "Use this model" button builds its
snippet from ``library_name``: for ``peft`` it reads the repo root's ``adapter_config.json`` and prints
``PeftModel.from_pretrained(base, "<repo>")``, which cannot load a medadapt repo: the root holds
``manifest.json`` and one folder per stage (prompt adapters are not peft adapters at all), so that snippet
would fail. ``medadapt`` is not a library the Hub knows, so it shows no snippet rather than a wrong one, and
the card's own "How to use" section gives the working code (``ContinualVLM.from_pretrained`` and, per LoRA
stage, plain peft with ``subfolder=``).

Cards written by medadapt carry :data:`CARD_MARKER`; a README without it was written by someone else and is
never overwritten silently (see :func:`medadapt.hub.push.push_model`).
"""

from __future__ import annotations

import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..version import __version__
from ..adapters import LORA, adapter_kind
from ..errors import ConfigError, StorageError, UnsupportedBackboneError
from ..families import BackboneFamily, family_by_name, family_for_model_type

CARD_MARKER = "<!-- medadapt:model-card"
TEMPLATE_NAME = "medadapt_card.md"
TAGS = ("medadapt", "medical", "continual-learning", "vision-language")
LIBRARY_NAME = "medadapt"  # why not "peft": see the module docstring
OPEN_CLIP_PREFIX = "hf-hub:"
#: medadapt metric name -> (Hub metric type, shown name), per task. A vqa domain's "accuracy" is the
#: token recall of free-text answers (medadapt.training.evaluate), so it is filed as recall.
VQA_METRICS = {"accuracy": ("recall", "token recall (open accuracy)"), "recall": ("recall", "token recall"),
               "exact_match": ("exact_match", "exact match"), "token_f1": ("f1", "token F1 (SQuAD)"),
               "bleu1": ("bleu", "BLEU-1")}
CLASSIFICATION_METRICS = {"accuracy": ("accuracy", "accuracy"), "auroc": ("roc_auc", "AUROC")}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _family(base: dict[str, Any]) -> BackboneFamily:
    """The family a manifest's base names (by family name, else by model type; CLIP for old saves)."""
    for lookup, key in ((family_by_name, "family"), (family_for_model_type, "model_type")):
        if base.get(key):
            try:
                return lookup(base[key])
            except UnsupportedBackboneError:
                pass
    return family_by_name("clip")


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """Path of a card template shipped in ``medadapt/hub_cards`` (falls back to a source checkout)."""
    packaged = Path(str(resources.files("medadapt").joinpath("hub_cards", name)))
    if packaged.is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "hub_cards" / name
    if checkout.is_file():
        return checkout
    raise StorageError(f"model card template {name!r} not found in medadapt/hub_cards (is medadapt installed fully?).")


def is_medadapt_card(text: str) -> bool:
    """True when a README was written by medadapt (it carries :data:`CARD_MARKER`)."""
    return CARD_MARKER in text


def load_results(results: dict[str, Any] | str | os.PathLike | None, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Normalise training results: a dict, a ``results.json`` path, or ``extras["results"]``."""
    if results is None:
        results = (extras or {}).get("results") or {}
    if isinstance(results, (str, os.PathLike)):
        try:
            results = json.loads(Path(results).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read results from {results}: {exc}") from exc
    if not isinstance(results, dict):
        raise ConfigError(f"results must be a dict or a path to a JSON object, got {type(results).__name__}.")
    return results


def hub_base_id(base: dict[str, Any]) -> str | None:
    """The base model's Hub id, when the manifest names one (not a local path or an in-memory model).

    An open_clip base named ``hf-hub:org/name`` is the Hub repo ``org/name``."""
    source = base.get("source")
    if isinstance(source, str) and source.startswith(OPEN_CLIP_PREFIX):
        source = source[len(OPEN_CLIP_PREFIX):]
    if not isinstance(source, str) or not _REPO_ID.match(source) or os.path.exists(source):
        return None
    if source.startswith("medadapt/tiny-"):  # built from config by medadapt.tiny; not a Hub repo
        return None
    return source


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _number(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{number:.3f}" if math.isfinite(number) else "–"


def _domain_names(manifest: dict[str, Any]) -> list[str]:
    domains = {d["name"] for d in manifest.get("domains", [])}
    return [n for n in manifest.get("stage_order", []) if n in domains]


def _metrics(manifest: dict[str, Any], results: dict[str, Any]) -> dict[str, dict[str, float]]:
    given = results.get("metrics") or results.get("final_metrics") or {}  # the trainer writes final_metrics
    metrics = {d: dict(m) for d, m in given.items() if isinstance(m, dict)}
    matrix = results.get("accuracy_matrix")
    if not metrics and matrix:
        columns = list(results.get("domains") or _domain_names(manifest))
        for name, value in zip(columns, matrix[-1]):
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[name] = {"accuracy": float(value)}
    return metrics


def _datasets(manifest: dict[str, Any], results: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    given = results.get("datasets") or {}
    for domain in manifest.get("domains", []):
        meta = domain.get("metadata") or {}
        ids = [given.get(domain["name"]), meta.get("dataset"), *(meta.get("datasets") or [])]
        found[domain["name"]] = list(dict.fromkeys(i for i in ids if isinstance(i, str) and i))
    return found


def task_of(family: BackboneFamily, domain_task: str) -> tuple[str, str]:
    """The Hub task type (and a shown name) a domain's metrics measure: free-text answers and a generative
    base's closed questions are visual question answering; a dual encoder's labels, image classification."""
    if domain_task == "vqa":
        return "visual-question-answering", "open-ended visual question answering"
    if family.pipeline_tag == "image-text-to-text":
        return "visual-question-answering", "closed visual question answering"
    return "image-classification", "classification"


def license_fields(license: str | dict[str, Any] | None) -> dict[str, Any]:
    """``license`` as card fields: a Hub licence id, or ``{"license", "license_name", "license_link"}``
    (what :func:`base_license` reads from the base's own card; ``other`` needs a name and a link)."""
    if license is None:
        return {}
    if isinstance(license, str):
        return {"license": license}
    if not isinstance(license, dict) or not isinstance(license.get("license"), str):
        raise ConfigError(f"license must be a Hub licence id or a dict with 'license', got {license!r}.")
    return {k: license[k] for k in ("license", "license_name", "license_link") if license.get(k)}


def base_license(base_id: str | None, revision: str | None = None, token: str | bool | None = None) -> dict[str, Any] | None:
    """The licence fields of the base model's own Hub card (``None`` when it has none or cannot be read:
    offline, gated without access, a tiny or local base)."""
    if not base_id:
        return None
    from huggingface_hub import HfApi

    try:
        data = HfApi(token=token).model_info(base_id, revision=revision).card_data
    except Exception:  # noqa: BLE001 - any Hub/network failure: no licence carried over
        return None
    if data is None or not getattr(data, "license", None):
        return None
    return license_fields({k: getattr(data, k, None) for k in ("license", "license_name", "license_link")})


def build_card_data(manifest: dict[str, Any], repo_id: str, results: dict[str, Any], license: str | dict[str, Any] | None = None) -> ModelCardData:
    """Front matter: base_model (+ relation), library_name, pipeline_tag, licence, tags, datasets and a
    model-index with each domain's metrics under the task they measure."""
    family = _family(manifest["base"])
    tags = [*TAGS, manifest["base"].get("model_type") or family.scoring]
    for kind in sorted({e["type"] for e in manifest["adapters"].values()}):
        tags += list(adapter_kind(kind).card_tags)
    datasets = _datasets(manifest, results)
    split = str(results.get("split") or "test")
    tasks = {d["name"]: d.get("task", "classification") for d in manifest.get("domains", [])}
    evals = []
    for name, values in _metrics(manifest, results).items():
        task_type, task_name = task_of(family, tasks.get(name, "classification"))
        names = VQA_METRICS if tasks.get(name) == "vqa" else CLASSIFICATION_METRICS
        for metric, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            metric_type, metric_name = names.get(metric, (metric, metric))
            dataset = (datasets.get(name) or [name])[0]
            evals.append(EvalResult(task_type=task_type, task_name=f"{name}: {task_name}",
                                    dataset_type=dataset, dataset_name=name, dataset_split=split,
                                    metric_type=metric_type, metric_name=metric_name, metric_value=float(value)))
    all_datasets = list(dict.fromkeys(d for ids in datasets.values() for d in ids))
    base_model = hub_base_id(manifest["base"])
    return ModelCardData(
        base_model=base_model,
        base_model_relation="adapter" if base_model else None,
        library_name=LIBRARY_NAME,
        pipeline_tag=family.pipeline_tag,
        **license_fields(license),
        tags=list(dict.fromkeys(tags)),
        datasets=all_datasets or None,
        model_name=repo_id.split("/")[-1] if evals else None,  # only needed by the model-index
        eval_results=evals or None,
    )


def _stages(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    domains = {d["name"]: d for d in manifest.get("domains", [])}
    rows = []
    for i, name in enumerate(manifest["stage_order"], start=1):
        entry, domain = manifest["adapters"].get(name), domains.get(name)
        rows.append({
            "index": i, "name": name, "path": entry.get("path", name) if entry else None,
            "adapter_type": entry["type"] if entry else "none (base / shared adapters)",
            "kind": "domain" if domain else "shared",
            "labels": (", ".join(_cell(x) for x in domain["labels"]) or "free text") if domain else "–",
            "prompt": f"`{_cell(domain['prompt'])}`" if domain else "–",
            "example": domain["prompt"].format(domain["labels"][0]) if domain and domain["labels"] else "",
        })
    return rows


def _sources(manifest: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for name in manifest["stage_order"]:
        source = manifest["adapters"].get(name, {}).get("source") or {}
        if source.get("repo"):  # local paths are never written into a card
            where = f"`{source['repo']}` at revision `{source.get('revision') or 'unknown'}`"
            if source.get("adapter") and source["adapter"] != name:
                where += f" (stage `{source['adapter']}` there)"
            out.append({"name": name, "where": where})
    return out


def _matrix(manifest: dict[str, Any], results: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    matrix = results.get("accuracy_matrix")
    if not matrix:
        return None, {}
    domain_names = _domain_names(manifest)
    columns = list(results.get("domains") or domain_names)
    labels = list(results.get("stages") or domain_names)
    rows = [{"label": f"{i + 1}. {_cell(labels[i]) if i < len(labels) else ''}".strip(),
             "cells": [_number(v) for v in row]} for i, row in enumerate(matrix)]
    summary: dict[str, str] = {}
    try:
        from ..evaluation import continual_summary

        summary = {k.replace("_", " "): _number(v) for k, v in continual_summary(matrix).items()}
    except (ValueError, ImportError):
        summary = {}
    note = "rows follow the stage order; `–` = not evaluated"
    if results.get("paradigm"):
        note += f"; training paradigm: {_cell(results['paradigm'])}"
    return {"columns": [_cell(c) for c in columns], "rows": rows, "note": note}, summary


def _metrics_table(metrics: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    if not metrics:
        return None
    columns = list(dict.fromkeys(k for values in metrics.values() for k in values))
    rows = [{"label": _cell(d), "cells": [_number(values.get(c)) for c in columns]} for d, values in metrics.items()]
    return {"columns": [_cell(c) for c in columns], "rows": rows}


def render_card(
    manifest: dict[str, Any],
    repo_id: str,
    results: dict[str, Any] | str | os.PathLike | None = None,
    revision: str | None = None,
    license: str | dict[str, Any] | None = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the model card of a repo holding ``manifest`` (``results`` default: ``manifest["extras"]``).

    ``license``: a Hub licence id, or the fields :func:`base_license` returns (``push_model`` carries the
    base's licence over when none is given)."""
    results = load_results(results, manifest.get("extras"))
    base = manifest["base"]
    stages = _stages(manifest)
    types = {e["type"] for e in manifest["adapters"].values()}
    hub_id = hub_base_id(base)
    rev = revision or "main"
    if base.get("saved_in"):
        base_load = f'"{repo_id}", subfolder="{base["saved_in"]}", revision="{rev}"'
    else:
        base_load = f'"{base.get("source")}"' + (f', revision="{base["revision"]}"' if base.get("revision") else "")
    matrix, summary = _matrix(manifest, results)
    lora = [s for s in stages if s["adapter_type"] == LORA.name]
    domains = [s["name"] for s in stages if s["kind"] == "domain"]
    marker = (f"{CARD_MARKER} v1: written by medadapt {__version__} and rewritten on every push; "
              "delete this line to keep manual edits -->")
    return ModelCard.from_template(
        build_card_data(manifest, repo_id, results, license=license),
        template_path=str(template or template_path()),
        marker=marker,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        revision=rev,
        base={"family": base.get("family") or base.get("model_type") or _family(base).name,
              "kind": _family(base).scoring.replace("-", " "), "auto_class": _family(base).auto_class,
              "display": f"`{hub_id}`" if hub_id else ("saved in `base/`" if base.get("saved_in") else "(in-memory base)")},
        adapter_kinds=" / ".join(adapter_kind(t).card_name for t in sorted(types)) or "no",
        stages=stages,
        sources=_sources(manifest),
        matrix=matrix,
        summary=summary,
        metrics=_metrics_table(_metrics(manifest, results)),
        first_domain=domains[0] if domains else None,
        lora_stage=lora[0] if lora else None,
        has_prompt=bool(types - {LORA.name}),
        base_load=base_load,
    )
