"""The generative family: image-text-to-text VLMs (LLaVA/LLaVA-Med, Gemma 3/MedGemma, PaliGemma,
Idefics3/SmolVLM, Qwen2-VL).

A closed-set domain is scored by likelihood: each label is a candidate answer to the domain's
question (the prompt template's text before ``{}``, or a per-image question), and its logit is the
log-probability of its tokens plus EOS given the image and the question (optionally divided by the
answer length). The image and question prefix is encoded once per batch and its KV cache reused
for all K labels; the context and each answer are tokenised together and split where they part.
A chat template is applied when the processor has one. Open-ended domains (``task="vqa"``) are
answered with :meth:`GenerativeScorer.generate`, one adapter per row in one batched call.

Everything a generative architecture does differently (where its image tower and language model
live, how an image appears in a plain prompt, what ``token_type_ids`` mean) is one
:class:`GenerativeSpec`.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..adapters.lora import BASE
from ..errors import AdapterError, DomainError, ImageError, UnsupportedBackboneError
from ..images import to_rgb
from ..stages import Served
from .base import Backbone, BackboneFamily, Preprocessing, Scorer, ServedLike, register_family
from .image_token_cache import ImageCacheSettings, ImageTokenCache, processor_stamp, weights_stamp

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters.registry import AdapterSet
    from ..domains import Domain
    from ..training.objectives import Batch


@dataclass(frozen=True)
class GenerativeSpec:
    """How medadapt reaches the parts of one generative architecture."""

    model_types: tuple[str, ...]
    vision_tower: Callable[[nn.Module], nn.Module]
    language_model: str  # module path of the language model, for the default LoRA target regex
    plain_prompt: str = "{question}"  # the user text when the processor has no chat template
    answer_prefix: str = " "  # text between the rendered prompt and the answer
    token_types: str | None = None  # "image": 1 on image tokens (Gemma 3); "suffix": 1 on the answer (PaliGemma)
    nested_images: bool = True  # the processor wants one list of images per text
    needs: str | None = None  # a package the processor needs (named in the error when it is missing)
    tiles: bool = False  # the image processor returns (N, tiles, C, H, W) and wants one list of images per sample
    no_image_cache: str | None = None  # why this architecture's forward cannot take precomputed image tokens


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)


SPECS = (
    GenerativeSpec(("llava",), lambda m: _inner(m).vision_tower, "model.language_model", "<image>\n{question}", nested_images=False),
    GenerativeSpec(("gemma3",), lambda m: _inner(m).vision_tower, "model.language_model", "<start_of_image>{question}", "", "image"),
    GenerativeSpec(("paligemma",), lambda m: _inner(m).vision_tower, "model.language_model", "<image>{question}", "", "suffix"),
    GenerativeSpec(("idefics3", "smolvlm"), lambda m: _inner(m).vision_model, "model.text_model", "<image>{question}", tiles=True),
    GenerativeSpec(("qwen2_vl", "qwen2_5_vl"), lambda m: _inner(m).visual, "model.language_model",
                   "<|vision_start|><|image_pad|><|vision_end|>{question}", needs="torchvision",
                   no_image_cache="Qwen2-VL's image tokens come with image_grid_thw and rope positions computed from the "
                                  "pixel inputs; passing precomputed tokens alone is not supported here"),
)


class GenerativeFamily(BackboneFamily):
    """Image-text-to-text models adapted with LoRA on their language model."""

    name = "image-text-to-text"
    pipeline_tag = "image-text-to-text"
    objective = "causal_lm"
    scoring = "generative"
    auto_class = "AutoModelForImageTextToText"
    tasks = ("classification", "vqa")

    def __init__(self) -> None:
        self.model_types = tuple(t for spec in SPECS for t in spec.model_types)

    def spec(self, model_type: str) -> GenerativeSpec:
        return next(s for s in SPECS if model_type in s.model_types)

    def model_class(self, model_type: str) -> type:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def load_preprocessing(self, source: str, **hub_kwargs: Any) -> Preprocessing:
        from transformers import AutoConfig, AutoProcessor

        model_type = AutoConfig.from_pretrained(source, **hub_kwargs).model_type
        try:
            processor = AutoProcessor.from_pretrained(source, **hub_kwargs)
        except ImportError as exc:
            needs = self.spec(model_type).needs
            raise UnsupportedBackboneError(
                f"the {model_type!r} processor cannot run here: {exc}"
                + (f" Install {needs} (`pip install {needs}` matching your torch build)." if needs else "")
            ) from exc
        return self._complete(model_type, processor)

    def _complete(self, model_type: str, processor: Any) -> Preprocessing:
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tokenizer is None or image_processor is None:
            raise UnsupportedBackboneError(
                f"a {model_type!r} model needs its full processor (AutoProcessor: tokenizer + image processor); "
                f"got {type(processor).__name__}."
            )
        if self.spec(model_type).tiles and getattr(image_processor, "do_image_splitting", False):
            image_processor.do_image_splitting = False  # one tile per image: a fixed number of image tokens
        needs = self.spec(model_type).needs
        if needs and type(image_processor).__name__.endswith("Fast"):
            try:
                __import__(needs)
            except ImportError as exc:
                raise UnsupportedBackboneError(f"the {model_type!r} image processor needs {needs}; install it (`pip install {needs}`).") from exc
        return Preprocessing(tokenizer=tokenizer, image_processor=image_processor, processor=processor)

    def check_preprocessing(self, model: nn.Module, pre: Preprocessing) -> Preprocessing:
        if pre.processor is None:
            raise UnsupportedBackboneError(
                f"a built {model.config.model_type!r} model needs its processor: pass `processor=` "
                "(e.g. AutoProcessor.from_pretrained(...)), not a tokenizer and image processor."
            )
        return self._complete(model.config.model_type, pre.processor)

    def save_preprocessing(self, pre: Preprocessing, folder: str) -> None:
        pre.processor.save_pretrained(folder)  # tokenizer, image processor and chat template

    def preprocess(self, backbone: Backbone, images: Any) -> torch.Tensor:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ImageError("no images given (empty list).")
        rgb = [to_rgb(image, i) for i, image in enumerate(images)]
        if self.spec(backbone.model_type).tiles:
            return backbone.image_processor(images=[[image] for image in rgb], return_tensors="pt")["pixel_values"]
        return backbone.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    def vision_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values  # Idefics3: (N, tiles, C, H, W)

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return self.spec(model.config.model_type).vision_tower(model)

    def default_lora_targets(self, model: nn.Module) -> str:
        """q/v projections of the language model only (a regex that skips the image tower and projector)."""
        prefix = re.escape(self.spec(model.config.model_type).language_model)
        return rf"^{prefix}\..*\.(q_proj|v_proj)$"

    def make_scorer(self, backbone: Backbone, adapters: "AdapterSet") -> "GenerativeScorer":
        return GenerativeScorer(backbone, adapters, self.spec(backbone.model_type))

    def text_max_length(self, backbone: Backbone) -> int:
        cfg = getattr(backbone.model.config, "text_config", None) or backbone.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)


GENERATIVE = register_family(GenerativeFamily())


@dataclass
class Encoded:
    """One question's context tokens and each candidate answer's tokens (split where they part)."""

    context: torch.Tensor  # (L,) token ids shared by every answer
    context_types: torch.Tensor | None  # (L,) token_type_ids of the context
    answers: list[torch.Tensor]  # per answer (T_k,) ids, EOS included
    answer_type: int  # token type of answer tokens


class GenerativeScorer(Scorer):
    """Label likelihoods, causal-LM losses and generation for an image-text-to-text model."""

    _CACHE_SIZE = 4096

    def __init__(self, backbone: Backbone, adapters: "AdapterSet", spec: GenerativeSpec) -> None:
        super().__init__(backbone, adapters)
        self.spec = spec
        self.processor = backbone.processor
        self.tokenizer = backbone.tokenizer
        self.length_normalize = False  # divide each answer's log-likelihood by its token count
        self._encoded: dict[tuple, Encoded] = {}
        self._dummy = None
        self.image_cache: ImageTokenCache | None = None  # set for a run by caching_images()
        self._upstream: tuple[int, set[int], list[nn.Parameter]] | None = None  # (adapters.version, ids, base params)
        self._stacked_tokens = True  # the family's get_image_features gives one tensor (else a list per image)

    # -- text ------------------------------------------------------------------------------------
    def render(self, question: str) -> str:
        """The prompt text for one image and ``question`` (chat template when the processor has one)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.spec.plain_prompt.format(question=question)

    def _dummy_image(self) -> Any:
        if self._dummy is None:
            self._dummy = Image.new("RGB", (32, 32))
        return self._dummy

    def _tokenize(self, text: str, suffix: str | None = None) -> dict[str, torch.Tensor]:
        """Processor output for ``text`` and one image (image tokens expanded as for a real image)."""
        image = [self._dummy_image()] if self.spec.nested_images else self._dummy_image()
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            kwargs["add_special_tokens"] = False  # the chat template wrote bos already
        if suffix is not None:
            kwargs["suffix"] = suffix
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.processor(text=[text], images=[image], **kwargs)
        return {k: v[0] for k, v in out.items() if k in ("input_ids", "token_type_ids")}

    def encode(self, question: str, answers: Sequence[str]) -> Encoded:
        """Tokens of ``question``'s context and of each answer (with EOS), tokenised together."""
        key = (question, tuple(answers))
        hit = self._encoded.get(key)
        if hit is not None:
            return hit
        prompt = self.render(question)
        eos = self.tokenizer.eos_token_id
        if self.spec.token_types == "suffix":  # PaliGemma: the processor builds prefix + suffix (+ eos) itself
            context = self._tokenize(prompt)
            fulls = [self._tokenize(prompt, suffix=a)["input_ids"] for a in answers]
        else:
            context = self._tokenize(prompt)
            fulls = [self._tokenize(prompt + self.spec.answer_prefix + a)["input_ids"] for a in answers]
            fulls = [torch.cat([f, torch.tensor([eos])]) if int(f[-1]) != eos else f for f in fulls]
        ctx_ids = context["input_ids"]
        cut = len(ctx_ids)
        for full in fulls:  # where every answer's tokens part from the context
            n = min(cut, len(full) - 1)
            same = (full[:n] == ctx_ids[:n]).int()
            cut = int(same.cumprod(0).sum())
        if cut == 0:
            raise DomainError(f"question {question!r}: the answers share no prompt tokens with it; check the processor.")
        types = context.get("token_type_ids")
        encoded = Encoded(
            context=ctx_ids[:cut],
            context_types=types[:cut] if types is not None and self.spec.token_types else None,
            answers=[full[cut:] for full in fulls],
            answer_type=1 if self.spec.token_types == "suffix" else 0,
        )
        limit = self.backbone.text_max_length()
        for answer, full in zip(answers, fulls):
            if len(full) > limit:
                raise DomainError(
                    f"answer {answer[:60]!r} to {question[:60]!r} is {len(full)} tokens with its prompt, longer than "
                    f"the model's maximum length {limit}; shorten it."
                )
        if len(self._encoded) >= self._CACHE_SIZE:
            self._encoded.pop(next(iter(self._encoded)))
        self._encoded[key] = encoded
        return encoded

    # -- image tokens ----------------------------------------------------------------------------
    @contextmanager
    def caching_images(self, settings: ImageCacheSettings) -> Iterator[ImageTokenCache | None]:
        """Reuse projected image tokens of keyed samples in the body (a training run); see
        :mod:`medadapt.families.image_token_cache`. The cache is dropped (spill file deleted) after."""
        if settings.memory_bytes == 0:
            yield None
            return
        cache, previous = ImageTokenCache(settings), self.image_cache
        self.image_cache = cache
        try:
            yield cache
        finally:
            self.image_cache = previous
            cache.close()

    def _upstream_of_language_model(self) -> tuple[set[int], list[nn.Parameter]]:
        """ids of every parameter upstream of the language model (vision tower, projector, their
        LoRA layers) and the base's own ones among them; rebuilt when adapters change."""
        version = self.adapters.version
        if self._upstream is None or self._upstream[0] != version:
            model = self.model
            downstream = {id(p) for p in model.get_submodule(self.spec.language_model).parameters()}
            head = model.get_output_embeddings()
            downstream |= {id(p) for p in head.parameters()} if head is not None else set()
            adapter_ids = {id(p) for name in self.adapters.kinds for p in self.adapters.parameters(name)}
            upstream = [p for p in model.parameters() if id(p) not in downstream]
            self._upstream = (version, {id(p) for p in upstream}, [p for p in upstream if id(p) not in adapter_ids])
        return self._upstream[1], self._upstream[2]

    def image_cache_refusal(self, served: Sequence[ServedLike]) -> str | None:
        """Why calls served by ``served`` cannot reuse cached image tokens (None: they can).

        Decided from parameters: a served adapter with any parameter upstream of the language model
        (a vision-tower or projector LoRA) or any upstream parameter that trains means the image
        tokens are not the frozen base's."""
        if self.spec.no_image_cache:
            return self.spec.no_image_cache
        upstream, base = self._upstream_of_language_model()
        for name in dict.fromkeys(n for a in served for n in self.served(a).names):
            if any(id(p) in upstream for p in self.adapters.parameters(name)):
                return f"adapter {name!r} has parameters in the vision tower or projector"
        if torch.is_grad_enabled() and any(p.requires_grad for p in base):
            return "a vision-tower or projector parameter of the base trains"
        if self.backbone.family.vision_tower(self.model).training:
            return "the vision tower is in train mode"
        return None

    def _upstream_stamp(self) -> tuple:
        _, base = self._upstream_of_language_model()
        return (id(self.model), weights_stamp(base), processor_stamp(self.backbone.image_processor))

    def _image_tokens(self, inputs: dict[str, torch.Tensor], keys: Sequence[Hashable], served: Sequence[ServedLike]) -> Any:
        """The projected image tokens of the keyed rows, from the cache where it has them, or None
        (run uncached) when the served adapters change what is upstream of the language model."""
        cache = self.image_cache
        assert cache is not None
        reason = self.image_cache_refusal(served)
        if reason is not None:
            cache.refuse(reason)
            return None
        cache.check_stamp(self._upstream_stamp())
        pv = inputs["pixel_values"]
        autocast = (torch.is_autocast_enabled(pv.device.type), str(torch.get_autocast_dtype(pv.device.type)))
        variant = (str(pv.dtype), str(pv.device), autocast)  # what the tokens were computed under
        rows = [cache.get((key, variant)) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            index = torch.tensor(missing, device=pv.device)
            with torch.no_grad(), self.adapters.frozen_base():  # = the served adapters' image tokens (none touches them)
                made = self.model.get_image_features(**{k: v[index] for k, v in inputs.items()}, return_dict=True).pooler_output
            self._stacked_tokens = isinstance(made, torch.Tensor)
            for j, i in enumerate(missing):
                rows[i] = made[j]
                cache.put((keys[i], variant), made[j])
        return torch.stack(rows) if self._stacked_tokens else list(rows)

    # -- forwards --------------------------------------------------------------------------------
    def _image_inputs(self, pixel_values: torch.Tensor, keys: Sequence[Hashable] | None = None, served: Sequence[ServedLike] = ()) -> dict[str, Any]:
        """Model inputs for the images: their pixels, or, for keyed rows with an image cache, their
        projected image tokens (``mm_encoder_outputs``) when nothing upstream of the language model is adapted."""
        pv = pixel_values.to(self.device, dtype=self.model.dtype)
        inputs = {"pixel_values": pv}
        if pv.dim() == 5:  # Idefics3: every tile is real (images are resized, not padded)
            inputs["pixel_attention_mask"] = torch.ones(pv.shape[0], pv.shape[1], *pv.shape[-2:], dtype=torch.bool, device=self.device)
        if keys is None or self.image_cache is None:
            return inputs
        tokens = self._image_tokens(inputs, keys, served)
        if tokens is None:
            return inputs
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=tokens)}}

    def _adapter_context(self, served: Sequence[ServedLike]) -> Any:
        """Activate one adapter (or a stack) for all rows, or one per row (peft ``adapter_names``)."""
        rows = [self.served(a) for a in served]
        if any(a.prompt is not None for a in rows):
            raise UnsupportedBackboneError("prompt adapters are not supported on a generative base.")
        if len(set(rows)) == 1:
            return self.adapters.active(rows[0].loras)
        if any(a.stacked for a in rows):
            raise AdapterError("stacked adapters are not supported in a mixed-domain batch; call per domain.")
        return self.adapters.lora.mixed([a.loras[0] if a.loras else BASE for a in rows])

    def _answer_logprobs(self, pixel_values: torch.Tensor, encoded: Encoded, adapters: Sequence[ServedLike], keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        """``(n, K)`` summed log-probabilities of each answer for ``n`` images sharing one context."""
        n, k = pixel_values.shape[0], len(encoded.answers)
        device = self.device
        ctx = encoded.context.to(device).unsqueeze(0).expand(n, -1)
        extra: dict[str, torch.Tensor] = {}
        if encoded.context_types is not None:
            extra["token_type_ids"] = encoded.context_types.to(device).unsqueeze(0).expand(n, -1)
        lengths = torch.tensor([len(a) for a in encoded.answers], device=device)
        longest = int(lengths.max())
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        answers = torch.full((k, longest), pad, dtype=torch.long, device=device)
        for i, a in enumerate(encoded.answers):
            answers[i, : len(a)] = a.to(device)
        images = self._image_inputs(pixel_values, keys, adapters)
        with self._adapter_context(adapters):
            out = self.model(input_ids=ctx, attention_mask=torch.ones_like(ctx), **images,
                             **extra, use_cache=longest > 1, logits_to_keep=1)
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (n, V): predicts each answer's first token
        scores = first[:, answers[:, 0]]  # (n, K)
        if longest > 1:
            cache = out.cache
            cache.batch_repeat_interleave(k)
            steps = answers[:, :-1].repeat(n, 1)  # (n*K, T-1): answer tokens that predict the next ones
            mask = torch.ones(n * k, ctx.shape[1] + longest - 1, dtype=torch.long, device=device)
            types = {}
            if encoded.context_types is not None:
                types["token_type_ids"] = torch.full_like(steps, encoded.answer_type)
            rows = [a for a in adapters for _ in range(k)]
            with self._adapter_context(rows):
                more = self.model(input_ids=steps, attention_mask=mask, cache=cache, use_cache=True, **types).logits
            logp = F.log_softmax(more.float(), dim=-1)  # (n*K, T-1, V)
            targets = answers[:, 1:].repeat(n, 1)
            picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n*K, T-1)
            valid = (torch.arange(longest - 1, device=device).unsqueeze(0) < (lengths - 1).repeat(n).unsqueeze(1))
            scores = scores + (picked * valid).sum(-1).view(n, k)
        if self.length_normalize:
            scores = scores / lengths.to(scores.dtype)
        return scores

    def _groups(self, questions: Sequence[str]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(q, []).append(i)
        return groups

    def logits(self, pixel_values: torch.Tensor, domain: "Domain", served: ServedLike = None, questions: Sequence[str] | None = None,
               keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        adapter = self.served(served)
        questions = list(questions) if questions is not None else [domain.question] * pixel_values.shape[0]
        out: torch.Tensor | None = None
        for question, rows in self._groups(questions).items():
            index = torch.tensor(rows)
            scores = self._answer_logprobs(pixel_values[index], self.encode(question, domain.labels), [adapter] * len(rows),
                                           [keys[i] for i in rows] if keys is not None else None)
            out = scores.new_empty(pixel_values.shape[0], scores.shape[1]) if out is None else out
            out[index.to(out.device)] = scores
        return out

    def logits_mixed(self, pixel_values: torch.Tensor, domains: Sequence["Domain"], served: Sequence[ServedLike], questions: Sequence[str] | None = None) -> list[torch.Tensor]:
        adapters = [self.served(a) for a in served]
        questions = list(questions) if questions is not None else [d.question for d in domains]
        keyed: dict[tuple, list[int]] = {}
        for i, (d, q) in enumerate(zip(domains, questions)):
            keyed.setdefault((q, tuple(d.labels)), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(domains)
        for (question, labels), rows in keyed.items():
            index = torch.tensor(rows)
            scores = self._answer_logprobs(pixel_values[index], self.encode(question, list(labels)), [adapters[i] for i in rows])
            for j, i in enumerate(rows):
                out[i] = scores[j]
        return out  # type: ignore[return-value]

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: "Batch", domains: Sequence["Domain"], served: Served, cache: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Causal-LM loss on each row's answer tokens only (the image and question are masked).

        A row's answer is its free-text answer, or its label's text; its question is its own, or its
        domain's. The report's ``acc`` is the answer-token accuracy (teacher forcing)."""
        questions, answers = [], []
        for i, domain in enumerate(domains):
            asked = batch.questions[i] if batch.questions is not None else None
            given = batch.answers[i] if batch.answers is not None else None
            questions.append(asked or domain.question)
            answers.append(given if given is not None else domain.labels[int(batch.labels[i])])
        keys = [("train", d, i) for d, i in batch.keys] if cache and batch.keys is not None else None
        loss, accuracy = self.lm_loss(batch.pixel_values, questions, answers, served, keys)
        return loss, {"loss": float(loss.detach()), "acc": accuracy}

    def lm_loss(self, pixel_values: torch.Tensor, questions: Sequence[str], answers: Sequence[str], served: ServedLike,
                keys: Sequence[Hashable] | None = None) -> tuple[torch.Tensor, float]:
        """Mean causal-LM loss on the answer tokens (prompt and padding masked) and the token accuracy.

        ``keys`` (one per row: the sample) let an open :meth:`caching_images` cache serve the rows'
        image tokens when the served adapter trains only the language model."""
        device = self.device
        seqs, types, labels = [], [], []
        for q, a in zip(questions, answers):
            enc = self.encode(q, [a])
            ids = torch.cat([enc.context, enc.answers[0]])
            seqs.append(ids)
            labels.append(torch.cat([torch.full_like(enc.context, -100), enc.answers[0]]))
            if enc.context_types is not None:
                types.append(torch.cat([enc.context_types, torch.full_like(enc.answers[0], enc.answer_type)]))
        longest = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        target = torch.full_like(input_ids, -100)
        token_types = torch.zeros_like(input_ids) if types else None
        for i, s in enumerate(seqs):  # right padding: positions of real tokens do not move
            input_ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
            target[i, : len(s)] = labels[i]
            if token_types is not None:
                token_types[i, : len(s)] = types[i]
        extra = {"token_type_ids": token_types.to(device)} if token_types is not None else {}
        images = self._image_inputs(pixel_values, keys, [served])
        with self._adapter_context([served]):
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **images, **extra).logits
        shifted, goal = logits[:, :-1].float(), target[:, 1:].to(device)
        loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), goal.reshape(-1), ignore_index=-100)
        scored = goal != -100
        accuracy = float(((shifted.argmax(-1) == goal) & scored).sum() / scored.sum().clamp(min=1))
        return loss, accuracy

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, questions: Sequence[str], served: Sequence[ServedLike], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers, one per image, each through its own adapter, in one batched ``generate`` call."""
        device = self.device
        encoded = [(enc.context, enc.context_types) for enc in (self.encode(q, []) for q in questions)]
        longest = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(encoded), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        token_types = torch.zeros_like(input_ids) if self.spec.token_types else None
        for i, (ids, types) in enumerate(encoded):  # left padding: every row's prompt ends at the same place
            input_ids[i, longest - len(ids):] = ids
            mask[i, longest - len(ids):] = 1
            if token_types is not None and types is not None:
                token_types[i, longest - len(ids):] = types
        extra = {"token_type_ids": token_types.to(device)} if token_types is not None else {}
        eos = self.tokenizer.eos_token_id
        with self._adapter_context(list(served)):
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), **self._image_inputs(pixel_values), **extra,
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos,
            )
        new = out[:, longest:]
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
