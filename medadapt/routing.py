"""Automatic routing: which domain (and so which adapter) serves an image whose domain is not given.

A :class:`DomainRouter` is fitted on the *frozen* base's image features of each trained domain's
training images and never sees an adapter, so adding or retraining adapters does not move it:

* **features** (:func:`router_features`): the vision tower's pooled output plus, for up to
  ``max_layers`` hidden states, the token mean and the token covariance (second-order pooling) of
  the hidden channels (averaged into at most ``channel_groups`` groups, so the size stays bounded
  for large towers); each block L2-normalised. With ``detail`` (default) the same features of the
  image's fine-detail band (the image minus its 2x down- and up-sampled copy) are appended: both
  views go through the same frozen tower. Second-order statistics of both views capture texture
  and acquisition (speckle, sharpness, resampling), which tells modalities apart even for a base
  with random weights (on PneumoniaMNIST / BreastMNIST / VQA-RAD organ with ``tiny-clip``, the
  detail view takes routing accuracy from 0.96 to 0.98).
* **routing**: a Gaussian per domain with a shared, shrunk covariance; the domain with the highest
  likelihood wins (linear discriminant analysis with equal priors, stored as one weight vector and
  one bias per domain).
* **unrouted**: the image's distance to the chosen domain's mean (mean squared z-score under a
  shared diagonal variance) is compared with that domain's *calibrated threshold*: the
  ``threshold`` quantile (coverage, in [0, 1]) of the same distance on held-out training images
  (cross-fitted over folds). Images beyond it match no domain well: they are served by the
  ``fallback`` shared adapter (the rehearsal-trained generalist) and flagged ``unrouted``.

The router is saved as JSON in ``model.extras["router"]`` (arrays as base64 little-endian
float32, no pickle), so it travels in ``manifest.json`` through ``save_pretrained`` /
``from_pretrained`` and the Hub, and a restored model routes exactly as the saved one.

Example::

    model.fit_router({"chest": chest_images, "breast": breast_images}, threshold=0.99)
    for p in model.predict_proba(images, domain="auto"):
        print(p.domain, p.adapter, p.unrouted, p.probs)
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import RoutingError

if TYPE_CHECKING:  # pragma: no cover
    from .families.base import Backbone

ROUTER_KEY = "router"  # key of the router state in ``model.extras``
FORMAT_VERSION = 1


# -- features --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """Which frozen vision-tower features the router reads (saved with the router)."""

    max_layers: int = 4  # hidden states used (evenly spaced, first and last included)
    channel_groups: int = 32  # hidden channels are averaged into at most this many groups
    detail: bool = True  # also the features of the image's fine-detail band

    def layers(self, n_states: int) -> list[int]:
        if n_states <= self.max_layers:
            return list(range(n_states))
        return sorted({int(round(i)) for i in np.linspace(0, n_states - 1, self.max_layers)})


def _token_blocks(hidden: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Token mean and upper-triangular token covariance of one hidden state ``(N, T, C)``; a CNN
    feature map ``(N, C, H, W)`` counts its ``H * W`` positions as tokens."""
    if hidden.dim() == 4:
        hidden = hidden.flatten(2).transpose(1, 2)
    if hidden.shape[-1] > groups:
        hidden = F.adaptive_avg_pool1d(hidden, groups)
    mean = hidden.mean(1)
    centred = hidden - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / hidden.shape[1]
    rows, cols = torch.triu_indices(cov.shape[1], cov.shape[2], device=cov.device)
    return [mean, cov[:, rows, cols]]


def detail_band(pixel_values: torch.Tensor) -> torch.Tensor:
    """The image minus its 2x average-pooled, bilinearly upsampled copy (its finest frequency band)."""
    coarse = F.avg_pool2d(pixel_values, 2, ceil_mode=True)
    return pixel_values - F.interpolate(coarse, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def _tower_blocks(backbone: "Backbone", pixel_values: torch.Tensor, spec: FeatureSpec) -> list[torch.Tensor]:
    pooled, states = backbone.family.vision_states(backbone.model, pixel_values)
    blocks = [pooled.flatten(1)]
    for layer in spec.layers(len(states)):
        blocks += _token_blocks(states[layer].float(), spec.channel_groups)
    return blocks


@torch.no_grad()
def router_features(backbone: "Backbone", pixel_values: torch.Tensor, spec: FeatureSpec = FeatureSpec(), batch_size: int = 256) -> torch.Tensor:
    """``(N, d)`` float64 routing features of preprocessed images through the base's vision tower.

    Call it with no adapter active (:meth:`medadapt.ContinualVLM.router_features` does)."""
    device = next(backbone.model.parameters()).device
    dtype = getattr(backbone.model, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in backbone.model.parameters() if p.is_floating_point()), torch.float32)
    pixel_values = backbone.family.vision_pixels(pixel_values)
    out = []
    for start in range(0, pixel_values.shape[0], batch_size):
        chunk = pixel_values[start : start + batch_size].to(device, dtype=torch.float32)
        views = [chunk, detail_band(chunk)] if spec.detail else [chunk]
        blocks = [b for view in views for b in _tower_blocks(backbone, view.to(dtype), spec)]
        out.append(torch.cat([F.normalize(b.double(), dim=-1) for b in blocks], dim=1).cpu())
    return torch.cat(out)


# -- serialisation ---------------------------------------------------------------------------------
def _encode(array: torch.Tensor) -> dict[str, Any]:
    data = array.detach().cpu().numpy().astype("<f4")
    return {"dtype": "<f4", "shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode(entry: Any, what: str) -> torch.Tensor:
    try:
        data = np.frombuffer(base64.b64decode(entry["data"], validate=True), dtype=entry["dtype"])
        return torch.from_numpy(data.reshape(entry["shape"]).astype(np.float64))
    except (KeyError, TypeError, ValueError) as exc:
        raise RoutingError(f"the saved router's {what!r} is corrupted ({exc}); fit the router again.") from exc


def _float32(array: torch.Tensor) -> torch.Tensor:
    """Round to what is saved, so a fitted router and its restored copy route identically."""
    return array.float().double()


# -- the router ------------------------------------------------------------------------------------
@dataclass
class RouteDecision:
    """Per image: the best-matching domain, whether it is unrouted, and its distance / threshold."""

    domains: list[str]
    unrouted: list[bool]
    scores: list[float]  # <= 1: within the chosen domain's calibrated threshold


@dataclass
class DomainRouter:
    """Gaussian domain router over frozen-base features (see the module docstring)."""

    domains: list[str]
    weights: torch.Tensor  # (K, d) linear discriminant
    bias: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, d)
    variances: torch.Tensor  # (d,) shared diagonal variance for the distance
    thresholds: torch.Tensor  # (K,) distance thresholds
    coverage: float = 0.99
    fallback: str | None = None  # shared adapter serving unrouted images (None: the frozen base)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    base_fingerprint: str | None = None

    @classmethod
    def fit(
        cls,
        features: Mapping[str, torch.Tensor],
        threshold: float = 0.99,
        shrinkage: float = 0.02,
        folds: int = 5,
        fallback: str | None = None,
        spec: FeatureSpec = FeatureSpec(),
        base_fingerprint: str | None = None,
    ) -> "DomainRouter":
        """Fit on ``{domain: (n, d) features}``; ``threshold`` is the in-domain coverage in [0, 1]."""
        coverage = check_threshold(threshold)
        if not 0.0 < shrinkage <= 1.0:
            raise RoutingError(f"shrinkage must be in (0, 1], got {shrinkage!r}.")
        if not features:
            raise RoutingError("cannot fit a router without domains: give at least one domain's images.")
        xs = {name: torch.as_tensor(x, dtype=torch.float64) for name, x in features.items()}
        for name, x in xs.items():
            if x.ndim != 2 or x.shape[0] < 2:
                raise RoutingError(f"domain {name!r}: need at least 2 images to fit the router, got {x.shape[0] if x.ndim else 0}.")
        names = list(xs)
        means = torch.stack([x.mean(0) for x in xs.values()])
        cov = sum(_scatter(x) for x in xs.values()) / len(xs)  # equal weight per domain
        ridge = shrinkage * cov.trace() / cov.shape[0] + 1e-12
        cov.mul_(1 - shrinkage).diagonal().add_(ridge)  # shrunk towards a scaled identity
        solved = torch.cholesky_solve(means.T, torch.linalg.cholesky(cov)).T  # (K, d) = means @ inv(cov)
        bias = -0.5 * (solved * means).sum(1)
        spreads = [x.var(0, correction=0) for x in xs.values()]
        variances = _pooled_variances(spreads, shrinkage)
        thresholds = torch.stack([_calibrate(list(xs.values()), spreads, i, folds, shrinkage, coverage) for i in range(len(names))])
        return cls(
            names, _float32(solved), _float32(bias), _float32(means), _float32(variances), _float32(thresholds),
            coverage, fallback, spec, base_fingerprint,
        )

    # -- scoring ---------------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> RouteDecision:
        """Best-matching domain of each feature row, and whether it is beyond that domain's threshold."""
        x = x.to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise RoutingError(f"features of shape {tuple(x.shape)} do not fit a router fitted on {self.means.shape[1]} features.")
        best = (x @ self.weights.T + self.bias).argmax(1)
        dist = ((x - self.means[best]).square() / self.variances).mean(-1)  # mean squared z-score
        ratio = dist / self.thresholds[best].clamp_min(1e-300)
        return RouteDecision([self.domains[i] for i in best.tolist()], (ratio > 1).tolist(), ratio.tolist())

    # -- state -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (for ``model.extras["router"]``)."""
        arrays = ("weights", "bias", "means", "variances", "thresholds")
        return {
            "format_version": FORMAT_VERSION,
            "method": "lda+diagonal-distance",
            "domains": list(self.domains),
            "coverage": self.coverage,
            "fallback": self.fallback,
            "features": asdict(self.features),
            "base_fingerprint": self.base_fingerprint,
            **{name: _encode(getattr(self, name)) for name in arrays},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "DomainRouter":
        """Inverse of :meth:`to_dict`; a malformed state raises :class:`RoutingError`."""
        version = state.get("format_version") if isinstance(state, Mapping) else None
        if version != FORMAT_VERSION:
            raise RoutingError(f"unsupported router state (format_version {version!r}, expected {FORMAT_VERSION}); fit the router again.")
        arrays = {name: _decode(state.get(name), name) for name in ("weights", "bias", "means", "variances", "thresholds")}
        k, d = arrays["means"].shape if arrays["means"].ndim == 2 else (-1, -1)
        shapes = {"weights": (k, d), "bias": (k,), "variances": (d,), "thresholds": (k,)}
        try:
            domains = [str(n) for n in state["domains"]]
            router = cls(domains, coverage=float(state["coverage"]), fallback=state.get("fallback"),
                         features=FeatureSpec(**(state.get("features") or {})), base_fingerprint=state.get("base_fingerprint"), **arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise RoutingError(f"the saved router state is invalid ({exc!r}); fit the router again.") from exc
        if k != len(domains) or any(tuple(arrays[n].shape) != s for n, s in shapes.items()):
            raise RoutingError("the saved router's arrays do not match its domains; fit the router again.")
        return router


def check_threshold(threshold: Any) -> float:
    """``threshold`` (the in-domain coverage) as a float in [0, 1], or a clear error."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise RoutingError(
            f"threshold must be a number in [0, 1] (the fraction of each domain's held-out images that must "
            f"stay routed, e.g. 0.99), got {threshold!r}."
        )
    return float(threshold)


def _scatter(x: torch.Tensor) -> torch.Tensor:
    """Biased covariance of the rows of ``x`` (the d x d product in float32: the costly part of a fit)."""
    centred = (x - x.mean(0)).float()
    return (centred.T @ centred).double() / x.shape[0]


def _pooled_variances(spreads: Sequence[torch.Tensor], shrinkage: float) -> torch.Tensor:
    """Per-feature variances averaged over domains, shrunk towards their mean."""
    var = sum(spreads) / len(spreads)
    var = (1 - shrinkage) * var + shrinkage * var.mean()
    return var.clamp_min(1e-12)


def _calibrate(xs: Sequence[torch.Tensor], spreads: Sequence[torch.Tensor], index: int, folds: int, shrinkage: float, coverage: float) -> torch.Tensor:
    """Threshold of domain ``index``: the ``coverage`` quantile of its cross-fitted held-out distances."""
    own = xs[index]
    k = max(2, min(folds, own.shape[0]))
    fold = torch.randperm(own.shape[0], generator=torch.Generator().manual_seed(index)) % k
    held = []
    for f in range(k):
        rest = own[fold != f]
        variances = _pooled_variances([rest.var(0, correction=0) if i == index else v for i, v in enumerate(spreads)], shrinkage)
        held.append(((own[fold == f] - rest.mean(0)).square() / variances).mean(-1))
    return torch.quantile(torch.cat(held), coverage)


# -- predictions and checks -------------------------------------------------------------------------
@dataclass
class RoutedPrediction:
    """One image's automatically routed prediction.

    ``probs`` are over ``labels`` (those of ``domain``, the best-matching domain), computed by
    ``adapter`` (``None``: the frozen base). When ``unrouted`` is true the image matched no domain
    within its calibrated threshold: it was scored by the router's fallback shared adapter, still
    against the best-matching domain's labels. ``score`` is the distance to ``domain`` divided by
    its threshold (``<= 1``: within it).
    """

    probs: torch.Tensor
    labels: list[str]
    domain: str
    adapter: str | None
    unrouted: bool
    score: float


def check_routable(domains: Sequence[str], images: Mapping[str, Any]) -> None:
    """Refuse to fit a router without domains, without images, or on images of unknown domains."""
    if not domains:
        raise RoutingError("the model has no trained domains to route to; add and train domains first.")
    if not images:
        raise RoutingError(f"no images given to fit the router; give some training images of each of {list(domains)}.")
    unknown = [name for name in images if name not in domains]
    if unknown:
        raise RoutingError(f"cannot route to {unknown}: not domains of this model (domains: {list(domains)}).")


def load_router(state: Mapping[str, Any] | None, domains: Collection[str], shared: Collection[str], fingerprint: str | None) -> DomainRouter:
    """The router saved as ``state``, checked against the model's ``domains``, ``shared`` adapters and
    base weights ``fingerprint``."""
    if not domains:
        raise RoutingError("cannot route: the model has no trained domains (add and train domains, then fit_router).")
    if not state:
        raise RoutingError(
            "cannot route: no router was fitted for this model; call model.fit_router({domain: images, ...}) "
            "or train with ContinualTrainer, which fits one after every stage."
        )
    router = DomainRouter.from_dict(state)
    missing = [d for d in router.domains if d not in domains]
    if missing:
        raise RoutingError(f"the router routes to {missing}, which this model no longer has; fit the router again.")
    if router.fallback is not None and router.fallback not in shared:
        raise RoutingError(f"the router's fallback adapter {router.fallback!r} is not in this model; fit the router again.")
    if router.base_fingerprint and fingerprint and router.base_fingerprint != fingerprint:
        raise RoutingError("the router was fitted on another base model's features; fit it again on this base.")
    return router


@torch.no_grad()
def evaluate_routing(
    predict: Callable[..., list[RoutedPrediction]],
    pixels: Mapping[str, torch.Tensor],
    labels: Mapping[str, np.ndarray],
    serve: Mapping[str, str | None],
    batch_size: int = 256,
    questions: Mapping[str, Sequence[str] | None] | None = None,
) -> dict[str, Any]:
    """Routing quality on labelled test images of known domains.

    ``routing_accuracy``: fraction of all images routed to their own domain and not unrouted
    (``routing_accuracy_per_domain`` per domain); ``domain_match_accuracy`` ignores the threshold;
    ``unrouted_rate``: in-domain images flagged unrouted; ``auto_routing_accuracy_per_domain``:
    classification accuracy end to end (routed, then scored by ``serve[routed domain]`` or the
    fallback; a misrouted image counts as wrong). ``predict`` is
    :meth:`medadapt.ContinualVLM.predict_routed`.
    """
    counts: dict[str, dict[str, int]] = {}
    for domain, pv in pixels.items():
        c = counts.setdefault(domain, {"n": 0, "routed": 0, "matched": 0, "unrouted": 0, "correct": 0})
        truth = np.asarray(labels[domain])
        for start in range(0, pv.shape[0], batch_size):
            asked = (questions or {}).get(domain)
            chunk = asked[start : start + batch_size] if asked is not None else None
            preds = predict(pv[start : start + batch_size], serve=serve, questions=chunk)
            for p, y in zip(preds, truth[start : start + batch_size]):
                c["n"] += 1
                c["matched"] += p.domain == domain
                c["unrouted"] += p.unrouted
                c["routed"] += p.domain == domain and not p.unrouted
                c["correct"] += p.domain == domain and int(p.probs.argmax()) == int(y)
    total = max(1, sum(c["n"] for c in counts.values()))
    return {
        "routing_accuracy": sum(c["routed"] for c in counts.values()) / total,
        "routing_accuracy_per_domain": {d: c["routed"] / max(1, c["n"]) for d, c in counts.items()},
        "domain_match_accuracy": sum(c["matched"] for c in counts.values()) / total,
        "unrouted_rate": sum(c["unrouted"] for c in counts.values()) / total,
        "auto_routing_accuracy_per_domain": {d: c["correct"] / max(1, c["n"]) for d, c in counts.items()},
    }
