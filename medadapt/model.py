"""ContinualVLM: a frozen vision-language model with one adapter per domain plus shared adapters."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from .adapters.lora import LoraBank, default_lora_config, lora_owner
from .adapters.prompt import PromptAdapter, PromptConfig, PromptHooks
from .backbones import Backbone, backbone_from_model, load_backbone
from .domains import Domain, validate_name
from .errors import AdapterError, DomainError
from .images import ImageInput, preprocess
from .labels import check_label_prompts
from .scoring import DualEncoderScorer

if TYPE_CHECKING:  # pragma: no cover
    from .routing import DomainRouter, RoutedPrediction

AdapterSpec = Any  # peft.LoraConfig | PromptConfig | None
AUTO = "auto"  # predict_proba(domain=AUTO) routes each image to a domain (see medadapt.routing)


class ContinualVLM(nn.Module):
    """A frozen dual-encoder VLM serving many domains, each through its own LoRA or prompt adapter.

    Build one from a Hub id or local folder with :meth:`from_base`, from an already-built
    transformers model plus processor with the constructor, or restore a save with
    :meth:`from_pretrained`. Base weights never change: every base parameter has
    ``requires_grad=False`` and only adapters are trained.

    Example::

        model = ContinualVLM.from_base("openai/clip-vit-base-patch32")
        model.add_domain("chest-xray", labels=["normal", "pneumonia"], prompt="a chest x-ray showing {}.")
        probs = model.predict_proba(images, domain="chest-xray")
    """

    def __init__(
        self,
        model: nn.Module | Backbone,
        processor: Any = None,
        tokenizer: Any = None,
        image_processor: Any = None,
    ) -> None:
        super().__init__()
        backbone = model if isinstance(model, Backbone) else backbone_from_model(
            model, processor=processor, tokenizer=tokenizer, image_processor=image_processor
        )
        self.backbone = backbone
        self.base_model = backbone.model  # registered so .to(), .parameters() and accelerate see it
        self.prompt_adapters = nn.ModuleDict()
        self.lora = LoraBank(backbone.model)
        self.hooks = PromptHooks(backbone)
        self.scorer = DualEncoderScorer(backbone, self.lora, self.prompt_adapters, self.hooks)
        self.domains: dict[str, Domain] = {}
        self.shared: dict[str, str] = {}  # shared adapter name -> adapter type
        self.provenance: dict[str, dict[str, Any]] = {}  # adapter name -> where it was loaded from
        self.extras: dict[str, Any] = {}  # JSON-able per-model state other modules save (e.g. routing)
        self.stage_order: list[str] = []  # adapters (domains and shared) in the order they were added

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_base(
        cls,
        source: str,
        revision: str | None = None,
        trust_remote_code: bool = False,
        torch_dtype: torch.dtype | None = None,
        **hub_kwargs: Any,
    ) -> "ContinualVLM":
        """Load a frozen base dual encoder (CLIP, SigLIP, VisionTextDualEncoder) from the Hub or a folder."""
        return cls(load_backbone(source, revision, trust_remote_code, torch_dtype, **hub_kwargs))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        base: "nn.Module | Backbone | ContinualVLM | None" = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> "ContinualVLM":
        """Restore a :meth:`save_pretrained` folder (or Hub repo): base, domains and adapters.

        ``base`` overrides the base named in the manifest; its fingerprint must match the save.
        A folder or repo without ``manifest.json`` is loaded as a plain base model.
        """
        from .hub.io import load_model

        return load_model(cls, path, base=base, revision=revision, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, save_base: bool | None = None) -> None:
        """Write ``manifest.json`` and one peft-compatible folder per adapter, atomically.

        ``save_base`` also writes the base model into ``base/``; by default only when the base was
        built in memory and cannot be reloaded from a Hub id or folder.
        """
        from .hub.io import save_model

        save_model(self, save_directory, save_base=save_base)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        domains: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Publish the stages (all, or ``domains``), ``manifest.json`` and a model card as one Hub commit.

        Unchanged stages are not re-uploaded, so pushing after each stage gives one commit per stage.
        Other options (``token``, ``results``, ``overwrite_card``, ``save_base``, ``license``,
        ``commit_description``): see :func:`medadapt.hub.push.push_model`. Returns the ``CommitInfo``.
        """
        from .hub.push import push_model

        return push_model(self, repo_id, private=private, revision=revision, commit_message=commit_message, domains=domains, **kwargs)

    def load_adapter(self, path: str | os.PathLike, name: str | None = None, as_name: str | None = None, **kwargs: Any) -> str:
        """Bring one stage (a domain or shared adapter) from another save or Hub repo into this model.

        ``name`` picks the adapter in that save (optional when it holds one); ``as_name`` renames
        it here. The save's base fingerprint must match this model's base. Returns the new name.
        """
        from .hub.io import load_stage

        return load_stage(self, path, name=name, as_name=as_name, **kwargs)

    # -- domains and adapters ------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """All adapters in the order they were added (domains and shared)."""
        return [n for n in self.stage_order if not (n in self.domains and self.domains[n].adapter_type == "none")]

    def adapter_type(self, name: str) -> str:
        if name in self.prompt_adapters:
            return "prompt"
        if name in self.lora:
            return "lora"
        raise AdapterError(f"unknown adapter {name!r}; known: {self.adapter_names() or 'none'}.")

    def _check_new_name(self, name: str, what: str) -> None:
        validate_name(name, what)
        if name in self.domains or name in self.shared:
            kind = "domain" if name in self.domains else "shared adapter"
            raise DomainError(f"{what} {name!r} already exists (as a {kind}); remove it first or pick another name.")

    def _create_adapter(self, name: str, adapter: AdapterSpec, template: str, seed: int | None = None) -> str:
        from peft import LoraConfig

        if adapter is None:
            adapter = default_lora_config(self.backbone.family.lora_targets)
        if isinstance(adapter, dict):
            adapter = PromptConfig.from_dict(adapter) if adapter.get("adapter_type") == "prompt" else LoraConfig(**adapter)
        if isinstance(adapter, LoraConfig):
            self.lora.add(name, adapter)
            return "lora"
        if isinstance(adapter, PromptConfig):
            prompt = PromptAdapter.create(adapter, self.backbone, template=template, seed=seed)
            prompt.requires_grad_(False)
            self.prompt_adapters[name] = prompt
            return "prompt"
        raise AdapterError(
            f"adapter for {name!r} must be a peft LoraConfig or a medadapt PromptConfig, got {type(adapter).__name__}."
        )

    def add_domain(
        self,
        name: str,
        labels: Sequence[str],
        prompt: str = "{}",
        adapter: AdapterSpec = None,
        metadata: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Domain:
        """Add a domain with its labels, prompt template (with one ``{}``) and its own adapter.

        ``adapter`` is a peft ``LoraConfig`` or a :class:`PromptConfig`; by default a rank-8 LoRA
        on the attention projections of both towers. ``adapter="none"`` adds a domain without an
        adapter of its own (served by the base or by shared adapters, as in joint training).
        """
        self._check_new_name(name, "domain")
        labels = labels if isinstance(labels, str) else list(labels)  # a bare string is refused by Domain, not split
        domain = Domain(name=name, labels=labels, prompt=prompt, metadata=dict(metadata or {}))
        check_label_prompts(self.backbone, name, domain.prompts(), domain.labels)
        if isinstance(adapter, str) and adapter == "none":  # served by the base or a shared adapter only
            domain.adapter_type = "none"
        else:
            domain.adapter_type = self._create_adapter(name, adapter, prompt, seed)
        self.domains[name] = domain
        self.stage_order.append(name)
        return domain

    def add_shared_adapter(self, name: str, adapter: AdapterSpec = None, seed: int | None = None) -> str:
        """Add an adapter not tied to one domain's labels (e.g. the generalist tuned with rehearsal)."""
        self._check_new_name(name, "shared adapter")
        self.shared[name] = self._create_adapter(name, adapter, "{}", seed)
        self.stage_order.append(name)
        return name

    def remove_domain(self, name: str) -> None:
        """Drop a domain (or shared adapter) and its adapter weights."""
        if name not in self.domains and name not in self.shared:
            self._unknown_domain(name)
        if name in self.prompt_adapters:
            del self.prompt_adapters[name]
        elif name in self.lora:
            self.lora.remove(name)
        self.domains.pop(name, None)
        self.shared.pop(name, None)
        self.provenance.pop(name, None)
        self.stage_order.remove(name)

    remove_adapter = remove_domain

    def _unknown_domain(self, name: Any) -> None:
        raise DomainError(f"unknown domain {name!r}; known domains: {list(self.domains) or 'none (add one with add_domain)'}.")

    def get_domain(self, name: str) -> Domain:
        if not isinstance(name, str) or name not in self.domains:
            self._unknown_domain(name)
        return self.domains[name]

    def resolve_adapter(self, domain: str, adapter: str | Sequence[str] | None = None) -> str | tuple[str, ...] | None:
        """Which adapter serves ``domain``: its own (default), ``"base"`` (None) or a named one."""
        spec = self.get_domain(domain)
        if adapter is None:
            return domain if spec.adapter_type != "none" else None
        if adapter == "base":
            return None
        names = [adapter] if isinstance(adapter, str) else list(adapter)
        for n in names:
            if n not in self.domains and n not in self.shared:
                raise AdapterError(
                    f"unknown adapter {n!r}; use 'base', a domain name {list(self.domains)} "
                    f"or a shared adapter {list(self.shared)}."
                )
        prompts = [n for n in names if n in self.prompt_adapters]
        if len(prompts) > 1:
            raise AdapterError(f"at most one prompt adapter can be stacked, got {prompts}.")
        return names[0] if len(names) == 1 else tuple(names)

    # -- training support ----------------------------------------------------------------------
    def set_trainable(self, names: Sequence[str]) -> list[nn.Parameter]:
        """Make exactly the adapters ``names`` trainable (all else frozen); returns their parameters."""
        for n in names:
            self.adapter_type(n)
        self.lora.set_trainable([n for n in names if n in self.lora])
        for key, prompt in self.prompt_adapters.items():
            prompt.requires_grad_(key in names)
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters of one adapter."""
        if self.adapter_type(name) == "prompt":
            return list(self.prompt_adapters[name].parameters())
        return self.lora.parameters(name)

    def text_tower_trainable(self, name: str) -> bool:
        """Whether training adapter ``name`` changes the label-prompt embeddings."""
        if self.adapter_type(name) == "prompt":
            return True
        return any("text_model" in n for n, p in self.base_model.named_parameters() if lora_owner(n) == name)

    def train(self, mode: bool = True) -> "ContinualVLM":
        """Train mode for adapters only: the frozen base stays in eval mode (no base dropout),
        while LoRA dropout follows ``mode``."""
        super().train(mode)
        self.base_model.eval()
        for module in self.base_model.modules():
            dropout = getattr(module, "lora_dropout", None)
            if isinstance(dropout, nn.ModuleDict):
                dropout.train(mode)
        return self

    def forward(self, pixel_values: torch.Tensor, domain: str, adapter: str | Sequence[str] | None = None) -> torch.Tensor:
        """Class logits ``(N, num_labels)`` for a batch of preprocessed images of one domain."""
        return self.scorer.logits(pixel_values, self.get_domain(domain), self.resolve_adapter(domain, adapter))

    # -- inference -----------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput] | ImageInput) -> torch.Tensor:
        """PIL / numpy / torch / paths / bytes (grey, RGB or RGBA, any size) -> pixel values."""
        return preprocess(images, self.backbone.image_processor)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageInput] | ImageInput, adapter: str | Sequence[str] | None = "base") -> torch.Tensor:
        """Normalised image embeddings through ``adapter`` (``"base"`` = frozen model)."""
        return self.scorer.image_features(self.preprocess(images), self._named_adapter(adapter))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str] | str, adapter: str | Sequence[str] | None = "base") -> torch.Tensor:
        """Normalised text embeddings through ``adapter``'s LoRA weights (``"base"`` = frozen model)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.scorer.text_features(texts, self._named_adapter(adapter))

    def _named_adapter(self, adapter: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
        if adapter is None or adapter == "base":
            return None
        names = [adapter] if isinstance(adapter, str) else list(adapter)
        for n in names:
            self.adapter_type(n)
        return names[0] if len(names) == 1 else tuple(names)

    @torch.no_grad()
    def predict_proba(
        self,
        images: Sequence[ImageInput] | ImageInput,
        domain: str | Sequence[str],
        adapter: str | Sequence[str] | None = None,
    ) -> torch.Tensor | list[torch.Tensor] | list[RoutedPrediction]:
        """Class probabilities from the domain's adapter scoring its label prompts.

        ``domain`` is one name (returns an ``(N, num_labels)`` tensor) or one name per image (a
        mixed-domain batch; returns a list of per-image probability tensors, computed with batched
        forwards). ``adapter``: ``None`` for each domain's own adapter, ``"base"`` for the frozen
        zero-shot model, or the name of a shared adapter.

        ``domain="auto"`` routes each image with the router fitted by :meth:`fit_router` (or by the
        trainer) and returns one :class:`~medadapt.routing.RoutedPrediction` per image: ``probs``
        over the routed domain's ``labels``, the ``domain`` and ``adapter`` that served it, and
        ``unrouted`` (matched no domain well: served by the router's fallback shared adapter).
        """
        was_training = self.training
        self.eval()
        try:
            if isinstance(domain, str) and domain == AUTO:
                from .routing import predict_routed

                return predict_routed(self, self.preprocess(images), adapter)
            if isinstance(domain, str):
                pixel_values = self.preprocess(images)
                logits = self.scorer.logits(pixel_values, self.get_domain(domain), self.resolve_adapter(domain, adapter))
                return logits.softmax(dim=-1).cpu()
            return self._predict_mixed(images, list(domain), adapter)
        finally:
            self.train(was_training)

    def _predict_mixed(self, images: Any, domains: list[str], adapter: str | None) -> list[torch.Tensor]:
        pixel_values = self.preprocess(images)
        if len(domains) != pixel_values.shape[0]:
            raise DomainError(f"got {pixel_values.shape[0]} images but {len(domains)} domain names; give one per image.")
        return self._probs_mixed(pixel_values, domains, [self.resolve_adapter(d, adapter) for d in domains])

    def _probs_mixed(self, pixel_values: torch.Tensor, domains: list[str], served: list[Any]) -> list[torch.Tensor]:
        """Per-image probabilities of preprocessed images, image ``i`` over ``domains[i]``'s labels via ``served[i]``."""
        for s in served:
            if isinstance(s, tuple):
                raise AdapterError("stacked adapters are not supported in a mixed-domain batch; call per domain.")
        image_feats = self.scorer.image_features_mixed(pixel_values, served)
        pairs = sorted(set(zip(domains, served)), key=lambda p: (p[0], p[1] or ""))
        label_feats = dict(zip(pairs, self.scorer.label_features_many([(self.domains[d], a) for d, a in pairs])))
        out = []
        for i, key in enumerate(zip(domains, served)):
            logits = self.scorer.logits_from_features(image_feats[i : i + 1], label_feats[key])
            out.append(logits.softmax(dim=-1)[0].cpu())
        return out

    # -- routing and composition ---------------------------------------------------------------
    def fit_router(self, images: Mapping[str, Any], threshold: float = 0.99, fallback: str | None = "auto", preprocessed: bool = False, **options: Any) -> "DomainRouter":
        """Fit the router behind ``predict_proba(..., domain="auto")`` on ``{domain: training images}``.

        ``threshold`` (in [0, 1]) is the fraction of each domain's held-out images that must stay
        routed; images farther from every domain go to ``fallback`` (``"auto"``: the shared adapter
        ``shared`` or the only one; ``None``: the frozen base) flagged unrouted. The router is
        saved with the model (``extras["router"]``). See :mod:`medadapt.routing`.
        """
        from .routing import fit_router

        return fit_router(self, images, threshold=threshold, fallback=fallback, preprocessed=preprocessed, **options)

    def merge_adapters(self, names: Sequence[str], into: str = "merged", method: str = "linear", weights: Sequence[float] | None = None, **options: Any) -> str:
        """Build shared LoRA ``into`` from LoRAs ``names`` with peft's ``add_weighted_adapter``
        (``method``: ``linear``, ``ties``, ``dare_ties``, ...); saved as a normal stage. See
        :func:`medadapt.merging.merge_adapters`."""
        from .merging import merge_adapters

        return merge_adapters(self, names, into=into, method=method, weights=weights, **options)

    def extra_repr(self) -> str:
        return f"base={self.backbone.source or 'in-memory'}, domains={list(self.domains)}, shared={list(self.shared)}"
