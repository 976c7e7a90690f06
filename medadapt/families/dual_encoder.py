"""The dual-encoder family: CLIP, SigLIP and VisionTextDualEncoder.

Images and label prompts are embedded by two towers and compared by a scaled cosine similarity
(plus SigLIP's bias). This is the only module that knows that. A :class:`TowerSpec` per
architecture says where the text token embedding and the vision patch embeddings live (prompt
adapters hook there), whether the vision sequence starts with a class token, how text is padded
and which modules LoRA targets by default.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.lora import BASE
from ..adapters.head import HeadAdapter, HeadConfig
from ..adapters.prompt import PLACEHOLDER, PromptAdapter, PromptConfig, PromptHooks, split_template
from ..errors import AdapterError, UnsupportedBackboneError
from ..images import preprocess as preprocess_images
from ..stages import Served
from .base import Backbone, BackboneFamily, Preprocessing, Scorer, ServedLike, register_family
from .towers import SEQUENCE, image_tower_lora_targets, pooled_features, tower_layout

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters.registry import AdapterSet
    from ..domains import Domain
    from ..training.objectives import Batch


def _hf_image_embeds(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return model.get_image_features(pixel_values=pixel_values).pooler_output


def _hf_text_embeds(model: nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.get_text_features(**tokens).pooler_output


def _hf_head_features(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A CLIP/SigLIP head reads the unnormalised image embedding itself."""
    embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
    return embeds, embeds


def _projection_dim(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size)


@dataclass(frozen=True)
class TowerSpec:
    """Where one dual-encoder architecture keeps what medadapt hooks into, and how it embeds.

    ``vision_embeddings`` returns ``None`` when the image tower has no patch sequence (a CNN):
    visual prompt tokens are then refused. ``image_embeds`` / ``text_embeds`` return unnormalised
    embeddings in the shared space; ``lora_targets`` the default peft ``target_modules``.
    ``head_features`` returns ``(features a head adapter reads, unnormalised embeddings)`` from one
    forward, and ``feature_dim`` the size of those features.
    """

    model_class: Callable[[], type]
    text_token_embedding: Callable[[nn.Module], nn.Module]
    vision_embeddings: Callable[[nn.Module], nn.Module | None]
    vision_has_cls: Callable[[nn.Module], bool]
    pad_to_max_length: bool = False
    lora_targets: Callable[[nn.Module], list[str] | str] = lambda m: ["q_proj", "v_proj"]
    image_tower: Callable[[nn.Module], nn.Module] = lambda m: m.vision_model
    image_embeds: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _hf_image_embeds
    text_embeds: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] = _hf_text_embeds
    embed_dim: Callable[[nn.Module], int] = _projection_dim
    vision_width: Callable[[nn.Module], int] = lambda m: int(m.config.vision_config.hidden_size)
    head_features: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = _hf_head_features
    feature_dim: Callable[[nn.Module], int] = _projection_dim
    vpt_towers: str = "ViT-like image towers (CLIP, SigLIP, a VisionTextDualEncoder with a ViT tower)"


class DualEncoderFamily(BackboneFamily):
    """A CLIP-like dual encoder scoring label prompts by cosine similarity."""

    pipeline_tag = "zero-shot-image-classification"
    objective = "classification"
    scoring = "dual-encoder"

    def __init__(self, name: str, model_types: tuple[str, ...], towers: TowerSpec) -> None:
        self.name = name
        self.model_types = model_types
        self.towers = towers

    def model_class(self, model_type: str) -> type:
        return self.towers.model_class()

    def load_preprocessing(self, source: str, **hub_kwargs: Any) -> Preprocessing:
        from transformers import AutoImageProcessor, AutoTokenizer

        return Preprocessing(
            tokenizer=AutoTokenizer.from_pretrained(source, **hub_kwargs),
            image_processor=AutoImageProcessor.from_pretrained(source, **hub_kwargs),
        )

    def check_preprocessing(self, model: nn.Module, pre: Preprocessing) -> Preprocessing:
        tokenizer = pre.tokenizer or getattr(pre.processor, "tokenizer", None)
        image_processor = pre.image_processor or getattr(pre.processor, "image_processor", None)
        missing = [n for n, v in (("tokenizer", tokenizer), ("image_processor", image_processor)) if v is None]
        if missing:
            raise UnsupportedBackboneError(
                f"a built model needs its preprocessing too: missing {', '.join(missing)}. Pass `processor=` "
                "(e.g. CLIPProcessor) or both `tokenizer=` and `image_processor=`."
            )
        return Preprocessing(tokenizer=tokenizer, image_processor=image_processor)

    def save_preprocessing(self, pre: Preprocessing, folder: str) -> None:
        pre.tokenizer.save_pretrained(folder)
        pre.image_processor.save_pretrained(folder)

    def preprocess(self, backbone: Backbone, images: Any) -> torch.Tensor:
        return preprocess_images(images, backbone.image_processor)

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return self.towers.image_tower(model)

    def default_lora_targets(self, model: nn.Module) -> list[str] | str:
        targets = self.towers.lora_targets(model)
        return targets if isinstance(targets, str) else list(targets)

    def make_scorer(self, backbone: Backbone, adapters: "AdapterSet") -> "DualEncoderScorer":
        return DualEncoderScorer(backbone, adapters, self)


def _clip_model_class() -> type:
    from transformers import CLIPModel

    return CLIPModel


def _siglip_model_class() -> type:
    from transformers import SiglipModel

    return SiglipModel


def _dual_encoder_model_class() -> type:
    from transformers import VisionTextDualEncoderModel

    return VisionTextDualEncoderModel


def _hf_input_embeddings(text_model: nn.Module) -> nn.Module:
    if hasattr(text_model, "get_input_embeddings"):
        return text_model.get_input_embeddings()
    return text_model.embeddings.token_embedding


def _vtde_vision_embeddings(model: nn.Module) -> nn.Module | None:
    return model.vision_model.embeddings if tower_layout(model.vision_model) == SEQUENCE else None


def _vtde_has_cls(model: nn.Module) -> bool:
    embeddings = _vtde_vision_embeddings(model)
    return getattr(embeddings, "cls_token", None) is not None or getattr(embeddings, "class_embedding", None) is not None


def _vtde_image_embeds(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower's own pooled features (any tower, see :mod:`.towers`), then ``visual_projection``."""
    return _vtde_head_features(model, pixel_values)[1]


def _vtde_head_features(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's pooled features (what a head reads) and their ``visual_projection``."""
    tower = model.vision_model
    pooled = pooled_features(tower, tower(pixel_values=pixel_values))
    return pooled, model.visual_projection(pooled)


_TEXT_TARGETS = ["query", "value", "q_proj", "v_proj"]


def _vtde_lora_targets(model: nn.Module) -> list[str]:
    """Attention q/v of both towers for a ViT-like image tower; for a CNN or timm tower the text
    tower's q/v plus the image tower's last-stage layers and ``visual_projection`` (see :mod:`.towers`)."""
    if tower_layout(model.vision_model) == SEQUENCE:
        return list(_TEXT_TARGETS)
    return list(_TEXT_TARGETS) + image_tower_lora_targets(model)


def _vtde_vision_width(model: nn.Module) -> int:
    return int(getattr(model.config.vision_config, "hidden_size", 0) or 0)


CLIP = register_family(DualEncoderFamily("clip", ("clip",), TowerSpec(
    model_class=_clip_model_class,
    text_token_embedding=lambda m: m.text_model.embeddings.token_embedding,
    vision_embeddings=lambda m: m.vision_model.embeddings,
    vision_has_cls=lambda m: True,
)))
SIGLIP = register_family(DualEncoderFamily("siglip", ("siglip",), TowerSpec(
    model_class=_siglip_model_class,
    text_token_embedding=lambda m: m.text_model.embeddings.token_embedding,
    vision_embeddings=lambda m: m.vision_model.embeddings,
    vision_has_cls=lambda m: False,
    pad_to_max_length=True,
)))
VISION_TEXT_DUAL_ENCODER = register_family(DualEncoderFamily("vision-text-dual-encoder", ("vision-text-dual-encoder",), TowerSpec(
    model_class=_dual_encoder_model_class,
    text_token_embedding=lambda m: _hf_input_embeddings(m.text_model),
    vision_embeddings=_vtde_vision_embeddings,
    vision_has_cls=_vtde_has_cls,
    lora_targets=_vtde_lora_targets,
    image_embeds=_vtde_image_embeds,
    vision_width=_vtde_vision_width,
    head_features=_vtde_head_features,
    feature_dim=lambda m: int(m.config.vision_config.hidden_size),
)))


# -- text ------------------------------------------------------------------------------------------
def tokenize_texts(backbone: Backbone, texts: list[str], **extra: Any) -> dict[str, torch.Tensor]:
    """Tokenise like the backbone's processor does (SigLIP pads to max length)."""
    padding = "max_length" if backbone.family.towers.pad_to_max_length else True
    return backbone.tokenizer(
        texts, padding=padding, truncation=True, max_length=backbone.text_max_length(), return_tensors="pt", **extra
    )


def tokenize_with_context(backbone: Backbone, texts: list[str], ctx_text: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tokenise ``texts`` (each starting with ``ctx_text``) and find the context token positions.

    Returns the tokenizer output and a ``(len(texts), n_ctx_tokens)`` LongTensor of positions: the
    tokens whose character span lies inside ``ctx_text``.
    """
    try:
        encoded = tokenize_texts(backbone, texts, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise AdapterError(f"prompt adapters need a fast tokenizer with offsets: {exc}") from exc
    offsets = encoded.pop("offset_mapping")
    end = len(ctx_text)
    rows = [[i for i, (s, e) in enumerate(row.tolist()) if e > s and e <= end] for row in offsets]
    counts = {len(r) for r in rows}
    if len(counts) != 1 or 0 in counts:
        raise AdapterError(
            f"prompt context {ctx_text!r} tokenises into a varying or empty number of tokens {sorted(counts)}; "
            "choose another ctx_init."
        )
    return dict(encoded), torch.tensor(rows, dtype=torch.long)


def _no_questions(questions: Sequence[str] | None) -> None:
    if questions is not None:
        raise UnsupportedBackboneError(
            "per-image questions need a generative (image-text-to-text) base; a dual encoder scores a domain's label prompts."
        )


class DualEncoderScorer(Scorer):
    """Image/text features and class logits for a CLIP-like dual encoder with medadapt adapters.

    Label-prompt embeddings computed without gradients are cached per (domain labels and prompt,
    adapter) and reused until the adapter's text-side weights change (tracked by the tensors'
    in-place version counters and the adapter set's version, bumped by add/remove/load).
    """

    _TOKEN_CACHE_SIZE = 512
    _LABEL_CACHE_SIZE = 1024
    image_cache_bytes = 256 << 20  # frozen training-image features kept at most; beyond it they are recomputed

    def __init__(self, backbone: Backbone, adapters: "AdapterSet", family: DualEncoderFamily) -> None:
        super().__init__(backbone, adapters)
        self.towers = family.towers
        model = backbone.model
        self.hooks = PromptHooks(
            self.towers.text_token_embedding(model), self.towers.vision_embeddings(model), self.towers.vision_has_cls(model)
        )
        self._tokens: dict[tuple, Any] = {}
        self._labels: dict[tuple, tuple[tuple, torch.Tensor]] = {}
        self.label_cache_hits = 0
        self._images: dict[tuple, torch.Tensor] = {}  # (adapter, sample key) -> image features
        self._images_stamp: dict[Any, tuple] = {}  # adapter -> the image-side weights the features were made with
        self.image_cache_hits = 0
        self._image_bytes = 0
        self._vision_version: int | None = None
        self._vision_id_set: set[int] = set()

    # -- prompt adapters -------------------------------------------------------------------------
    def build_adapter(self, config: PromptConfig | HeadConfig, template: str, seed: int | None, domain: "Domain | None" = None) -> nn.Module:
        """Resolve ``config`` against this backbone (context text, token count, dims) and initialise it.

        A :class:`HeadConfig` becomes a head over this base's image features for ``domain``'s labels,
        starting as the zero-shot model (the trainer may then start it from data)."""
        if isinstance(config, HeadConfig):
            if domain is None or not domain.labels:
                raise AdapterError("a head adapter scores one domain's labels: add it with add_domain(..., labels=...).")
            cfg = HeadConfig.from_dict(config.to_dict())
            cfg.num_labels, cfg.feature_dim, cfg.embed_dim = len(domain.labels), self.feature_dim(), self._embed_dim()
            return HeadAdapter(cfg)
        cfg = PromptConfig.from_dict(config.to_dict())
        text_embedding = self.towers.text_token_embedding(self.model)
        cfg.text_dim = int(text_embedding.weight.shape[1])
        if cfg.n_visual_tokens and self.towers.vision_embeddings(self.model) is None:
            raise AdapterError(
                f"visual prompt tokens (PromptConfig.n_visual_tokens={cfg.n_visual_tokens}) need an image tower with a "
                f"patch sequence; this {self.backbone.family.name!r} base's image tower "
                f"({type(self.towers.image_tower(self.model)).__name__}) has none. VPT is supported on "
                f"{self.towers.vpt_towers}; use n_visual_tokens=0 (text-side prompt context) or a LoRA adapter here."
            )
        cfg.vision_dim = self.towers.vision_width(self.model)
        prefix, _ = split_template(template)
        if cfg.ctx_init == "template" and prefix:
            cfg.ctx_text = prefix
        elif cfg.ctx_init in ("template", "random"):
            cfg.ctx_text = " ".join([PLACEHOLDER] * cfg.n_ctx)
        else:
            cfg.ctx_text = cfg.ctx_init.strip()
        ids, positions = tokenize_with_context(self.backbone, [f"{cfg.ctx_text} label."], cfg.ctx_text)
        cfg.n_ctx_tokens = int(positions.shape[1])
        adapter = PromptAdapter(cfg)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            if cfg.ctx_init == "random" or (cfg.ctx_init == "template" and not prefix):
                adapter.ctx.normal_(0.0, cfg.init_std, generator=generator)
            else:
                adapter.ctx.copy_(text_embedding.weight[ids["input_ids"][0, positions[0]]].detach().float())
            if adapter.visual is not None:
                adapter.visual.normal_(0.0, cfg.init_std, generator=generator)
        return adapter

    def check_adapter(self, config: Any, domain: "Domain | None", what: str) -> None:
        """A saved head must fit this base's image features and its domain's labels (prompt adapters: no check)."""
        if not isinstance(config, HeadConfig):
            return
        if config.feature_dim != self.feature_dim():
            raise AdapterError(
                f"{what}: this head adapter was trained on image features of size {config.feature_dim}, but this "
                f"{self.backbone.family.name!r} base's image tower gives {self.feature_dim()}; a head only loads onto "
                "a base with the same image tower."
            )
        if domain is None or config.num_labels != len(domain.labels):
            raise AdapterError(f"{what}: this head adapter scores {config.num_labels} labels, its domain lists "
                               f"{len(domain.labels) if domain is not None else 'none'}.")

    def feature_dim(self) -> int:
        """Size of the image features a head adapter reads on this base."""
        return self.towers.feature_dim(self.model)

    # -- helpers ---------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], ctx_text: str | None = None) -> Any:
        """``tokenize_texts`` (or ``tokenize_with_context`` when ``ctx_text`` is given), memoised."""
        key = (id(self.backbone.tokenizer), ctx_text, tuple(texts))
        out = self._tokens.get(key)
        if out is None:
            out = tokenize_texts(self.backbone, texts) if ctx_text is None else tokenize_with_context(self.backbone, texts, ctx_text)
            if len(self._tokens) >= self._TOKEN_CACHE_SIZE:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[key] = out
        return out

    def _prompt(self, served: Served) -> PromptAdapter | None:
        module = self.adapters.prompts[served.prompt] if served.prompt is not None else None
        return module if isinstance(module, PromptAdapter) else None

    def _head(self, served: Served) -> HeadAdapter | None:
        module = self.adapters.prompts[served.prompt] if served.prompt is not None else None
        return module if isinstance(module, HeadAdapter) else None

    # -- images ----------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, served: ServedLike = None) -> torch.Tensor:
        """L2-normalised image embeddings of a batch through one adapter (or a stack of them)."""
        return self._image(pixel_values, self.served(served))[:, : self._embed_dim()]

    def _image(self, pixel_values: torch.Tensor, served: Served) -> torch.Tensor:
        """Normalised embeddings; rows also carry the head's features (see :meth:`_rows`) when ``served`` has a head."""
        prompt = self._prompt(served)
        with ExitStack() as stack:
            stack.enter_context(self.adapters.active(served.loras))
            stack.enter_context(self.hooks.vision(prompt.visual if prompt is not None else None))
            pixel_values = pixel_values.to(self.device, dtype=self.dtype)
            return self._rows(pixel_values, self._head(served) is not None)

    def _rows(self, pixel_values: torch.Tensor, with_features: bool) -> torch.Tensor:
        """One image forward: ``(N, dim)`` normalised embeddings, with the head's features appended
        (``(N, dim + feature_dim)``) when ``with_features``."""
        if not with_features:
            return F.normalize(self.towers.image_embeds(self.model, pixel_values).float(), dim=-1)
        feats, embeds = self.towers.head_features(self.model, pixel_values)
        return torch.cat([F.normalize(embeds.float(), dim=-1), feats.float()], dim=-1)

    def image_features_mixed(self, pixel_values: torch.Tensor, served: Sequence[ServedLike]) -> torch.Tensor:
        """Embeddings with one adapter per image, in batched forwards.

        Rows served by LoRA adapters, the base, or text-only prompt adapters go through a single
        forward using per-row ``adapter_names``; rows whose prompt adapter has visual tokens (a
        longer sequence) get one forward per such adapter.
        """
        return self._image_mixed(pixel_values, [self.served(a) for a in served])[:, : self._embed_dim()]

    def _image_mixed(self, pixel_values: torch.Tensor, rows_served: list[Served]) -> torch.Tensor:
        """Rows of :meth:`image_features_mixed`, with the head features appended when any row has a head."""
        for a in rows_served:
            if a.stacked:
                raise AdapterError("stacked adapters are not supported in a mixed-domain batch; call per domain.")
        groups: dict[Served | None, list[int]] = {}
        for i, a in enumerate(rows_served):
            visual = self._prompt(a) is not None and self._prompt(a).visual is not None
            groups.setdefault(a if visual else None, []).append(i)
        heads = any(self._head(a) is not None for a in rows_served)
        width = self._embed_dim() + (self.feature_dim() if heads else 0)
        out = torch.zeros(len(rows_served), width, device=self.device)
        for key, rows in groups.items():
            index = torch.tensor(rows, device=pixel_values.device)
            if key is not None:
                got = self._image(pixel_values[index], key)
                out[rows, : got.shape[1]] = got
                continue
            row_names = [rows_served[i].loras[0] if rows_served[i].loras else BASE for i in rows]
            with ExitStack() as stack:
                if len(set(row_names)) == 1:
                    stack.enter_context(self.adapters.active(None if row_names[0] == BASE else [row_names[0]]))
                else:
                    stack.enter_context(self.adapters.lora.mixed(row_names))
                pv = pixel_values[index].to(self.device, dtype=self.dtype)
                out[rows] = self._rows(pv, heads)
        return out

    def _embed_dim(self) -> int:
        return self.towers.embed_dim(self.model)

    # -- texts -----------------------------------------------------------------------------------
    def text_features(self, texts: list[str], served: ServedLike = None) -> torch.Tensor:
        """L2-normalised embeddings of free texts through LoRA adapters (prompt context is not applied)."""
        with self.adapters.active(self.served(served).loras):
            return self._encode_text(tokenize_texts(self.backbone, texts))

    def _encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if self.towers.pad_to_max_length:
            tokens.pop("attention_mask", None)  # SigLIP is trained without a text attention mask
        out = self.towers.text_embeds(self.model, tokens)
        return F.normalize(out.float(), dim=-1)

    def _vision_ids(self) -> set[int]:
        """ids of the image tower's parameters (its LoRA ones included), rebuilt only when adapters change."""
        if self._vision_version != self.adapters.version:
            tower = self.adapters.vision_tower
            self._vision_id_set = {id(p) for p in tower.parameters()} if tower is not None else set()
            self._vision_version = self.adapters.version
        return self._vision_id_set

    def _image_side_params(self, served: Served) -> list[nn.Parameter]:
        """Adapter parameters that can change image embeddings (the image tower's LoRA, VPT tokens)."""
        vision = self._vision_ids()
        params = [p for n in served.loras for p in self.adapters.parameters(n) if id(p) in vision]
        prompt = self._prompt(served)
        return params + ([prompt.visual] if prompt is not None and prompt.visual is not None else [])

    def _cached_image_features(self, pixel_values: torch.Tensor, served: ServedLike, keys: Sequence[tuple[str, int]]) -> torch.Tensor:
        adapter = ref = self.served(served)
        stamp = (self.adapters.version, tuple((id(p), p._version) for p in self._image_side_params(adapter)))
        if self._images_stamp.get(ref) != stamp:  # image-side weights changed: drop what was made with the old ones
            self._images = {k: v for k, v in self._images.items() if k[0] != ref}
            self._image_bytes = sum(v.numel() * v.element_size() for v in self._images.values())
            self._images_stamp[ref] = stamp
        missing = [i for i, key in enumerate(keys) if (ref, key) not in self._images]
        self.image_cache_hits += len(keys) - len(missing)
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                index = torch.tensor(missing, device=pixel_values.device)
                computed = self._image(pixel_values[index], adapter)
            for j, i in enumerate(missing):
                fresh[i] = computed[j]
                size = computed[j].numel() * computed[j].element_size()
                if self._image_bytes + size <= self.image_cache_bytes:
                    self._images[(ref, keys[i])] = computed[j]
                    self._image_bytes += size
        return torch.stack([fresh[i] if i in fresh else self._images[(ref, key)] for i, key in enumerate(keys)])

    def text_side_params(self, served: ServedLike) -> list[nn.Parameter]:
        """Adapter parameters that can change label-prompt embeddings (not the image tower's, not VPT tokens)."""
        return self._text_params(self.served(served))

    def _text_params(self, served: Served) -> list[nn.Parameter]:
        vision = self._vision_ids()
        params = [p for n in served.loras for p in self.adapters.parameters(n) if id(p) not in vision]
        prompt = self._prompt(served)
        return params + ([prompt.ctx] if prompt is not None else [])

    def label_features(self, domain: "Domain", served: ServedLike = None, cache: bool = True) -> torch.Tensor:
        """``(num_labels, dim)`` embeddings of the domain's label prompts through ``adapter``.

        Differentiable when a text-side parameter of the adapter requires grad; otherwise served from
        the label cache (recomputed exactly when those weights, the labels or the prompt change).
        """
        return self._label_embeddings(domain, self.served(served), cache)

    def _label_embeddings(self, domain: "Domain", adapter: Served, cache: bool = True) -> torch.Tensor:
        params = self._text_params(adapter)
        if not cache or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return self._label_features(domain, adapter)
        key = (tuple(domain.labels), domain.prompt, adapter)
        stamp = (self.adapters.version, tuple((id(p), p._version) for p in params))
        hit = self._labels.get(key)
        if hit is not None and hit[0] == stamp:
            self.label_cache_hits += 1
            return hit[1]
        with torch.no_grad():
            feats = self._label_features(domain, adapter)
        if len(self._labels) >= self._LABEL_CACHE_SIZE:
            self._labels.pop(next(iter(self._labels)))
        self._labels[key] = (stamp, feats)
        return feats

    def _label_features(self, domain: "Domain", served: Served) -> torch.Tensor:
        prompt = self._prompt(served)
        with self.adapters.active(served.loras):
            if prompt is None:
                return self._encode_text(self._tokenize(domain.prompts()))
            tokens, positions = self._tokenize(prompt.texts(domain.labels, domain.prompt), prompt.config.ctx_text)
            with self.hooks.text(positions, prompt.ctx):
                return self._encode_text(tokens)

    # -- logits ----------------------------------------------------------------------------------
    def logits_from_features(self, image_feats: torch.Tensor, label_feats: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(N, num_labels)`` (plus SigLIP's bias)."""
        scale = self.model.logit_scale.float().exp()
        bias = getattr(self.model, "logit_bias", None)
        logits = scale * image_feats @ label_feats.t()
        return logits + bias.float() if bias is not None else logits

    def _scores(self, rows: torch.Tensor, domain: "Domain", served: Served, cache: bool = True) -> torch.Tensor:
        """Logits of image rows (see :meth:`_rows`) over ``domain``'s labels through ``served``: the
        zero-shot similarities, plus the head's linear term when a head serves."""
        dim = self._embed_dim()
        zero_shot = self.logits_from_features(rows[:, :dim], self._label_embeddings(domain, served, cache))
        head = self._head(served)
        if head is None:
            return zero_shot
        feats = rows[:, dim:]
        head.check_inputs(feats, len(domain.labels), f"domain {domain.name!r}, adapter {served.prompt!r}")
        return head(feats, zero_shot)

    def head_inputs(self, pixel_values: torch.Tensor, domain: "Domain", served: ServedLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, zero-shot logits)`` a head serving ``served`` reads (no gradients): what
        :meth:`medadapt.adapters.kind.AdapterKind.initialise` starts a head from."""
        served = self.served(served)
        with torch.no_grad():
            rows = self._image(pixel_values, served)
            dim = self._embed_dim()
            return rows[:, dim:], self.logits_from_features(rows[:, :dim], self._label_embeddings(domain, served))

    def logits(self, pixel_values: torch.Tensor, domain: "Domain", served: ServedLike = None, questions: Sequence[str] | None = None,
               keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        _no_questions(questions)
        served = self.served(served)
        return self._scores(self._image(pixel_values, served), domain, served)

    def logits_mixed(self, pixel_values: torch.Tensor, domains: Sequence["Domain"], served: Sequence[ServedLike], questions: Sequence[str] | None = None) -> list[torch.Tensor]:
        _no_questions(questions)
        rows = [self.served(a) for a in served]
        image_rows = self._image_mixed(pixel_values, rows)
        groups: dict[tuple[str, Served], list[int]] = {}
        for i, (domain, adapter) in enumerate(zip(domains, rows)):
            groups.setdefault((domain.name, adapter), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(rows)
        for (_, adapter), index in groups.items():
            logits = self._scores(image_rows[index], domains[index[0]], adapter)
            for j, i in enumerate(index):
                out[i] = logits[j]
        return out

    def batch_logits(
        self, pixel_values: torch.Tensor, domains: Sequence["Domain"], served: ServedLike, cache: bool = True,
        keys: Sequence[tuple[str, int]] | None = None,
    ) -> list[tuple[list[int], torch.Tensor]]:
        """Training: one image forward for a (mixed-domain) batch through one adapter; per domain the
        rows and their ``(rows, num_labels)`` logits.

        With ``keys`` (one per row) and nothing on the image side of ``served`` training (text-tower
        LoRA, CoOp context without visual tokens), image features are computed once per training image
        and reused across epochs, until the image-side weights change or the cache is full."""
        adapter = self.served(served)
        if cache and keys is not None and not any(p.requires_grad for p in self._image_side_params(adapter)):
            image_feats = self._cached_image_features(pixel_values, adapter, keys)
        else:
            image_feats = self._image(pixel_values, adapter)
        out = []
        for name in dict.fromkeys(d.name for d in domains):
            rows = [i for i, d in enumerate(domains) if d.name == name]
            domain = domains[rows[0]]
            index = torch.tensor(rows, device=image_feats.device)
            out.append((rows, self._scores(image_feats[index], domain, adapter, cache)))
        return out

    def loss(self, batch: "Batch", domains: Sequence["Domain"], served: Served, cache: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy over each row's domain labels: the image side runs once for the whole
        (mixed-domain) batch (see :meth:`batch_logits`)."""
        total, correct = None, 0
        for rows, logits in self.batch_logits(batch.pixel_values, domains, served, cache=cache, keys=batch.keys):
            labels = batch.labels[rows].to(logits.device)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            total = loss if total is None else total + loss
            correct += int((logits.argmax(-1) == labels).sum())
        loss = total / len(batch)
        return loss, {"loss": float(loss.detach()), "acc": correct / len(batch)}
