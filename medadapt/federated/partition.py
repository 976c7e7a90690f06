"""Dirichlet label-skew partitions of one dataset's train split (simulating hospitals with different case mixes)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .settings import Partition

MIN_PART = 8  # a partition smaller than this is redrawn (a site needs a few batches to train on)
MAX_DRAWS = 100


def dirichlet_partition(labels: np.ndarray, num: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Split sample indices into ``num`` parts: per class, shares drawn from Dirichlet(``alpha``).

    The same ``labels``, ``num``, ``alpha`` and ``seed`` always give the same parts (every site
    computes its own share locally and they never overlap). Parts are sorted index arrays.
    """
    labels = np.asarray(labels)
    if num == 1:
        return [np.arange(len(labels))]
    if len(labels) < num * MIN_PART:
        raise DataError(f"cannot split {len(labels)} samples into {num} partitions of at least {MIN_PART}.")
    for draw in range(MAX_DRAWS):
        rng = np.random.default_rng([seed, draw])
        parts: list[list[int]] = [[] for _ in range(num)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= MIN_PART:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(f"no Dirichlet(alpha={alpha}) draw gave {num} partitions of at least {MIN_PART} samples each; raise alpha.")


def partition_indices(labels: np.ndarray, partition: Partition) -> np.ndarray:
    """The indices of ``partition.index``'s share of a split with ``labels``."""
    return dirichlet_partition(labels, partition.num, partition.alpha, partition.seed)[partition.index]
