"""ContinualVLM: a frozen vision-language model with one adapter per domain plus shared adapters."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .adapters import LORA, AdapterSet, adapter_kind, adapter_kinds, kind_for_spec
from . import call_checks
from .adapters.gate import changes_adapters, served
from .adapters.lora import default_lora_config
from .backbones import Backbone, backbone_from_model, load_backbone
from .domains import Domain
from .errors import AdapterError, DomainError, RoutingError
from .export.merged import export_merged
from .saves.io import ModelParts, SavedStage, load_save, read_stage, save_model
from .hub.pull import locate_save
from .hub.push import push_model
from .images import ImageInput, image_list
from .labels import check_label_prompts
from .merging import MERGES_KEY, plan_merge
from .quantization import quantization_config
from .routing import ROUTER_KEY, DomainRouter, FeatureSpec, RoutedPrediction, check_routable, check_threshold, load_router, router_features
from .stages import DOMAIN, SHARED, Served, Stage, StageTable

AdapterSpec = Any  # peft.LoraConfig | PromptConfig | MergeSpec | dict | "none" | None
AUTO = "auto"  # predict_proba(domain=AUTO) routes each image to a domain (see medadapt.routing)


class ContinualVLM(nn.Module):
    """A frozen VLM serving many domains, each through its own LoRA or prompt adapter.

    Any registered backbone family works: dual encoders (CLIP, SigLIP, VisionTextDualEncoder) score
    label prompts by similarity; generative image-text-to-text models score labels by likelihood
    and also answer free-text questions (:meth:`generate`).

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
        self.adapters = AdapterSet(backbone.model, self.prompt_adapters)
        self.adapters.vision_tower = backbone.family.vision_tower(backbone.model)
        self.scorer = backbone.family.make_scorer(backbone, self.adapters)
        self.stages = StageTable()  # the domains and shared adapters, in order (see medadapt.stages)
        self.extras: dict[str, Any] = {}  # JSON-able per-model state other modules save (e.g. routing)
        self.eval()  # like transformers' from_pretrained: served calls then flip no module state

    @property
    def lora(self) -> Any:
        """The peft LoRA bank on the frozen base (``names()``, ``config(name)``, ``peft_model``)."""
        return self.adapters.lora

    @property
    def vision_tower(self) -> nn.Module:
        """The frozen base's image tower (routing reads its features)."""
        return self.adapters.vision_tower

    @property
    def family(self) -> Any:
        """The backbone family serving this model (see :mod:`medadapt.families`)."""
        return self.backbone.family

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_base(
        cls,
        source: str,
        revision: str | None = None,
        trust_remote_code: bool = False,
        torch_dtype: torch.dtype | None = None,
        quantization: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        **hub_kwargs: Any,
    ) -> "ContinualVLM":
        """Load a frozen base (a dual encoder such as CLIP/SigLIP, or an image-text-to-text model such as
        LLaVA, Gemma 3/MedGemma, PaliGemma, Idefics3/SmolVLM) from the Hub or a folder.

        ``quantization="4bit"``/``"8bit"`` loads the frozen base through bitsandbytes (QLoRA; see
        :mod:`medadapt.quantization`); ``model_kwargs`` go to the model's ``from_pretrained`` only
        (e.g. ``{"device_map": "auto", "attn_implementation": "sdpa"}``).
        """
        extra = dict(model_kwargs or {})
        if quantization is not None:
            extra["quantization_config"] = quantization_config(quantization)
        return cls(load_backbone(source, revision, trust_remote_code, torch_dtype, model_kwargs=extra, **hub_kwargs))

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
        A folder or repo without ``manifest.json`` is loaded as a plain base model. Loading never
        changes the folder: a save interrupted mid-swap raises ``InterruptedSaveError`` unless the
        folder's owner passes ``recover=True`` (as ``medadapt recover FOLDER`` does).
        """
        loaded = load_save(path, base=base, revision=revision, locate=locate_save, **kwargs)
        model = cls(loaded.backbone)
        for stage in loaded.stages:
            model.add_saved_stage(stage)
        model.extras = loaded.extras
        return model

    def parts(self) -> ModelParts:
        """The parts a save or a push is made of (base, adapters, stage table, extras): shared, not copied."""
        return ModelParts(self.backbone, self.adapters, self.stages, self.extras)

    def save_pretrained(self, save_directory: str | os.PathLike, save_base: bool | None = None) -> None:
        """Write ``manifest.json`` and one peft-compatible folder per adapter, atomically.

        ``save_base`` also writes the base model into ``base/``; by default only when the base was
        built in memory and cannot be reloaded from a Hub id or folder.
        """
        save_model(self.parts(), save_directory, save_base=save_base)

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
        return push_model(self.parts(), repo_id, private=private, revision=revision, commit_message=commit_message, domains=domains, **kwargs)

    def export_merged(self, domain_or_stack: str | Sequence[str], out: str | os.PathLike) -> "os.PathLike":
        """Write a standalone transformers checkpoint: the base with that domain's LoRA (or stack) merged, plus its
        processor; it loads with ``AutoModel...from_pretrained`` alone. See :mod:`medadapt.export.merged`."""
        return export_merged(self.parts(), domain_or_stack, out)

    def load_adapter(self, path: str | os.PathLike, name: str | None = None, as_name: str | None = None, **kwargs: Any) -> str:
        """Bring one stage (a domain or shared adapter) from another save or Hub repo into this model.

        ``name`` picks the adapter in that save (optional when it holds one); ``as_name`` renames
        it here. The save's base fingerprint must match this model's base. Returns the new name.
        """
        return self.add_saved_stage(read_stage(self.backbone, self.stages, path, name=name, as_name=as_name, locate=locate_save, **kwargs))

    def add_saved_stage(self, stage: SavedStage) -> str:
        """Add a stage read from a save (see :func:`medadapt.saves.io.read_stage`); returns its name."""
        if stage.config is None:
            return self.add_stage(stage.name, domain=stage.domain, adapter="none")
        return self.add_stage(stage.name, domain=stage.domain, adapter=stage.config, weights=stage.weights, provenance=stage.provenance)

    # -- domains and adapters ------------------------------------------------------------------
    @property
    def domains(self) -> dict[str, Domain]:
        """``{name: Domain}`` in the order the domains were added."""
        return self.stages.domains

    @property
    def shared(self) -> dict[str, str]:
        """``{shared adapter name: adapter kind}`` in the order they were added."""
        return self.stages.shared

    @property
    def provenance(self) -> Any:
        """``{stage name: where it was loaded from}`` (a live view: assignments reach the stages)."""
        return self.stages.provenance

    @property
    def stage_order(self) -> list[str]:
        """Every stage (domains and shared adapters) in the order they were added."""
        return self.stages.order

    def adapter_names(self) -> list[str]:
        """All adapters in the order they were added (domains and shared)."""
        return self.stages.names()

    def adapter_type(self, name: str) -> str:
        """The kind of adapter ``name`` (``"lora"``, ``"prompt"``, ...)."""
        return self.stages.kind(name)

    def has_stage(self, name: str) -> bool:
        """Whether ``name`` is a domain or a shared adapter of this model."""
        return name in self.stages

    def check_new_name(self, name: str, what: str = "domain") -> None:
        """Raise :class:`DomainError` unless ``name`` is a valid, unused stage name."""
        self.stages.check_new_name(name, what)

    def _adapter_spec(self, adapter: AdapterSpec) -> Any:
        from peft import LoraConfig

        if adapter is None:
            return default_lora_config(self.family.default_lora_targets(self.base_model))
        if isinstance(adapter, dict):
            kind = adapter.get("adapter_type")  # a registered kind's own config dict; else peft LoraConfig keywords
            return adapter_kind(kind).config_from_dict(adapter, "adapter") if kind in adapter_kinds() and kind != LORA else LoraConfig(**adapter)
        return adapter

    @changes_adapters
    def add_stage(
        self,
        name: str,
        domain: Domain | None = None,
        adapter: AdapterSpec = None,
        weights: dict[str, torch.Tensor] | None = None,
        seed: int | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> str:
        """The one way a stage enters the model: a domain (with ``domain``) or a shared adapter.

        ``adapter``: a peft ``LoraConfig``, a :class:`PromptConfig`, a :class:`HeadConfig`, a
        :class:`~medadapt.adapters.MergeSpec`, a dict of either, ``None`` for the family's default
        LoRA, or ``"none"`` (a domain served by the base or shared adapters). ``weights`` loads saved
        tensors into the new adapter (nothing is left behind when they do not fit).
        """
        role = DOMAIN if domain is not None else SHARED
        self.stages.check_new_name(name, "domain" if domain is not None else "shared adapter")
        kind_name: str | None = None
        if not (domain is not None and isinstance(adapter, str) and adapter == "none"):
            spec = self._adapter_spec(adapter)
            kind = kind_for_spec(spec)
            if domain is None and not kind.serves_shared:
                raise AdapterError(
                    f"shared adapter {name!r}: a {kind.name} adapter scores one domain's labels, so it cannot be shared "
                    "between domains; give it to a domain (add_domain) or share a LoRA or prompt adapter."
                )
            module = None
            if kind.built_by_family and weights is None:  # the family's scorer builds it (e.g. a prompt adapter)
                module = self.scorer.build_adapter(spec, domain.prompt if domain is not None else "{}", seed, domain)
            elif kind.built_by_family:
                self.scorer.check_adapter(spec, domain, f"adapter {name!r}")
            if weights is None:
                self.adapters.create(name, spec, module)
            else:
                self.adapters.install(name, spec, weights, f"adapter {name!r}")
            kind_name = kind.name
        self.stages.add(Stage(name, role, kind_name, domain, provenance))
        return name
    def add_domain(
        self,
        name: str,
        labels: Sequence[str] = (),
        prompt: str = "{}",
        adapter: AdapterSpec = None,
        metadata: dict[str, Any] | None = None,
        seed: int | None = None,
        task: str = "classification",
    ) -> Domain:
        """Add a domain with its labels, prompt template (with one ``{}``) and its own adapter.

        On a dual encoder the template is filled with each label (``"a chest x-ray showing {}."``).
        On a generative base the text before ``{}`` is the question and each label a candidate
        answer (``"Is there pneumonia? {}"`` with labels ``["no", "yes"]``); ``task="vqa"`` makes a
        free-text question-answering domain (no labels; see :meth:`generate`).

        ``adapter`` is a peft ``LoraConfig`` or a :class:`PromptConfig`; by default the family's
        rank-8 LoRA (attention q/v of both towers for a dual encoder, of the language model only for
        a generative base). ``adapter="none"`` adds a domain without an adapter of its own (served
        by the base or by shared adapters, as in joint training).
        """
        self.check_new_name(name, "domain")  # before the labels are checked, as a user reads the call
        if task not in self.family.tasks:
            raise DomainError(f"domain {name!r}: task {task!r} needs a generative base; the {self.family.name!r} family serves {list(self.family.tasks)}.")
        labels = labels if isinstance(labels, str) else list(labels)  # a bare string is refused by Domain, not split
        domain = Domain(name=name, labels=labels, prompt=prompt, metadata=dict(metadata or {}), task=task)
        if domain.labels:
            check_label_prompts(self.backbone, name, domain.prompts(), domain.labels)
        self.add_stage(name, domain=domain, adapter=adapter, seed=seed)
        return domain

    def add_shared_adapter(self, name: str, adapter: AdapterSpec = None, seed: int | None = None) -> str:
        """Add an adapter not tied to one domain's labels (e.g. the generalist tuned with rehearsal)."""
        return self.add_stage(name, adapter=adapter, seed=seed)

    @changes_adapters
    def remove_domain(self, name: str) -> None:
        """Drop a domain (or shared adapter) and its adapter weights."""
        if name not in self.stages:
            self.stages.unknown_domain(name)
        if name in self.adapters:
            self.adapters.remove(name)
        self.stages.remove(name)

    remove_adapter = remove_domain

    def get_domain(self, name: str) -> Domain:
        """The domain ``name`` (a :class:`DomainError` lists the known ones)."""
        return self.stages.get_domain(name)

    def resolve_adapter(self, domain: str, adapter: str | Sequence[str] | None = None) -> str | tuple[str, ...] | None:
        """Which adapter serves ``domain``: its own (default), ``"base"`` (None) or a named one
        (the name, or a tuple of stacked names). :meth:`serve` gives the same as a :class:`Served`."""
        return self.stages.serve(domain, adapter).ref()

    def serve(self, domain: str, adapter: str | Sequence[str] | None = None) -> Served:
        """What serves a row of ``domain`` (see :meth:`medadapt.stages.StageTable.serve`)."""
        return self.stages.serve(domain, adapter)

    # -- training support ----------------------------------------------------------------------
    def set_trainable(self, names: Sequence[str]) -> list[nn.Parameter]:
        """Make exactly the adapters ``names`` trainable (all else frozen); returns their parameters."""
        for n in names:
            self.adapter_type(n)
        self.adapters.set_trainable(list(names))
        return [p for p in self.parameters() if p.requires_grad]

    @changes_adapters
    def initialise_adapter(self, name: str, pixel_batches: Iterable[torch.Tensor], labels: torch.Tensor) -> dict[str, Any] | None:
        """Start domain ``name``'s adapter from its training images (preprocessed batches) and ``labels``,
        for kinds initialised from data (a head adapter: see :mod:`medadapt.adapters.head`); returns
        what was decided, or ``None`` for other kinds (nothing changes)."""
        kind = self.adapters.kind_of(name)
        if not kind.initialised_from_data:
            return None
        domain, served = self.get_domain(name), self.stages.serve(name)
        parts = [self.scorer.head_inputs(pv, domain, served) for pv in pixel_batches]
        if not parts:
            return None
        features = torch.cat([f for f, _ in parts])
        zero_shot = torch.cat([z for _, z in parts])
        return kind.initialise(self.adapters, name, features, zero_shot, labels)

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters of one adapter."""
        self.adapter_type(name)
        return self.adapters.parameters(name)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of adapter ``name`` as its stage folder stores them."""
        return self.adapters.kind_of(name).state_dict(self.adapters, name)

    @changes_adapters
    def load_adapter_weights(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        """Load saved tensors into the existing adapter ``name`` (e.g. from a checkpoint)."""
        self.adapter_type(name)
        self.adapters.load_state_dict(name, weights)

    def text_tower_trainable(self, name: str) -> bool:
        """Whether training adapter ``name`` changes what the model computes from label texts."""
        self.adapter_type(name)
        return bool(self.scorer.text_side_params(self.stages.serve_named(name)))

    def train(self, mode: bool = True) -> "ContinualVLM":
        """Train mode for adapters only: the frozen base stays in eval mode (no base dropout),
        while LoRA dropout follows ``mode``. Switching to train mode is refused (:class:`ServingError`)
        while other threads serve the model: their calls would run with adapter dropout on."""
        if mode and not self.training:
            self.adapters.gate.refuse_while_others_serve("switch the model to train mode")
        super().train(mode)
        self.base_model.eval()
        for module in self.base_model.modules():
            dropout = getattr(module, "lora_dropout", None)
            if isinstance(dropout, nn.ModuleDict):
                dropout.train(mode)
        return self

    def forward(self, pixel_values: torch.Tensor, domain: str, adapter: str | Sequence[str] | None = None) -> torch.Tensor:
        """Class logits ``(N, num_labels)`` for a batch of preprocessed images of one domain."""
        return self.scorer.logits(pixel_values, self.get_domain(domain), self.serve(domain, adapter))

    # -- inference -----------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput] | ImageInput) -> torch.Tensor:
        """PIL / numpy / torch / paths / bytes (grey, RGB or RGBA, any size) -> pixel values.

        ``images``: one image, a list, a batch array, or any iterable of images, e.g. a ``datasets`` column
        (``ds["image"]``, datasets 4's lazy ``Column``) or a generator."""
        return self.backbone.preprocess(image_list(images))

    @served
    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageInput] | ImageInput, adapter: str | Sequence[str] | None = "base") -> torch.Tensor:
        """Normalised image embeddings through ``adapter`` (``"base"`` = frozen model)."""
        return self.scorer.image_features(self.preprocess(images), self.stages.serve_named(adapter))

    @served
    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str] | str, adapter: str | Sequence[str] | None = "base") -> torch.Tensor:
        """Normalised text embeddings through ``adapter``'s LoRA weights (``"base"`` = frozen model)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.scorer.text_features(texts, self.stages.serve_named(adapter))

    @served
    @torch.no_grad()
    def predict_proba(
        self,
        images: Sequence[ImageInput] | ImageInput,
        domain: str | Sequence[str],
        adapter: str | Sequence[str] | None = None,
        questions: Sequence[str] | str | None = None,
    ) -> torch.Tensor | list[torch.Tensor] | list[RoutedPrediction]:
        """Class probabilities from the domain's adapter scoring its labels.

        ``domain`` is one name (returns an ``(N, num_labels)`` tensor) or one name per image (a
        mixed-domain batch; returns a list of per-image probability tensors, computed with batched
        forwards). ``adapter``: ``None`` for each domain's own adapter, ``"base"`` for the frozen
        zero-shot model, or the name of a shared adapter.

        ``domain="auto"`` routes each image with the router fitted by :meth:`fit_router` (or by the
        trainer) and returns one :class:`~medadapt.routing.RoutedPrediction` per image: ``probs``
        over the routed domain's ``labels``, the ``domain`` and ``adapter`` that served it, and
        ``unrouted`` (matched no domain well: served by the router's fallback shared adapter).

        ``questions`` (generative bases): one question per image (or one for all) asked instead of
        the domain's own (``None`` entries ask the domain's own); each label is scored as its answer.
        """
        with self.evaluating():
            if isinstance(domain, str) and domain == AUTO:
                return self.predict_routed(self.preprocess(images), adapter)
            pixel_values = self.preprocess(images)
            row_domains = [self.get_domain(d) for d in call_checks.domain_names(domain, pixel_values.shape[0])]
            rows = call_checks.scoring_questions(self.scorer, row_domains, questions)
            if isinstance(domain, str):
                logits = self.scorer.logits(pixel_values, self.get_domain(domain), self.serve(domain, adapter), rows)
                return logits.softmax(dim=-1).cpu()
            domains = self._per_image(list(domain), pixel_values.shape[0], "domain names")
            return self._probs_mixed(pixel_values, domains, [self.serve(d, adapter) for d in domains], rows)

    @staticmethod
    def _per_image(values: Sequence[str] | str | None, n: int, what: str) -> list[str] | None:
        if values is None:
            return None
        values = [values] * n if isinstance(values, str) else list(values)
        if len(values) != n:
            raise DomainError(f"got {n} images but {len(values)} {what}; give one per image.")
        return values

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Run the body in eval mode (no adapter dropout), restoring the previous mode after.

        A model already in eval mode is left alone: concurrent calls flip no module state."""
        was_training = self.training
        if not was_training:
            yield
            return
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def _probs_mixed(self, pixel_values: torch.Tensor, domains: Sequence[str], served: Sequence[Served], questions: Sequence[str] | None = None) -> list[torch.Tensor]:
        logits = self.scorer.logits_mixed(pixel_values, [self.get_domain(d) for d in domains], list(served), questions)
        return [row.softmax(dim=-1).cpu() for row in logits]

    @served
    @torch.no_grad()
    def probs_mixed(self, pixel_values: torch.Tensor, domains: Sequence[str], served: Sequence[Any], questions: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Per-image probabilities of preprocessed images: image ``i`` over ``domains[i]``'s labels
        through ``served[i]`` (an adapter name, names, a :class:`Served`, or None for the base), in batched forwards."""
        rows = [Served.of(a) if a is None else self.serve(d, a) for d, a in zip(domains, served)]
        return self._probs_mixed(pixel_values, domains, rows, questions)

    @served
    @torch.no_grad()
    def generate(
        self,
        images: Sequence[ImageInput] | ImageInput,
        questions: Sequence[str] | str | None = None,
        domain: str | Sequence[str] | None = None,
        adapter: str | Sequence[str] | None = None,
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Free-text answers (generative bases), one per image, greedy.

        ``domain`` is one name or one per image: each row is answered through its domain's adapter
        (one batched call, peft's per-row ``adapter_names``); ``None`` answers with the frozen base.
        ``questions`` default to each domain's own question (a ``None`` entry too). ``adapter`` as in
        :meth:`predict_proba`. ``max_new_tokens`` is capped so that prompt and answer fit the model's context.
        """
        with self.evaluating():
            pixel_values = self.preprocess(images)
            n = pixel_values.shape[0]
            domains = call_checks.domain_names(domain, n) if domain is not None else None
            asked = call_checks.generation_questions(self.scorer, n, domains and [self.get_domain(d) for d in domains], questions)
            if asked is None:
                if domains is None:
                    raise DomainError("give the questions to answer, or domains whose question to ask.")
                asked = [self.get_domain(d).question for d in domains]
            if domains is None:
                served = [self.stages.serve_named(adapter)] * n
            else:
                served = [self.serve(d, adapter) for d in domains]
            max_new_tokens = call_checks.new_token_budget(self.scorer, asked, max_new_tokens)
            return self.scorer.generate(pixel_values, asked, served, max_new_tokens=max_new_tokens)

    # -- routing and composition ---------------------------------------------------------------
    @torch.no_grad()
    def router_features(self, pixel_values: torch.Tensor, spec: FeatureSpec = FeatureSpec()) -> torch.Tensor:
        """Routing features of preprocessed images through the frozen base (never an adapter)."""
        with self.adapters.frozen_base():
            return router_features(self.backbone, pixel_values, spec)

    @changes_adapters
    def fit_router(self, images: Mapping[str, Any], threshold: float = 0.99, fallback: str | None = "auto", preprocessed: bool = False, **options: Any) -> DomainRouter:
        """Fit the router behind ``predict_proba(..., domain="auto")`` on ``{domain: training images}``.

        ``threshold`` (in [0, 1]) is the fraction of each domain's held-out images that must stay
        routed; images farther from every domain go to ``fallback`` (``"auto"``: the shared adapter
        ``shared`` or the only one; ``None``: the frozen base) flagged unrouted. ``images`` are
        anything :meth:`preprocess` takes, or (``preprocessed=True``) pixel tensors already run
        through it; ``options`` go to :meth:`DomainRouter.fit`. The router is saved with the model
        (``extras["router"]``). See :mod:`medadapt.routing`. Like an adapter change, it waits for the
        calls in flight and runs alone, so a ``domain="auto"`` call sees the old router or the new one.
        """
        check_threshold(threshold)
        check_routable(list(self.domains), images)
        spec = options.pop("spec", FeatureSpec())
        with self.evaluating():
            feats = {name: self.router_features(x if preprocessed else self.preprocess(x), spec) for name, x in images.items()}
        return self.fit_router_on_features(feats, threshold, fallback, spec=spec, **options)

    @changes_adapters
    def fit_router_on_features(self, features: Mapping[str, torch.Tensor], threshold: float = 0.99, fallback: str | None = "auto",
                               spec: FeatureSpec = FeatureSpec(), **options: Any) -> DomainRouter:
        """:meth:`fit_router` from ``{domain: router_features(images, spec)}`` computed beforehand
        (e.g. kept across training stages: they come from the frozen base, so they do not change)."""
        check_threshold(threshold)
        check_routable(list(self.domains), features)
        router = DomainRouter.fit(features, threshold, fallback=self.stages.fallback(fallback), spec=spec,
                                  base_fingerprint=self.backbone.fingerprints.get("weights"), **options)
        self.extras[ROUTER_KEY] = router.to_dict()
        return router

    @torch.no_grad()
    def predict_routed(self, pixel_values: torch.Tensor, adapter: str | None = None, serve: Mapping[str, str | None] | None = None, questions: Sequence[str] | None = None) -> list[RoutedPrediction]:
        """Route preprocessed images and score each with the adapter it is routed to.

        ``serve`` (domain -> adapter) overrides each routed domain's own adapter; unrouted images
        always go to the router's fallback.
        """
        if adapter is not None and not isinstance(adapter, str):
            raise RoutingError("stacked adapters cannot be used with domain='auto'; call predict_proba per domain.")
        router = load_router(self.extras.get(ROUTER_KEY), list(self.domains), self.shared, self.backbone.fingerprints.get("weights"))
        decision = router.route(self.router_features(pixel_values, router.features))
        served = [
            self.stages.serve_named(router.fallback) if unrouted
            else self.stages.serve_named(serve[d]) if serve is not None
            else self.stages.serve_routed(d, router.fallback, adapter)
            for d, unrouted in zip(decision.domains, decision.unrouted)
        ]
        probs = self._probs_mixed(pixel_values, decision.domains, served, questions)
        return [
            RoutedPrediction(p, list(self.domains[d].labels), d, a.ref(), u, s)
            for p, d, a, u, s in zip(probs, decision.domains, served, decision.unrouted, decision.scores)
        ]

    def merge_adapters(self, names: Sequence[str], into: str = "merged", method: str = "linear", weights: Sequence[float] | None = None, **options: Any) -> str:
        """Build shared LoRA ``into`` from LoRAs ``names`` with peft's ``add_weighted_adapter``
        (``method``: ``linear``, ``ties``, ``dare_ties``, ...); saved as a normal stage. See
        :func:`medadapt.merging.plan_merge` for the options."""
        plan = plan_merge(names, self.stages.kind, self.lora.config, method=method, weights=weights, **options)
        with torch.random.fork_rng():
            torch.manual_seed(plan.seed)
            self.add_stage(into, adapter=plan.spec)
        self.extras.setdefault(MERGES_KEY, {})[into] = plan.record
        return into

    def extra_repr(self) -> str:
        return f"base={self.backbone.source or 'in-memory'}, domains={list(self.domains)}, shared={list(self.shared)}"
