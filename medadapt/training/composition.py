"""Routing and composition results of a trained run (added to ``results.json`` by the trainer).

* the **router** (:mod:`medadapt.routing`) is fitted after every stage on the frozen-base features
  of the domains trained so far, and saved with the model;
* **routing**: routing accuracy on every trained domain's test split, and end-to-end accuracy
  with automatic routing next to *oracle* routing (each domain through its own adapter, or the
  evaluated view's adapter for domains without one);
* **stacking**: each domain adapter run together with the shared adapter (both active), against
  the domain adapter alone;
* **merging**: the domain LoRAs merged with peft (``linear``, ``ties``, ``dare_ties``) into one
  adapter serving every domain, against the rehearsal-trained shared adapter. The merged adapters
  are temporary: they are removed before the model is saved.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from ..adapters import LORA
from ..errors import AdapterError
from ..merging import MERGES_KEY
from ..routing import ROUTER_KEY, DomainRouter, evaluate_routing
from .batches import PixelStore
from .evaluate import evaluate_view
from .paradigms import SHARED, Plan

ROUTER_TRAIN_CAP = 1000  # training images per domain the router is fitted on (a fixed random subset above it)
COMPARED_MERGES = ("linear", "ties", "dare_ties")


def trained_domains(plan: Plan, upto: int) -> list[str]:
    """Domains whose data was trained on in stages ``0..upto``, in first-seen order."""
    seen = [d for stage in plan.stages[: upto + 1] for phase in stage.phases for d in phase.domains]
    return list(dict.fromkeys(seen))


def _all_indices(store: PixelStore, domain: str, split: str) -> range:
    return range(len(store.labels(domain, split)))


class RouterFeatureCache:
    """Routing features of each domain's router training images, kept across the stages of one run.

    They come from the frozen base with no adapter (:meth:`medadapt.ContinualVLM.router_features`),
    so training never changes them: a refit after stage *k* computes only the new domains' features
    instead of running the image tower again over every earlier domain's images."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}
        self.computed = 0  # images whose features were computed (not taken from the cache)

    def features(self, model: Any, store: PixelStore, domain: str, indices: Sequence[int]) -> torch.Tensor:
        key = tuple(int(i) for i in indices)
        hit = self.entries.get(domain)
        if hit is None or hit[0] != key:
            with model.evaluating():
                feats = model.router_features(store.pixels(domain, "train", list(key)))
            self.entries[domain] = hit = (key, feats)
            self.computed += len(key)
        return hit[1]


def router_indices(n: int, cap: int = ROUTER_TRAIN_CAP, seed: int = 0) -> list[int]:
    """The training images (at most ``cap`` of ``n``, a fixed random subset above it) the router is fitted on."""
    return list(range(n)) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False)).tolist()


def fit_stage_router(model: Any, store: PixelStore, domains: Sequence[str], cap: int = ROUTER_TRAIN_CAP, seed: int = 0,
                     cache: RouterFeatureCache | None = None) -> DomainRouter | None:
    """Fit (or refit) the model's router on the train splits of the classification ``domains`` (at
    most ``cap`` images each); open-ended domains have no labels to route to. None when there are none.
    With ``cache``, features computed by an earlier stage's fit are reused."""
    cache = cache if cache is not None else RouterFeatureCache()
    feats = {d: cache.features(model, store, d, router_indices(len(store.labels(d, "train")), cap, seed)) for d in routable(model, domains)}
    return model.fit_router_on_features(feats) if feats else None


def routable(model: Any, domains: Sequence[str]) -> list[str]:
    """The domains an image can be routed to: those with labels to score (not open-ended VQA)."""
    return [d for d in domains if model.get_domain(d).task == "classification"]


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


class _Accuracy:
    """Per-domain test accuracy of an adapter mapping; mappings the last stage evaluated are reused."""

    def __init__(self, model: Any, store: PixelStore, batch_size: int, accelerator: Any, done: dict[str, tuple[dict, dict]]) -> None:
        self.model, self.store, self.batch_size, self.accelerator, self.done = model, store, batch_size, accelerator, done

    def __call__(self, mapping: dict[str, Any]) -> dict[str, float]:
        for view, metrics in self.done.values():
            if all(view.get(d, ()) == a and d in metrics for d, a in mapping.items()):
                return {d: metrics[d]["accuracy"] for d in mapping}
        metrics = evaluate_view(self.model, self.store, mapping, self.batch_size, self.accelerator)
        return {d: m["accuracy"] for d, m in metrics.items()}


def composition_results(model: Any, store: PixelStore, plan: Plan, batch_size: int, accelerator: Any = None, last_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Routing, stacking and merging results after the last stage (see the module docstring).

    ``last_metrics`` (``{view: {domain: metrics}}`` of the last stage) saves evaluating again the
    adapter mappings that stage already evaluated."""
    domains = trained_domains(plan, len(plan.stages) - 1)
    if ROUTER_KEY not in model.extras and fit_stage_router(model, store, domains) is None:  # e.g. resumed after the last stage
        return {}  # only open-ended domains: nothing to route, stack or merge by accuracy
    views = plan.stages[-1].views
    accuracy = _Accuracy(model, store, batch_size, accelerator, {v: (views[v], m) for v, m in (last_metrics or {}).items() if v in views})
    evaluated = views[plan.primary_view]
    oracle = {d: d if model.domains[d].adapter_type != "none" else evaluated[d] for d in domains}
    oracle_acc = accuracy(oracle)
    scored = routable(model, domains)
    with model.evaluating():
        pixels = {d: store.pixels(d, "test", _all_indices(store, d, "test")) for d in scored}
        questions = {d: store.questions(d, "test", _all_indices(store, d, "test")) for d in scored}
        routing = evaluate_routing(model.predict_routed, pixels, {d: store.labels(d, "test") for d in scored}, oracle, batch_size, questions)
    auto = routing.pop("auto_routing_accuracy_per_domain")
    state = model.extras[ROUTER_KEY]
    results: dict[str, Any] = {
        "routing_accuracy": routing.pop("routing_accuracy"),
        "routing_accuracy_per_domain": routing.pop("routing_accuracy_per_domain"),
        "auto_routing_accuracy": _mean(auto),
        "oracle_accuracy": _mean(oracle_acc),
        "routing": {
            **routing,
            "threshold": state["coverage"],
            "fallback": state["fallback"],
            "oracle_adapters": oracle,
            "auto_routing_accuracy_per_domain": auto,
            "oracle_accuracy_per_domain": oracle_acc,
        },
    }
    own = [d for d in domains if model.domains[d].adapter_type != "none"]
    if own and SHARED in model.shared:
        results.update(_stacking(accuracy, own, oracle_acc))
    loras = [d for d in own if model.adapters.kind_of(d) is LORA]
    if len(loras) >= 2:
        results["merging"] = _merging(model, accuracy, loras, domains)
    return results


def _stacking(accuracy: _Accuracy, own: list[str], oracle_acc: dict[str, float]) -> dict[str, Any]:
    try:
        stacked = accuracy({d: (d, SHARED) for d in own})
    except AdapterError as exc:
        return {"stacking": {"skipped": str(exc)}}
    alone = {d: oracle_acc[d] for d in own}
    return {
        "stacked_accuracy": _mean(stacked),
        "stacking_helps": _mean(stacked) > _mean(alone),
        "stacking": {"stacked_accuracy_per_domain": stacked, "own_adapter_accuracy_per_domain": alone, "own_adapter_accuracy": _mean(alone)},
    }


def _merging(model: Any, accuracy: _Accuracy, loras: list[str], domains: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"merged": loras, "methods": {}}
    if SHARED in model.shared:
        shared = accuracy({d: SHARED for d in domains})
        out["shared"] = {"acc": _mean(shared), "accuracy_per_domain": shared}
    name = next(f"merged{i or ''}" for i in range(len(model.stage_order) + 1) if f"merged{i or ''}" not in model.stage_order)
    for method in COMPARED_MERGES:
        try:
            model.merge_adapters(loras, into=name, method=method)
        except AdapterError as exc:
            out["methods"][method] = {"skipped": str(exc)}
            continue
        try:
            acc = accuracy({d: name for d in domains})
            out["methods"][method] = {"acc": _mean(acc), "accuracy_per_domain": acc}
        finally:
            with warnings.catch_warnings():  # peft notes that the (temporary) active adapter is deleted
                warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
                model.remove_adapter(name)
            merges = model.extras.get(MERGES_KEY, {})
            merges.pop(name, None)
            if not merges:
                model.extras.pop(MERGES_KEY, None)
    return out
