"""Objectives turn a batch into ``(loss, report)`` so the loop never cares what it trains.

``classification`` scores each image against its domain's label prompts (CLIP-style) with
cross-entropy. Another objective (e.g. image-text contrastive on captions) registers itself with
:func:`register_objective` and the loop stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """Preprocessed images, integer labels and the domain of every row."""

    pixel_values: torch.Tensor
    labels: torch.Tensor
    domains: list[str]

    def __len__(self) -> int:
        return len(self.domains)


class Objective(Protocol):
    def __call__(self, model: Any, batch: Batch, adapter: str) -> tuple[torch.Tensor, dict[str, float]]: ...


_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    def deco(factory: Callable[..., Objective]) -> Callable[..., Objective]:
        _OBJECTIVES[name] = factory
        return factory

    return deco


def build_objective(name: str, **kwargs: Any) -> Objective:
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name](**kwargs)


@register_objective("classification")
class ClassificationObjective:
    """Cross-entropy over each row's domain label prompts, through one adapter.

    The image tower runs once for the whole (mixed-domain) batch. When the adapter trains nothing
    in the text tower, label-prompt embeddings are computed once and reused across batches
    (``cache_text=True``); otherwise they are recomputed with gradients every step.
    """

    def __init__(self, cache_text: bool = True) -> None:
        self.cache_text = cache_text
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def reset(self) -> None:
        self._cache.clear()

    def label_features(self, model: Any, domain: str, adapter: str) -> torch.Tensor:
        spec = model.get_domain(domain)
        if self.cache_text and not model.text_tower_trainable(adapter):
            key = (domain, adapter)
            if key not in self._cache:
                with torch.no_grad():
                    self._cache[key] = model.scorer.label_features(spec, adapter)
            return self._cache[key]
        return model.scorer.label_features(spec, adapter)

    def __call__(self, model: Any, batch: Batch, adapter: str) -> tuple[torch.Tensor, dict[str, float]]:
        image_feats = model.scorer.image_features(batch.pixel_values, adapter)
        labels = batch.labels.to(image_feats.device)
        total = image_feats.new_zeros(())
        correct = 0
        for domain in dict.fromkeys(batch.domains):
            rows = [i for i, d in enumerate(batch.domains) if d == domain]
            index = torch.tensor(rows, device=image_feats.device)
            logits = model.scorer.logits_from_features(image_feats[index], self.label_features(model, domain, adapter))
            total = total + F.cross_entropy(logits, labels[index], reduction="sum")
            correct += int((logits.argmax(-1) == labels[index]).sum())
        loss = total / len(batch)
        return loss, {"loss": float(loss.detach()), "acc": correct / len(batch)}
