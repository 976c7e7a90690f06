"""Evaluation of adapters on domains' test splits, sharded over processes.

Classification domains: accuracy and AUROC. Open-ended (``task="vqa"``) domains: answers are
generated and scored with :func:`medadapt.vqa_metrics.score_vqa`; their ``accuracy`` (the entry
of the accuracy matrix) is the recall of reference tokens, reported by papers as "open accuracy",
beside exact match, token F1 and BLEU-1.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..evaluation import accuracy, auroc
from ..vqa_metrics import score_vqa
from .batches import PixelStore

GENERATE_TOKENS = 16  # longest generated answer when evaluating open-ended domains


def _served(model: Any, domain: str, adapter: str | tuple[str, ...] | None) -> Any:
    """What serves ``domain``'s rows when a view names ``adapter`` (``None``: the frozen base), checked
    by the model's stage table like a user's call."""
    return model.serve(domain, "base" if adapter is None else adapter)


@torch.no_grad()
def predict_split(model: Any, store: PixelStore, domain: str, adapter: str | None, batch_size: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for this process's shard of ``domain``'s test split (each sample
    asked its own question when the data carries one)."""
    spec = model.get_domain(domain)
    served = _served(model, domain, adapter)
    labels = store.labels(domain, "test")
    indices = list(range(rank, len(labels), world))
    probs = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        questions = store.questions(domain, "test", chunk)
        keys = [("test", domain, i) for i in chunk]  # lets a family reuse frozen image work between stages
        probs.append(model.scorer.logits(store.pixels(domain, "test", chunk), spec, served, questions, keys=keys).softmax(-1).cpu())
    stacked = torch.cat(probs).numpy() if probs else np.zeros((0, len(spec.labels)))
    return stacked, labels[indices]


@torch.no_grad()
def generate_split(model: Any, store: PixelStore, domain: str, adapter: str | None, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[str, str]]:
    """``(prediction, reference)`` answers for this process's shard of an open-ended domain's test split."""
    spec = model.get_domain(domain)
    served = _served(model, domain, adapter)
    indices = list(range(rank, len(store.labels(domain, "test")), world))
    pairs = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        questions = [store.question(domain, "test", i) or spec.question for i in chunk]
        answers = model.scorer.generate(store.pixels(domain, "test", chunk), questions, [served] * len(chunk), max_new_tokens=GENERATE_TOKENS)
        pairs += list(zip(answers, [store.answer(domain, "test", i) or "" for i in chunk]))
    return pairs


def _classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        area = auroc(labels, probs)
    return {"accuracy": accuracy(labels, probs), "auroc": float(area)}


def _vqa_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Open-ended answers: ``accuracy`` is the recall of reference tokens ("open accuracy")."""
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    scores = score_vqa(predictions, references, ["open"] * len(pairs))["open"] if pairs else {}
    return {
        "accuracy": float(scores.get("recall", float("nan"))),
        "exact_match": float(scores.get("accuracy", float("nan"))),
        "token_f1": float(scores.get("token_f1", float("nan"))),
        "bleu1": float(scores.get("bleu1", float("nan"))),
        "auroc": float("nan"),
    }


def _gathered(shard: Any, world: int) -> list[Any]:
    """Every process's shard, in rank order (just this one's when there is one process)."""
    if world == 1:
        return [shard]
    from accelerate.utils import gather_object

    return gather_object([shard])


def evaluate_view(model: Any, store: PixelStore, view: dict[str, str | None], batch_size: int, accelerator: Any = None) -> dict[str, dict[str, float]]:
    """``{domain: {"accuracy", "auroc", ...}}`` with each domain scored by the adapter ``view`` names."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    out: dict[str, dict[str, float]] = {}
    with model.evaluating():
        for domain, adapter in view.items():
            if model.get_domain(domain).task == "vqa":
                parts = _gathered(generate_split(model, store, domain, adapter, batch_size, rank, world), world)
                out[domain] = _vqa_metrics([pair for part in parts for pair in part])
                continue
            parts = _gathered(predict_split(model, store, domain, adapter, batch_size, rank, world), world)
            out[domain] = _classification_metrics(np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts]))
    return out
