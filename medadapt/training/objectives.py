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
    """Preprocessed images, integer labels and the domain of every row.

    VQA data also carries each row's own question and free-text answer (``None`` where a row uses
    its domain's question and the label text as the answer); label ``-1`` marks an open answer.
    """

    pixel_values: torch.Tensor
    labels: torch.Tensor
    domains: list[str]
    questions: list[str | None] | None = None
    answers: list[str | None] | None = None
    keys: list[tuple[str, int]] | None = None  # (domain, train index) of every row: lets a scorer reuse frozen features

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
        for rows, logits in model.scorer.batch_logits(batch.pixel_values, domains, adapter, cache=self.cache_text, keys=batch.keys):
            labels = batch.labels[rows].to(logits.device)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            total = loss if total is None else total + loss
            correct += int((logits.argmax(-1) == labels).sum())
        loss = total / len(batch)
        return loss, {"loss": float(loss.detach()), "acc": correct / len(batch)}


@register_objective("causal_lm")
class CausalLMObjective:
    """Causal-LM loss on each row's answer tokens only (the image and question are masked).

    A row's answer is its free-text answer, or its label's text; its question is its own, or its
    domain's. The report's ``acc`` is the answer-token accuracy (teacher forcing).
    """

    def reset(self) -> None:
        """Nothing is kept between phases."""

    def __call__(self, model: Any, batch: Batch, adapter: str) -> tuple[torch.Tensor, dict[str, float]]:
        questions, answers = [], []
        for i, name in enumerate(batch.domains):
            domain = model.get_domain(name)
            asked = batch.questions[i] if batch.questions is not None else None
            given = batch.answers[i] if batch.answers is not None else None
            questions.append(asked or model.scorer.question_of(domain))
            answers.append(given if given is not None else domain.labels[int(batch.labels[i])])
        loss, accuracy = model.scorer.lm_loss(batch.pixel_values, questions, answers, adapter)
        return loss, {"loss": float(loss.detach()), "acc": accuracy}
