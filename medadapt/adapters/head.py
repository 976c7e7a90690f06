"""Head adapters: a linear classifier over the image tower's features, on top of the label-prompt prior.

A head adapter scores a domain's labels as

    logits = text_weight * zero_shot_logits + step_scale * standardise(features) @ weight.T + bias

where ``zero_shot_logits`` are the dual encoder's own scaled cosine similarities between the image
embedding and the label prompts' text embeddings (through any LoRA stacked with the head), and
``features`` the image tower's pooled features (the tower's own output before the shared-space
projection for a ``VisionTextDualEncoderModel``; the unnormalised image embedding for CLIP and
SigLIP). An untrained head (``weight = 0``, ``bias = 0``, ``text_weight = 1``) is exactly the
zero-shot model, so a real text tower's label prompts stay the prior the head starts from.

``standardise`` subtracts the training features' mean and divides by their standard deviation
(buffers set from data, identity before), and ``step_scale`` (``HeadConfig.step_scale``, 0.1) makes
the weights move ten times slower than the run's learning rate: measured on EfficientNet-Lite0
features, a linear layer on standardised features trains best near lr 3e-4 while LoRA stages want
about 3e-3, and one run has one learning rate (benchmarks/results/real_tower_quick/paradigms_efficientnet-lite0.json).

Before its first training step a head can be initialised from data (:func:`initial_head`, called by
the trainer through :meth:`medadapt.adapters.kind.AdapterKind.initialise`): the bias starts at the
training split's log class frequencies, and the text prior is kept only when it predicts the
training images better than those frequencies alone (on a random text tower it does not, and is
switched off; ``text_weight`` is a buffer, fixed by that choice), and the standardisation statistics
are taken from the same features. With ``init="class_mean"`` the weights also start from the class means of the
features (a diagonal-covariance LDA classifier); ``init="text"`` keeps the zero-shot start as is.
This is the CLAP / LP++ line of few-shot VLM adaptation: a linear probe that starts from, and keeps,
the text prior. A head is tied to one domain's labels, so it serves domains, not shared adapters.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError

HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head_model.safetensors"
HEAD_INITS = ("auto", "text", "class_mean", "zero")
HEAD_REFUSAL = (
    "a head adapter is a linear classifier over image features beside the label prompts' text embeddings; "
    "a generative base scores labels by the likelihood of their text and has no image embedding to put it on. "
    "Use a LoRA (peft LoraConfig) on a generative base."
)


@dataclass
class HeadConfig:
    """Configuration of a head adapter.

    ``init``: ``"auto"`` (bias from class frequencies, text prior kept only when it helps on the
    training data, weights zero), ``"class_mean"`` (as auto, weights from the features' class means),
    ``"text"`` (the zero-shot model, untouched by data) or ``"zero"`` (no text prior, zero weights).
    ``num_labels``, ``feature_dim`` and ``embed_dim`` are resolved against the base and the domain
    when the adapter is created and saved with it; ``initialised`` records that data set the start.
    """

    init: str = "auto"
    num_labels: int | None = None
    feature_dim: int | None = None
    embed_dim: int | None = None
    initialised: bool = False
    step_scale: float = 0.1
    adapter_type: str = "head"

    refusal = HEAD_REFUSAL  # why a family without image features refuses it (class attribute, not saved)

    def __post_init__(self) -> None:
        if self.init not in HEAD_INITS:
            raise AdapterError(f"HeadConfig.init must be one of {list(HEAD_INITS)}, got {self.init!r}.")
        if not (isinstance(self.step_scale, (int, float)) and math.isfinite(self.step_scale) and self.step_scale > 0):
            raise AdapterError(f"HeadConfig.step_scale must be a positive number, got {self.step_scale!r}.")
        for name in ("num_labels", "feature_dim", "embed_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise AdapterError(f"HeadConfig.{name} must be a positive integer, got {value!r}.")

    @property
    def resolved(self) -> bool:
        return self.num_labels is not None and self.feature_dim is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadConfig":
        """Build from a saved dict; unknown keys (from a newer medadapt) are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"HeadConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class HeadAdapter(nn.Module):
    """Trained: ``weight`` ``(num_labels, feature_dim)`` and ``bias`` ``(num_labels,)``. Buffers set from
    data (saved too): the text prior's ``text_weight`` and the features' ``mean`` and ``std``."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        if not config.resolved:
            raise AdapterError("HeadAdapter needs a resolved HeadConfig; add it with ContinualVLM.add_domain().")
        self.config = config
        self.weight = nn.Parameter(torch.zeros(config.num_labels, config.feature_dim))
        self.bias = nn.Parameter(torch.zeros(config.num_labels))
        self.register_buffer("text_weight", torch.ones(()))
        self.register_buffer("mean", torch.zeros(config.feature_dim))
        self.register_buffer("std", torch.ones(config.feature_dim))

    def check_inputs(self, features: torch.Tensor, num_labels: int, what: str) -> None:
        """A clear error when the features or the domain's labels do not fit this head."""
        if features.shape[-1] != self.config.feature_dim:
            raise AdapterError(
                f"{what}: the head adapter was built for image features of size {self.config.feature_dim}, "
                f"this base gives {features.shape[-1]}."
            )
        if num_labels != self.config.num_labels:
            raise AdapterError(f"{what}: the head adapter scores {self.config.num_labels} labels, the domain has {num_labels}.")

    def forward(self, features: torch.Tensor, zero_shot: torch.Tensor) -> torch.Tensor:
        """``(N, num_labels)`` logits from ``(N, feature_dim)`` features and the zero-shot logits."""
        w = self.weight
        z = (features.to(w.dtype) - self.mean) / self.std
        return self.text_weight.to(zero_shot.dtype) * zero_shot + self.config.step_scale * (z @ w.t()) + self.bias


def initial_head(head: HeadAdapter, features: torch.Tensor, zero_shot: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Set ``head``'s start from training ``features``, their ``zero_shot`` logits and ``labels``.

    Returns what was decided (for logs and tests): the class log-frequencies used as bias, whether
    the text prior was kept (its cross-entropy on these images against the frequencies' alone).
    """
    k = head.config.num_labels
    labels = labels.long().to(features.device)
    features, zero_shot = features.float(), zero_shot.float()
    counts = torch.bincount(labels, minlength=k).float()
    log_prior = (counts.clamp_min(1.0) / counts.sum()).log()
    prior_ce = float(F.cross_entropy(log_prior.expand(len(labels), -1), labels))
    text_ce = float(F.cross_entropy(zero_shot + log_prior, labels))
    init = head.config.init
    keep_text = init == "text" or (init in ("auto", "class_mean") and text_ce < prior_ce)
    with torch.no_grad():
        if init == "text":
            decided = {"init": init, "text_prior": True}
            head.config.initialised = True
            return decided
        head.text_weight.fill_(1.0 if keep_text else 0.0)
        head.bias.copy_(log_prior)
        head.weight.zero_()
        head.mean.copy_(features.mean(0))
        head.std.copy_(features.std(0).clamp_min(1e-3) if len(features) > 1 else torch.ones_like(head.std))
        features = (features - head.mean) / head.std
        if init == "class_mean":
            present = [c for c in range(k) if counts[c] > 0]
            means = torch.zeros(k, features.shape[1], device=features.device)
            for c in present:
                means[c] = features[labels == c].mean(0)
            var = ((features - means[labels]) ** 2).mean(0).clamp_min(1e-6)
            weight = means / var
            bias = -(means * means / var).sum(1) / 2
            centre = weight[present].mean(0)  # a shared offset changes no prediction: keep weights small
            weight = (weight - centre) / head.config.step_scale
            head.weight.copy_(torch.where(counts[:, None] > 0, weight, torch.zeros_like(weight)))
            head.bias.add_(torch.where(counts > 0, bias - bias[present].mean(), torch.zeros_like(bias)))
    head.config.initialised = True
    return {"init": init, "text_prior": keep_text, "prior_ce": prior_ce, "text_ce": text_ce if math.isfinite(text_ce) else None}
