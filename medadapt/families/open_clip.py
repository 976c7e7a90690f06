"""The open_clip family: BiomedCLIP, QuiltNet and any other open_clip model (``pip install medadapt[open_clip]``).

An open_clip model is a dual encoder like CLIP, so this family is a :class:`DualEncoderFamily`
with its own :class:`TowerSpec`: images through ``encode_image``, texts through ``encode_text``,
open_clip's own preprocess transform and tokenizer (wrapped to look like a transformers image
processor and tokenizer, so scoring, label caching, mixed batches and text prompt context are the
dual-encoder code, unchanged).

Sources (``ContinualVLM.from_base``)::

    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"   # a Hub repo (revision= pins it)
    "local-dir:/models/quiltnet"  or  "/models/quiltnet"                 # open_clip_config.json + weights

Weights are read from safetensors only (``open_clip_model.safetensors``); a checkpoint that is
only a pickle (``open_clip_pytorch_model.bin``, ``*.pt``) is refused with the one-off conversion.
The manifest records the model name (``source``) and the checkpoint's Hub commit or, for a local
checkpoint, its sha256 (``revision``), plus ``base.open_clip`` with both.

**LoRA targets.** open_clip's ViT runs attention through ``nn.MultiheadAttention``, which reads
its ``out_proj`` weights directly (a LoRA wrapped around ``out_proj`` would be silently ignored),
and peft's own MultiheadAttention LoRA merges weights in every forward and cannot serve
mixed-adapter batches. So the default LoRA goes on the Linear layers that are called as modules:
each residual block's MLP (``mlp.c_fc``, ``mlp.c_proj``) in both towers, timm towers' ``attn.qkv``
and MLP ``fc1``/``fc2``, and a transformers text tower's attention ``query``/``value``. Stage
folders are plain peft folders: ``PeftModel.from_pretrained(open_clip_model, folder)`` loads them.

Visual prompt tokens are not supported (open_clip builds its patch sequence inside ``forward``);
text prompt context (CoOp) is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_bytes, sha256_file
from ..errors import MissingExtraError, UnsupportedBackboneError
from .base import Backbone, Preprocessing, register_family
from .dual_encoder import DualEncoderFamily, TowerSpec

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
INSTALL = (
    "pip install 'medadapt[open_clip]' (after `pip install torch==2.14.1`: the extra pins torchvision 0.29.1, "
    "the build matching that torch)"
)
CONVERT = (
    "Convert it once, in an environment you trust: `import torch, safetensors.torch as st; "
    "state = torch.load('open_clip_pytorch_model.bin', map_location='cpu', weights_only=True); "
    "st.save_file({k: v.contiguous() for k, v in state.items()}, 'open_clip_model.safetensors')`, and put "
    "open_clip_model.safetensors next to open_clip_config.json (locally, or in a Hub repo you control)."
)
LORA_TARGETS = r".*\.(mlp\.c_fc|mlp\.c_proj|mlp\.fc1|mlp\.fc2|attn\.qkv|attention\.self\.query|attention\.self\.value)$"


def require_open_clip() -> Any:
    """``import open_clip``, or a :class:`MissingExtraError` naming the extra and the torch pairing."""
    try:
        import open_clip
    except ImportError as exc:
        raise MissingExtraError(f"open_clip models need open_clip_torch: {INSTALL}.") from exc
    except RuntimeError as exc:  # torchvision built for another torch ("operator torchvision::nms does not exist")
        raise MissingExtraError(f"open_clip imports torchvision, which does not match the installed torch ({exc}); {INSTALL}.") from exc
    return open_clip


@dataclass
class OpenClipConfig:
    """The ``config`` medadapt attaches to an open_clip model (open_clip models have none).

    ``to_dict`` is what the config fingerprint hashes: the architecture (``model_cfg``) and the
    preprocessing, not where it was loaded from (``_name_or_path`` is dropped like transformers')."""

    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    name_or_path: str | None = None
    model_type: str = "open_clip"

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg,
                "_name_or_path": self.name_or_path}

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))


class OpenClipTokenizer:
    """An open_clip tokenizer called like a transformers one (``input_ids`` and offsets).

    Offsets (for text prompt context): both of open_clip's tokenizers split words before
    sub-words, so the tokens of the first ``k`` words are the first tokens after the start token;
    each token gets its word's character span."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.model_max_length = context_length

    def __len__(self) -> int:
        return int(getattr(self.tokenizer, "vocab_size", 0) or len(getattr(self.tokenizer, "encoder", {})))

    def _count(self, text: str) -> int:
        ids = self.tokenizer([text])[0]
        return int((ids != 0).sum()) - 2  # minus start and end tokens

    def __call__(self, texts: list[str], return_offsets_mapping: bool = False, **_: Any) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts))
        out = {"input_ids": ids, "attention_mask": (ids != 0).long()}
        if return_offsets_mapping:
            out["offset_mapping"] = torch.stack([self._word_offsets(text, ids.shape[1]) for text in texts])
        return out

    def _word_offsets(self, text: str, length: int) -> torch.Tensor:
        """Each token's span is its whole word's (words split on spaces; start/end/pad tokens: empty)."""
        offsets = torch.zeros(length, 2, dtype=torch.long)
        words = text.split(" ")
        done, start = 0, 0
        for k in range(1, len(words) + 1):
            prefix = " ".join(words[:k])
            count = min(self._count(prefix), length - 2)
            offsets[1 + done : 1 + count] = torch.tensor([start, len(prefix)])
            done, start = count, len(prefix) + 1
        return offsets
    def save_pretrained(self, folder: str) -> None:
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
        if hasattr(inner, "save_pretrained"):
            inner.save_pretrained(folder)


class OpenClipImageProcessor:
    """open_clip's preprocess transform called like a transformers image processor."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, images: Any = None, return_tensors: str = "pt", **_: Any) -> dict[str, torch.Tensor]:
        images = images if isinstance(images, (list, tuple)) else [images]
        return {"pixel_values": torch.stack([self.transform(image) for image in images])}

    def save_pretrained(self, folder: str) -> None:
        """Nothing to write: the preprocessing is in ``open_clip_config.json``."""


def _token_embedding(model: nn.Module) -> nn.Module:
    if hasattr(model, "token_embedding"):
        return model.token_embedding
    text = model.text
    if hasattr(text, "token_embedding"):
        return text.token_embedding
    return text.transformer.get_input_embeddings()  # a transformers text tower (BiomedCLIP's PubMedBERT)


def _vision_states(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    visual = model.visual
    if hasattr(visual, "forward_intermediates"):
        try:
            out = visual.forward_intermediates(pixel_values, output_fmt="NCHW")
            return out["image_features"], list(out["image_intermediates"])
        except (TypeError, NotImplementedError, RuntimeError):
            pass
    return visual(pixel_values), []


class OpenClipFamily(DualEncoderFamily):
    """open_clip CLIP models (see the module docstring)."""

    auto_class = "open_clip"

    def model_class(self, model_type: str) -> type:
        raise UnsupportedBackboneError("open_clip models are loaded by medadapt's open_clip family, not a transformers class.")

    def claims_source(self, source: str) -> bool:
        if source.startswith((HUB_PREFIX, LOCAL_PREFIX)):
            return True
        return os.path.isdir(source) and os.path.isfile(os.path.join(source, CONFIG_NAME))

    def recognizes(self, model: nn.Module) -> bool:
        return type(model).__module__.startswith("open_clip.")

    def load(self, source: str, revision: str | None = None, torch_dtype: torch.dtype | None = None, **hub_kwargs: Any) -> Backbone:
    
        folder, resolved = _resolve(source, revision, hub_kwargs)
        model, pre, config = _build(folder, source)
        if torch_dtype is not None:
            model.to(torch_dtype)
        return Backbone(model, pre, self, source=source, revision=resolved)

    def load_preprocessing(self, source: str, **hub_kwargs: Any) -> Preprocessing:
        raise UnsupportedBackboneError("open_clip preprocessing is loaded with the model (ContinualVLM.from_base).")

    def check_preprocessing(self, model: nn.Module, pre: Preprocessing) -> Preprocessing:
        if pre.tokenizer is None or pre.image_processor is None:
            raise UnsupportedBackboneError(
                "an open_clip model needs its tokenizer and preprocess transform: open_clip_backbone(model, model_cfg, "
                "tokenizer=open_clip.get_tokenizer(name), preprocess=...), or ContinualVLM.from_base('hf-hub:...')."
            )
        return pre

    def save_preprocessing(self, pre: Preprocessing, folder: str) -> None:
        pre.tokenizer.save_pretrained(folder)

    def save_weights(self, model: nn.Module, folder: str, state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        config = model.config
        blob = {"model_cfg": config.model_cfg, "preprocess_cfg": config.preprocess_cfg}
        atomic_write_bytes(Path(folder) / CONFIG_NAME, (json.dumps(blob, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        # config.json too (model_type "open_clip"): every saved base has one; open_clip_config.json decides the loader
        atomic_write_bytes(Path(folder) / "config.json", (json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})

    def manifest_fields(self, backbone: Backbone) -> dict[str, Any]:
        return {"open_clip": {"model_name": backbone.source, "revision": backbone.revision}}

    def vision_states(self, model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _vision_states(model, pixel_values)

    def text_max_length(self, backbone: Backbone) -> int:
        return backbone.model.config.context_length


def _resolve(source: str, revision: str | None, hub_kwargs: dict[str, Any]) -> tuple[Path, str]:
    """The local folder of ``source`` and its revision (Hub commit, or ``sha256:`` of local weights)."""
    if source.startswith(HUB_PREFIX):
        repo = source[len(HUB_PREFIX):]
        from huggingface_hub import snapshot_download

        kwargs = {k: v for k, v in hub_kwargs.items() if k in ("token", "cache_dir", "local_files_only")}
        try:  # data files only: a pickle (*.bin) is never downloaded
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"], **kwargs))
        except Exception as exc:
            raise UnsupportedBackboneError(
                f"open_clip model {source!r} was not found on the Hub or in the local cache ({type(exc).__name__}: {exc}). "
                "Give 'hf-hub:<org>/<repo>' of an open_clip repo (e.g. 'hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-"
                "vit_base_patch16_224') or a local folder with open_clip_config.json and open_clip_model.safetensors."
            ) from exc
        _check_folder(folder, source, hub=True)
        return folder, folder.name  # the snapshot folder is named by the commit
    folder = Path(source[len(LOCAL_PREFIX):] if source.startswith(LOCAL_PREFIX) else source)
    if not folder.is_dir():
        raise UnsupportedBackboneError(f"open_clip model folder {str(folder)!r} does not exist.")
    weights = _check_folder(folder, source, hub=False)
    return folder, f"sha256:{sha256_file(weights)}"


def _check_folder(folder: Path, source: str, hub: bool) -> Path:
    if not (folder / CONFIG_NAME).is_file():
        raise UnsupportedBackboneError(
            f"{source!r} has no {CONFIG_NAME}: it is not an open_clip model (family 'open_clip'). Supported: "
            "open_clip repos and folders with open_clip_config.json + open_clip_model.safetensors; transformers "
            "dual encoders and generative VLMs load by their Hub id or folder."
        )
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        others = sorted(folder.glob("*.safetensors"))
        if len(others) == 1:
            return others[0]
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        where = "the Hub repo" if hub else "the folder"
        found = f"only a pickle ({', '.join(pickles)})" if pickles or hub else "no weights"
        raise UnsupportedBackboneError(
            f"open_clip model {source!r}: {where} has {found} and no {WEIGHTS_NAME}; medadapt loads safetensors "
            f"only and never unpickles a checkpoint. {CONVERT}"
        )
    return weights


def _build(folder: Path, source: str) -> tuple[nn.Module, Preprocessing, OpenClipConfig]:
    open_clip = require_open_clip()
    from safetensors.torch import load_file

    data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    if "model_cfg" not in data:
        raise UnsupportedBackboneError(f"{source!r}: {CONFIG_NAME} has no 'model_cfg'; it is not an open_clip config.")
    weights = _check_folder(folder, source, hub=False)
    model, _, transform = open_clip.create_model_and_transforms(f"{LOCAL_PREFIX}{folder}", load_weights=False, pretrained_text=False)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise UnsupportedBackboneError(f"open_clip model {source!r}: the weights do not fit its config: {str(exc)[:300]}") from exc
    config = OpenClipConfig(data["model_cfg"], data.get("preprocess_cfg", {}), name_or_path=source)
    tokenizer = open_clip.get_tokenizer(f"{LOCAL_PREFIX}{folder}")
    pre = Preprocessing(tokenizer=OpenClipTokenizer(tokenizer, config.context_length), image_processor=OpenClipImageProcessor(transform))
    model.config = config
    return model, pre, config


def open_clip_backbone(model: nn.Module, model_cfg: dict[str, Any], tokenizer: Any, preprocess: Any, preprocess_cfg: dict[str, Any] | None = None, source: str | None = None) -> Backbone:
    """Wrap an open_clip model built in memory (``model_cfg``: its open_clip config dict; ``tokenizer``
    and ``preprocess``: open_clip's tokenizer and eval transform)."""

    config = OpenClipConfig(dict(model_cfg), dict(preprocess_cfg or {}), name_or_path=source)
    model.config = config
    if not isinstance(tokenizer, OpenClipTokenizer):
        tokenizer = OpenClipTokenizer(tokenizer, config.context_length)
    if not isinstance(preprocess, OpenClipImageProcessor):
        preprocess = OpenClipImageProcessor(preprocess)
    return Backbone(model, Preprocessing(tokenizer=tokenizer, image_processor=preprocess), OPEN_CLIP, source=source)


OPEN_CLIP = register_family(OpenClipFamily("open_clip", ("open_clip",), TowerSpec(
    model_class=lambda: nn.Module,
    text_token_embedding=_token_embedding,
    vision_embeddings=lambda m: None,
    vision_has_cls=lambda m: False,
    lora_targets=lambda m: LORA_TARGETS,
    image_tower=lambda m: m.visual,
    image_embeds=lambda m, pixel_values: m.encode_image(pixel_values),
    text_embeds=lambda m, tokens: m.encode_text(tokens["input_ids"]),
    embed_dim=lambda m: int(m.config.model_cfg["embed_dim"]),
    vision_width=lambda m: 0,
    vpt_towers="transformers ViT-like image towers (CLIP, SigLIP, VisionTextDualEncoder with a ViT); open_clip builds its patch sequence inside forward",
)))
