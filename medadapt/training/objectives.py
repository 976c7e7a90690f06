"""Objectives turn a batch into ``(loss, report)`` so the loop never cares what it trains.

The loss itself is on the family's scorer (:meth:`medadapt.families.Scorer.loss`: cross-entropy
over label logits for a dual encoder, the answer-token LM loss for a generative base), beside the
model that computes it. The trainer builds the objective its family names (``family.objective``);
both built-in names give :class:`ScorerObjective`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

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


class ScorerObjective:
    """The loss of the model's scorer (:meth:`medadapt.families.Scorer.loss`) through one adapter.

    The adapter is resolved by the model's stage table like a user's, so a misspelt or unknown
    adapter fails with the same clear error. ``cache_text=False`` stops the scorer reusing what it
    can between steps (e.g. label embeddings of a frozen text side).
    """

    def __init__(self, cache_text: bool = True) -> None:
        self.cache_text = cache_text

    def reset(self) -> None:
        """Nothing is kept between phases (kept for objectives that cache)."""

    def __call__(self, model: Any, batch: Batch, adapter: str) -> tuple[torch.Tensor, dict[str, float]]:
        domains = [model.get_domain(d) for d in batch.domains]
        return model.scorer.loss(batch, domains, model.stages.serve_named(adapter), cache=self.cache_text)


ClassificationObjective = register_objective("classification")(ScorerObjective)  # dual encoders: cross-entropy over labels
CausalLMObjective = register_objective("causal_lm")(ScorerObjective)  # generative bases: answer-token LM loss
