"""Objectives turn a batch into ``(loss, report)`` so the loop never cares what it trains.

Each backbone family names its objective (``family.objective``) and registers it with
:func:`register_objective`; the trainer builds the one its model's family names. The generic
``classification`` objective is cross-entropy over each row's domain labels through the family
scorer's ``batch_logits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from ..errors import MedAdaptError


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
        raise MedAdaptError(f"unknown objective {name!r}; known: {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name](**kwargs)


@register_objective("classification")
class ClassificationObjective:
    """Cross-entropy over each row's domain labels, through one adapter.

    The family scorer's ``batch_logits`` runs the image side once for the whole (mixed-domain)
    batch and gives each domain's rows their logits; what it can reuse between steps (e.g. label
    embeddings of a frozen text side) it caches itself, unless ``cache_text=False``.
    """

    def __init__(self, cache_text: bool = True) -> None:
        self.cache_text = cache_text

    def reset(self) -> None:
        """Nothing is kept between phases (kept for objectives that cache)."""

    def __call__(self, model: Any, batch: Batch, adapter: str) -> tuple[torch.Tensor, dict[str, float]]:
        domains = [model.get_domain(d) for d in batch.domains]
        total, correct = None, 0
        for rows, logits in model.scorer.batch_logits(batch.pixel_values, domains, adapter, cache=self.cache_text):
            labels = batch.labels[rows].to(logits.device)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            total = loss if total is None else total + loss
            correct += int((logits.argmax(-1) == labels).sum())
        loss = total / len(batch)
        return loss, {"loss": float(loss.detach()), "acc": correct / len(batch)}
