"""Screening of site updates before aggregation: a poisoned or broken update is dropped, never averaged.

Checked, in order: the site's base fingerprint, the tensor names and shapes (exactly the allowed
set), finite values, sample counts, and the update's norm against the round's other updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass
class SiteUpdate:
    """One site's reply to a training round (already parsed from its Flower message)."""

    site: str
    node_id: int
    tensors: dict[str, np.ndarray]
    counts: dict[str, int]
    base: str
    loss: float = 0.0
    bytes_up: int = 0


@dataclass
class Screened:
    """The round's accepted updates and ``(site, reason)`` for each dropped one."""

    accepted: list[SiteUpdate] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RoundUpdates:
    """What a round collected: ``accepted`` is averaged (site updates, or the secure sum's group means);
    ``contributors`` are the sites whose training entered it (tensors empty under SecAgg+);
    ``memory_only`` names the entries of ``accepted`` that only rehearsed (None: worked out from the sites' data)."""

    accepted: list[SiteUpdate] = field(default_factory=list)
    contributors: list[SiteUpdate] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    memory_only: set[str] | None = None


def _problem(update: SiteUpdate, expected: Mapping[str, tuple[int, ...]], base: str, adapters: list[str]) -> str | None:
    if update.base != base:
        return f"base fingerprint {update.base[:12]!r} differs from the server's {base[:12]!r}"
    names = set(update.tensors)
    if names != set(expected):
        extra, missing = sorted(names - set(expected)), sorted(set(expected) - names)
        return f"tensor names differ from the allowed set (unexpected {extra[:3]}, missing {missing[:3]})"
    for key, shape in expected.items():
        if tuple(np.shape(update.tensors[key])) != tuple(shape):
            return f"tensor {key} has shape {tuple(np.shape(update.tensors[key]))}, expected {tuple(shape)}"
        if not np.all(np.isfinite(update.tensors[key])):
            return f"tensor {key} holds NaN or inf"
    if set(update.counts) - set(adapters) or any((not isinstance(v, int)) or v < 0 for v in update.counts.values()):
        return f"sample counts {update.counts} are not non-negative integers for this round's adapters {adapters}"
    return None


def update_norm(update: SiteUpdate, sent: Mapping[str, np.ndarray]) -> float:
    """L2 norm of (returned - sent) over every tensor of the update."""
    return float(np.sqrt(sum(float(np.sum((np.asarray(update.tensors[k], np.float64) - np.asarray(sent[k], np.float64)) ** 2)) for k in sent)))


def screen(updates: list[SiteUpdate], sent: Mapping[str, np.ndarray], base: str, adapters: list[str], outlier_factor: float) -> Screened:
    """Split ``updates`` into accepted and dropped (each dropped one with its reason)."""
    out = Screened()
    expected = {k: tuple(np.shape(v)) for k, v in sent.items()}
    valid = []
    for update in updates:
        problem = _problem(update, expected, base, adapters)
        if problem:
            out.dropped.append((update.site, problem))
        else:
            valid.append(update)
    norms = [update_norm(u, sent) for u in valid]
    active = [i for i, u in enumerate(valid) if sum(u.counts.values()) > 0]  # an idle site (nothing to train here) sends what it got
    for i, update in enumerate(valid):
        others = [norms[j] for j in active if j != i]
        reference = float(np.median(others)) if others else 0.0
        if others and reference > 0 and norms[i] > outlier_factor * reference:
            out.dropped.append((update.site, f"update norm {norms[i]:.3g} is more than {outlier_factor:g}x the median {reference:.3g} of the round's other updates"))
        else:
            out.accepted.append(update)
    return out
