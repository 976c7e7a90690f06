"""Evaluation of adapters on domains' test splits (accuracy and AUROC), sharded over processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..evaluation import accuracy, auroc
from .batches import PixelStore


@torch.no_grad()
def predict_split(model: Any, store: PixelStore, domain: str, adapter: str | None, batch_size: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for this process's shard of ``domain``'s test split."""
    spec = model.get_domain(domain)
    labels = store.labels(domain, "test")
    indices = list(range(rank, len(labels), world))
    probs = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        probs.append(model.scorer.logits(store.pixels(domain, "test", chunk), spec, adapter).softmax(-1).cpu())
    stacked = torch.cat(probs).numpy() if probs else np.zeros((0, len(spec.labels)))
    return stacked, labels[indices]


def evaluate_view(model: Any, store: PixelStore, view: dict[str, str | None], batch_size: int, accelerator: Any = None) -> dict[str, dict[str, float]]:
    """``{domain: {"accuracy", "auroc"}}`` with each domain scored by the adapter ``view`` names."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    try:
        for domain, adapter in view.items():
            probs, labels = predict_split(model, store, domain, adapter, batch_size, rank, world)
            if world > 1:
                from accelerate.utils import gather_object

                gathered = gather_object([(probs, labels)])
                probs = np.concatenate([p for p, _ in gathered])
                labels = np.concatenate([y for _, y in gathered])
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    area = auroc(labels, probs)
            out[domain] = {"accuracy": accuracy(labels, probs), "auroc": float(area)}
    finally:
        model.train(was_training)
    return out
