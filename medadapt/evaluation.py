"""Evaluation metrics for continual multi-domain adaptation (pure numpy).

Accuracy matrix convention: ``R[i, j]`` is the accuracy on domain ``j``'s test split after
training stage ``i`` (stage ``i`` trains domain ``i``). ``R`` is ``T x D`` with ``D >= T``
(extra columns: domains evaluated but not trained on). Cells on and below the diagonal
must be finite; cells above it may be NaN (not evaluated), except where a metric needs
them (``forward_transfer`` uses ``R[j-1, j]``).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ._io import atomic_write_bytes
from .errors import MetricError

__all__ = [
    "accuracy",
    "auroc",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "continual_summary",
    "plot_accuracy_matrix",
]


def _matrix(R: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Validate an accuracy matrix and return it as a float array."""
    try:
        A = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"accuracy matrix must be numeric, got {type(R).__name__}: {e}") from e
    if A.ndim != 2:
        raise MetricError(f"accuracy matrix must be 2-D (stages x domains), got shape {A.shape}")
    T, D = A.shape
    if T < 1:
        raise MetricError("accuracy matrix has no rows (no training stages)")
    if D < T:
        raise MetricError(
            f"accuracy matrix of shape {A.shape} has fewer domain columns ({D}) than stages ({T}); "
            "expected T x T or T x D with D >= T"
        )
    lower = np.tril(np.ones((T, D), dtype=bool))
    bad = np.argwhere(lower & ~np.isfinite(A))
    if bad.size:
        i, j = bad[0]
        raise MetricError(f"accuracy matrix cell R[{i}, {j}] (on/below the diagonal) is not finite: {A[i, j]}")
    return A


def average_accuracy(R: np.ndarray) -> float:
    """Mean accuracy over all domains after the last stage (mean of the last row)."""
    A = _matrix(R)
    last = A[-1]
    if not np.all(np.isfinite(last)):
        raise MetricError(f"last row of the accuracy matrix has non-finite values: {last.tolist()}")
    return float(last.mean())


def backward_transfer(R: np.ndarray) -> float:
    """BWT: mean over ``j < T-1`` of ``R[T-1, j] - R[j, j]`` (negative = forgetting); 0 if T == 1."""
    A = _matrix(R)
    T = A.shape[0]
    if T == 1:
        return 0.0
    j = np.arange(T - 1)
    return float(np.mean(A[T - 1, j] - A[j, j]))


def forgetting(R: np.ndarray) -> float:
    """Mean over ``j < T-1`` of ``max_{i < T-1} R[i, j] - R[T-1, j]``; 0 if T == 1.

    (Chaudhry et al. 2018.) NaN cells above the diagonal (not evaluated) are ignored in
    the max; the diagonal cell ``R[j, j]`` is always included.
    """
    A = _matrix(R)
    T = A.shape[0]
    if T == 1:
        return 0.0
    vals = [np.nanmax(A[: T - 1, j]) - A[T - 1, j] for j in range(T - 1)]
    return float(np.mean(vals))


def forward_transfer(R: np.ndarray, baseline: np.ndarray | Sequence[float]) -> float:
    """FWT: mean over ``j >= 1`` of ``R[j-1, j] - baseline[j]``; 0 if T == 1.

    ``baseline[j]`` is the accuracy on domain ``j`` without training (e.g. zero-shot or
    chance); length ``D`` (or at least ``T``).
    """
    A = _matrix(R)
    T = A.shape[0]
    b = np.asarray(baseline, dtype=np.float64).reshape(-1)
    if len(b) < T:
        raise MetricError(f"baseline has {len(b)} values, need one per stage/domain (at least {T})")
    if T == 1:
        return 0.0
    j = np.arange(1, T)
    vals = A[j - 1, j]
    if not np.all(np.isfinite(vals)):
        raise MetricError("forward_transfer needs R[j-1, j] (accuracy on a domain just before training it) to be finite")
    return float(np.mean(vals - b[j]))


def continual_summary(R: np.ndarray) -> dict[str, float]:
    """``{"average_accuracy", "backward_transfer", "forgetting"}`` for an accuracy matrix."""
    return {
        "average_accuracy": average_accuracy(R),
        "backward_transfer": backward_transfer(R),
        "forgetting": forgetting(R),
    }


def accuracy(y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int]) -> float:
    """Fraction of correct predictions; ``y_pred`` may be labels ``(N,)`` or scores ``(N, C)`` (argmax)."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred)
    if p.ndim == 2:
        p = p.argmax(axis=1)
    p = p.reshape(-1)
    if len(t) != len(p):
        raise MetricError(f"y_true has {len(t)} items but y_pred has {len(p)}")
    if len(t) == 0:
        raise MetricError("accuracy of an empty set is undefined")
    return float(np.mean(t == p))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    boundaries = np.flatnonzero(np.diff(xs) != 0) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [n]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _binary_auc(pos: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC of ``scores`` for boolean ``pos``; NaN if one class is absent."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _midranks(scores)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(y_true: np.ndarray | Sequence[int], probs: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted as 1/2).

    Binary: ``y_true`` in {0, 1}, ``probs`` the positive-class scores ``(N,)`` or ``(N, 2)``.
    Multi-class: ``probs`` is ``(N, C)``, ``y_true`` in ``[0, C)``; the result is the
    macro average of one-vs-rest AUROCs over classes present in ``y_true``.
    Returns NaN (with a ``RuntimeWarning``) when only one class is present in ``y_true``.
    """
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.shape[0] != len(t):
        raise MetricError(f"y_true has {len(t)} items but probs has {p.shape[0]} rows")
    if len(t) == 0:
        raise MetricError("AUROC of an empty set is undefined")
    if not np.all(np.isfinite(p)):
        raise MetricError("probs contains NaN or infinite values")
    if np.unique(t).size < 2:
        warnings.warn(
            f"AUROC is undefined when y_true holds a single class ({np.unique(t).tolist()}); returning nan",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan")
    if p.ndim == 1 or p.shape[1] == 2:
        bad = np.setdiff1d(np.unique(t), [0, 1])
        if bad.size:
            raise MetricError(f"binary AUROC needs labels in {{0, 1}}, got {bad.tolist()}; pass (N, C) probs for multi-class")
        scores = p if p.ndim == 1 else p[:, 1]
        return _binary_auc(t == 1, scores)
    if p.ndim != 2:
        raise MetricError(f"probs must be (N,) or (N, C), got shape {p.shape}")
    C = p.shape[1]
    bad = np.setdiff1d(np.unique(t), np.arange(C))
    if bad.size:
        raise MetricError(f"labels {bad.tolist()} are outside [0, {C}) for probs with {C} columns")
    aucs = [_binary_auc(t == c, p[:, c]) for c in np.unique(t)]
    return float(np.mean(aucs))


def plot_accuracy_matrix(
    R: np.ndarray,
    domains: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
    stages: Sequence[str] | None = None,
) -> Path:
    """Write a PNG heatmap of ``R`` (annotated cells; rows "after <stage>", columns domains).

    ``stages`` names the rows (default: ``domains[:T]``). NaN cells are left blank. The file
    is written atomically (:func:`medadapt._io.atomic_write_bytes`); returns its path. Uses the
    Agg canvas directly, so the global matplotlib backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    A = np.asarray(R, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < A.shape[0]:
        raise MetricError(f"accuracy matrix must be T x T or T x D with D >= T, got shape {A.shape}")
    T, D = A.shape
    domains = [str(d) for d in domains]
    if len(domains) != D:
        raise MetricError(f"got {len(domains)} domain names for a matrix with {D} columns")
    stage_names = [str(s) for s in (stages if stages is not None else domains[:T])]
    if len(stage_names) != T:
        raise MetricError(f"got {len(stage_names)} stage names for a matrix with {T} rows")

    fig = Figure(figsize=(2.5 + 1.1 * D, 1.5 + 0.7 * T), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    finite = A[np.isfinite(A)]
    vmax = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 100.0
    im = ax.imshow(np.ma.masked_invalid(A), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    fmt = "{:.2f}" if vmax == 1.0 else "{:.1f}"
    for i in range(T):
        for j in range(D):
            if np.isfinite(A[i, j]):
                color = "black" if A[i, j] > 0.6 * vmax else "white"
                ax.text(j, i, fmt.format(A[i, j]), ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(D), labels=domains, rotation=30, ha="right")
    ax.set_yticks(range(T), labels=[f"after {s}" for s in stage_names])
    ax.set_xlabel("evaluated domain")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    atomic_write_bytes(out, png.getvalue())
    return out
