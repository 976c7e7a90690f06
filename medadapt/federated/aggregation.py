"""Aggregation of accepted site updates into the new global adapter tensors.

Both options take the sample-weighted mean of the tensors that travel (FlowerTune's FedAvg). What
differs is what travels and trains (:mod:`medadapt.federated.payload`): under ``fedavg`` A and B
are averaged separately, so mean(B)·mean(A) is not the mean of the updates B·A; under ``ffa_lora``
A is frozen and identical everywhere, so mean(B)·A is exactly the mean of the sites' updates.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .payload import SEP
from .screening import SiteUpdate


def replay_ratio_weights(updates: list[SiteUpdate], adapter: str, memory_only: set[str], ratio: float) -> dict[str, float]:
    """Weights of ``adapter``'s updates when the sites in ``memory_only`` trained it on their rehearsal memory alone.

    The memory-only sites together weigh ``ratio / (1 - ratio)`` times the new-data sites' samples
    (split by their counts), as a centralized rehearsal batch mixes ``ratio`` replayed samples into
    new ones; plain sample weights would let a large memory outweigh a small new domain.
    """
    counts = {u.site: float(u.counts.get(adapter, 0)) for u in updates if u.counts.get(adapter, 0) > 0}
    new = sum(c for s, c in counts.items() if s not in memory_only)
    old = sum(c for s, c in counts.items() if s in memory_only)
    if not new or not old:
        return counts
    scale = new * ratio / (1.0 - ratio) / old
    return {s: c * scale if s in memory_only else c for s, c in counts.items()}


def weighted_mean(updates: list[SiteUpdate], sent: Mapping[str, np.ndarray], weights: Mapping[str, Mapping[str, float]] | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """New tensors (per adapter: mean of the sites that trained it, weighted by their sample counts, or by
    ``weights[adapter][site]`` where given) and the samples each adapter was trained on this round. An
    adapter no site trained keeps the sent values."""
    out: dict[str, np.ndarray] = {}
    totals: dict[str, int] = {}
    for key, value in sent.items():
        adapter = key.split(SEP, 1)[0]
        chosen = (weights or {}).get(adapter)
        candidates = [(float(chosen.get(u.site, 0.0)) if chosen is not None else u.counts.get(adapter, 0), u) for u in updates if u.counts.get(adapter, 0) > 0]
        totals[adapter] = sum(u.counts.get(adapter, 0) for _, u in candidates)
        used = [(w, u) for w, u in candidates if w > 0]
        total = sum(w for w, _ in used)
        if not total:
            out[key] = np.asarray(value, np.float32).copy()
            continue
        acc = np.zeros(np.shape(value), np.float64)
        for w, u in used:
            acc += (w / total) * np.asarray(u.tensors[key], np.float64)
        out[key] = acc.astype(np.float32)
    return out, totals


def add_dp_noise(tensors: dict[str, np.ndarray], sent: Mapping[str, np.ndarray], noise_multiplier: float, clipping_norm: float, n_sites: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gaussian noise of std ``noise_multiplier * clipping_norm / n_sites`` on the aggregated update
    (what Flower's DifferentialPrivacyClientSideFixedClipping adds to the mean of clipped updates)."""
    if noise_multiplier <= 0 or n_sites == 0:
        return tensors
    std = noise_multiplier * clipping_norm / n_sites
    return {k: (v + rng.normal(0.0, std, size=np.shape(v))).astype(np.float32) for k, v in tensors.items()}
