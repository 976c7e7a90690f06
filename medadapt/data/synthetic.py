"""Built-in synthetic imaging "modalities" for offline demos and tests.

Each kind mimics how real modalities differ (channels, intensity statistics, texture,
noise, field of view) and has up to 3 classes told apart by a learnable but not trivial
visual cue, under random nuisance variation (position, size, contrast, noise):

* ``xray``: grey, dark lungs on brighter tissue, rib bands, smooth noise.
  Classes: normal / pneumonia (a soft bright patch inside a lung) / effusion (a bright
  band filling the bottom of a lung).
* ``ultrasound``: grey, multiplicative speckle inside a fan-shaped (cone) mask.
  Classes: normal / benign (dark round lesion) / malignant (dark lesion with an irregular,
  lobulated outline).
* ``fundus``: RGB orange-red disc on black, vignetting and a bright optic disc.
  Classes: healthy / exudates (small bright yellow dots) / hemorrhages (dark red blots).
* ``histology``: RGB pink (eosin) texture with purple nuclei.
  Classes: normal (few small nuclei) / tumor (many large, varied nuclei) / necrosis
  (pale tissue, tiny fragmented nuclei).

Generation is vectorised numpy and deterministic for ``(kind, n, n_classes, size, seed,
split)``; a few hundred images take a few milliseconds.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np

from ..errors import DataError

__all__ = [
    "SYNTHETIC_KINDS",
    "generate",
    "validate_synthetic_options",
    "default_synthetic_domains",
]

#: Per kind: default label names (in class order), a prompt template and channel count.
SYNTHETIC_KINDS: dict[str, dict[str, Any]] = {
    "xray": {
        "labels": ["normal", "pneumonia", "effusion"],
        "prompt": "a chest x-ray showing {}",
        "channels": 1,
    },
    "ultrasound": {
        "labels": ["normal", "benign lesion", "malignant lesion"],
        "prompt": "a breast ultrasound image with {}",
        "channels": 1,
    },
    "fundus": {
        "labels": ["healthy retina", "exudates", "hemorrhages"],
        "prompt": "a retinal fundus photograph showing {}",
        "channels": 3,
    },
    "histology": {
        "labels": ["normal tissue", "tumor", "necrosis"],
        "prompt": "a histology patch of {}",
        "channels": 3,
    },
}

_DEFAULTS = {"n_train": 200, "n_val": 50, "n_test": 100, "size": 32}
_OPTION_KEYS = ("kind", *_DEFAULTS)


def validate_synthetic_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Check synthetic options and return them with defaults filled in.

    Keys: ``kind`` (required, one of :data:`SYNTHETIC_KINDS`), ``n_train`` (200),
    ``n_val`` (50), ``n_test`` (100), ``size`` (32, image side in pixels, 8..512).
    """
    if not isinstance(opts, dict):
        raise DataError(f"synthetic options must be a mapping, got {type(opts).__name__}")
    unknown = sorted(set(opts) - set(_OPTION_KEYS))
    if unknown:
        raise DataError(f"unknown synthetic option(s) {unknown}; valid: {list(_OPTION_KEYS)}")
    kind = opts.get("kind")
    if kind not in SYNTHETIC_KINDS:
        raise DataError(f"unknown synthetic kind {kind!r}; valid kinds: {list(SYNTHETIC_KINDS)}")
    out = {**_DEFAULTS, **opts}
    for k in _DEFAULTS:
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"synthetic option {k!r} must be a non-negative integer, got {v!r}")
    if not 8 <= out["size"] <= 512:
        raise DataError(f"synthetic option 'size' must be in [8, 512], got {out['size']}")
    return out


def default_synthetic_domains(n_train: int = 200, n_test: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Three ready-made synthetic domain specs for the demo recipe.

    Each spec is ``{"name", "labels", "prompt", "data"}`` where ``prompt`` contains ``{}``
    and ``data`` is a :class:`~medadapt.data.base.DataConfig` mapping. The domains differ in
    channels, resolution, texture and class count (2, 3, 3 classes).
    """
    specs = [("synth_xray", "xray", 2, 32), ("synth_ultrasound", "ultrasound", 3, 28), ("synth_fundus", "fundus", 3, 40)]
    out = []
    for name, kind, n_cls, size in specs:
        info = SYNTHETIC_KINDS[kind]
        out.append(
            {
                "name": name,
                "labels": list(info["labels"][:n_cls]),
                "prompt": info["prompt"],
                "data": {
                    "format": "synthetic",
                    "synthetic": {"kind": kind, "n_train": n_train, "n_test": n_test, "size": size},
                    "seed": seed,
                },
            }
        )
    return out


def generate(
    kind: str, n: int, n_classes: int = 3, size: int = 32, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` images of ``kind`` with balanced labels in ``[0, n_classes)``.

    Returns ``(images, labels)``: uint8 ``(n, size, size)`` (grey kinds) or
    ``(n, size, size, 3)`` (RGB kinds), and int64 ``(n,)``. Deterministic for the arguments;
    different ``split`` names give independent samples.
    """
    if kind not in _GENERATORS:
        raise DataError(f"unknown synthetic kind {kind!r}; valid kinds: {list(SYNTHETIC_KINDS)}")
    if n_classes not in (2, 3):
        raise DataError(f"synthetic kind {kind!r} supports 2 or 3 classes, got {n_classes}")
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(kind.encode()), zlib.crc32(split.encode())])
    rng = np.random.default_rng(ss)
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    img = _GENERATORS[kind](rng, labels, size)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), labels


# ---------------------------------------------------------------------------- helpers
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, c, indexing="xy")  # xx, yy in (0, 1), shape (S, S)


def _col(v: np.ndarray) -> np.ndarray:
    return v[:, None, None]


def _blob(xx: np.ndarray, yy: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Gaussian blobs, shape (N, S, S)."""
    d2 = (xx - _col(cx)) ** 2 + (yy - _col(cy)) ** 2
    return np.exp(-d2 / (2.0 * _col(r) ** 2))


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled coarse Gaussian noise, shape (n, size, size), ~unit scale."""
    coarse = rng.standard_normal((n, cells, cells))
    pos = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    w = pos - lo
    m = np.zeros((size, cells))
    m[np.arange(size), lo] += 1 - w
    m[np.arange(size), hi] += w
    return np.einsum("ij,njk,lk->nil", m, coarse, m)


def _multi_blobs(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    count: np.ndarray,
    kmax: int,
    center: tuple[float, float],
    spread: float,
    r_range: tuple[float, float],
) -> np.ndarray:
    """Sum of up to ``kmax`` blobs per image (``count[i]`` active), shape (N, S, S)."""
    n = len(count)
    out = np.zeros((n,) + xx.shape)
    for k in range(kmax):
        active = (k < count).astype(float)
        if not active.any():
            break
        ang = rng.uniform(0, 2 * np.pi, n)
        rad = spread * np.sqrt(rng.uniform(0, 1, n))
        cx, cy = center[0] + rad * np.cos(ang), center[1] + rad * np.sin(ang)
        out += _col(active) * _blob(xx, yy, cx, cy, rng.uniform(*r_range, n))
    return out


# ------------------------------------------------------------------------------ kinds
def _xray(rng: np.random.Generator, y: np.ndarray, size: int) -> np.ndarray:
    n = len(y)
    xx, yy = _grid(size)
    img = 0.55 + 0.08 * _smooth_noise(rng, n, size, 4)
    side = rng.integers(0, 2, n)  # which lung carries the finding
    lung_cx = np.stack([0.3 + rng.normal(0, 0.02, n), 0.7 + rng.normal(0, 0.02, n)], 1)
    lungs = np.zeros((n, size, size))
    for s in range(2):
        e = ((xx - _col(lung_cx[:, s])) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2
        lungs = np.maximum(lungs, 1.0 / (1.0 + np.exp((e - 1.0) * 8)))
    ribs = 0.05 * np.sin(2 * np.pi * (yy * 6 + _col(rng.uniform(0, 1, n))))
    img = img - lungs * (0.35 - ribs)
    cx = lung_cx[np.arange(n), side]
    strength = rng.uniform(0.18, 0.3, n)
    pneu = _blob(xx, yy, cx + rng.normal(0, 0.04, n), rng.uniform(0.35, 0.65, n), rng.uniform(0.06, 0.1, n))
    pneu *= 1 + 0.3 * _smooth_noise(rng, n, size, 6)
    level = rng.uniform(0.62, 0.72, n)
    eff = 1.0 / (1.0 + np.exp(-(yy - _col(level)) * 40)) * lungs
    eff *= (np.abs(xx - _col(cx)) < 0.2)
    img += _col(strength * (y == 1)) * pneu * lungs + _col(1.25 * strength * (y == 2)) * eff
    gain = rng.uniform(0.8, 1.2, n)
    img = _col(gain) * (img - 0.4) + 0.4 + rng.normal(0, 0.04, img.shape)
    return img


def _ultrasound(rng: np.random.Generator, y: np.ndarray, size: int) -> np.ndarray:
    n = len(y)
    xx, yy = _grid(size)
    ax, ay = 0.5, -0.05
    r = np.hypot(xx - ax, yy - ay)
    theta = np.arctan2(xx - ax, yy - ay)
    cone = ((np.abs(theta) < np.deg2rad(38)) & (r > 0.15) & (r < 1.02)).astype(float)
    tissue = 0.45 + 0.12 * _smooth_noise(rng, n, size, 5) - 0.15 * _col(rng.uniform(0, 1, n)) * r
    lx, ly = rng.uniform(0.38, 0.62, n), rng.uniform(0.45, 0.72, n)
    lr = rng.uniform(0.09, 0.15, n)
    dx, dy = xx - _col(lx), yy - _col(ly)
    ang = np.arctan2(dy, dx)
    lobes = rng.integers(4, 7, n)
    wobble = 1 + _col((y == 2) * rng.uniform(0.3, 0.45, n)) * np.sin(_col(lobes) * ang + _col(rng.uniform(0, 6.3, n)))
    rad = np.hypot(dx, dy) / (_col(lr) * wobble)
    lesion = 1.0 / (1.0 + np.exp((rad - 1.0) * 10)) * _col((y > 0).astype(float))
    echo = tissue * (1 - 0.7 * lesion)
    # coarse speckle: exponential intensity at half resolution, upsampled (grainy texture)
    half = max(size // 2, 4)
    sp = rng.exponential(1.0, (n, half, half))
    idx = np.minimum((np.arange(size) * half) // size, half - 1)
    speckle = sp[:, idx][:, :, idx]
    return echo * (0.55 + 0.45 * speckle) * cone


def _fundus(rng: np.random.Generator, y: np.ndarray, size: int) -> np.ndarray:
    n = len(y)
    xx, yy = _grid(size)
    cx, cy = 0.5 + rng.normal(0, 0.02, n), 0.5 + rng.normal(0, 0.02, n)
    d = np.hypot(xx - _col(cx), yy - _col(cy))
    disc = 1.0 / (1.0 + np.exp((d - 0.45) * 60))
    shade = (1 - 1.2 * d**2) * (1 + 0.06 * _smooth_noise(rng, n, size, 5))
    od_side = np.where(rng.integers(0, 2, n) == 0, 0.3, 0.7)
    od = _blob(xx, yy, od_side + rng.normal(0, 0.02, n), cy + rng.normal(0, 0.03, n), np.full(n, 0.05))
    ex_count = np.where(y == 1, rng.integers(3, 8, n), 0)
    he_count = np.where(y == 2, rng.integers(2, 5, n), 0)
    ex = np.minimum(_multi_blobs(rng, xx, yy, ex_count, 7, (0.5, 0.5), 0.3, (0.012, 0.022)), 1.0)
    he = np.minimum(_multi_blobs(rng, xx, yy, he_count, 4, (0.5, 0.5), 0.3, (0.02, 0.035)), 1.0)
    base = np.array([0.85, 0.35, 0.15]) * _col(rng.uniform(0.8, 1.1, n))[..., None]
    img = base * shade[..., None]
    img = img + od[..., None] * np.array([0.3, 0.45, 0.3])
    img = img + 0.6 * ex[..., None] * np.array([0.35, 0.5, 0.05])
    img = img * (1 - 0.55 * he[..., None] * np.array([0.4, 1.0, 1.0]))
    img = img * disc[..., None] + rng.normal(0, 0.025, img.shape)
    return img


def _histology(rng: np.random.Generator, y: np.ndarray, size: int) -> np.ndarray:
    n = len(y)
    xx, yy = _grid(size)
    tex = _smooth_noise(rng, n, size, 8)
    pale = np.where(y == 2, rng.uniform(0.25, 0.4, n), rng.uniform(0.0, 0.1, n))
    eosin = np.array([0.93, 0.55, 0.75])
    white = np.array([0.97, 0.93, 0.95])
    w = np.clip(0.5 + 0.25 * tex + _col(pale), 0, 1)[..., None]
    img = eosin * (1 - w) + white * w
    count = np.select([y == 0, y == 1], [rng.integers(4, 8, n), rng.integers(10, 16, n)], rng.integers(10, 18, n))
    r_lo = np.select([y == 0, y == 1], [0.03, 0.045], 0.012)
    kmax = 18
    nuclei = np.zeros((n, size, size))
    for k in range(kmax):
        active = (k < count).astype(float)
        r = r_lo * rng.uniform(1.0, 1.5, n)
        cx, cy = rng.uniform(0.05, 0.95, n), rng.uniform(0.05, 0.95, n)
        nuclei = np.maximum(nuclei, _col(active) * _blob(xx, yy, cx, cy, r))
    hema = np.array([0.35, 0.2, 0.55])
    m = np.clip(nuclei * 1.6, 0, 1)[..., None]
    img = img * (1 - m) + hema * m
    return img + rng.normal(0, 0.03, img.shape)


_GENERATORS: dict[str, Callable[[np.random.Generator, np.ndarray, int], np.ndarray]] = {
    "xray": _xray,
    "ultrasound": _ultrasound,
    "fundus": _fundus,
    "histology": _histology,
}
