"""The real pretrained image tower for benchmarks and tests: EfficientNet-Lite0 (ImageNet-1k) from
``<repo>/../shared/models/efficientnet-lite0`` (read in place, never copied into the repository),
paired with a small random BERT text tower in a ``VisionTextDualEncoderModel`` at 64 px.

:func:`real_tower_base` builds that dual encoder and saves it once into a git-ignored cache folder
(``benchmarks/runs/bases/...``) that a run config's ``model:`` can name; :func:`real_tower_backbone`
returns it in memory. The text tower knows nothing (random weights, byte-level tokenizer), so the
label prompts are no prior here: this is the backbone on which adapters must learn from the images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO.parent / "shared" / "models" / "efficientnet-lite0"
CACHE = REPO / "benchmarks" / "runs" / "bases"
NAME = "efficientnet-lite0"
IMAGE_SIZE = 64  # multiples of 32 px (see the model's README)
TEXT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
PROJECTION_DIM = 256
LOGIT_SCALE_INIT = 2.6592  # CLIP's log(1 / 0.07), transformers' default
DESCRIPTION = (
    "`efficientnet-lite0`: EfficientNet-Lite0 pretrained on ImageNet-1k (Apache-2.0; ../shared/models/efficientnet-lite0, "
    "a transformers-native EfficientNetModel; not a medical model), images at 64 px, paired in a VisionTextDualEncoderModel "
    f"with a 2-layer BERT text tower (hidden {TEXT['hidden_size']}, byte-level tokenizer) and a {PROJECTION_DIM}-d projection, "
    "both with random weights: the image features are real, the label prompts carry no prior."
)


def available(model_dir: Path = MODEL_DIR) -> bool:
    """Whether the pretrained weights are on disk."""
    return (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()


def missing_reason(model_dir: Path = MODEL_DIR) -> str:
    return f"the pretrained EfficientNet-Lite0 weights are not at {model_dir} (../shared/models/efficientnet-lite0 beside the repository)"


def real_tower_model(model_dir: Path = MODEL_DIR, seed: int = 0) -> tuple[Any, Any, Any]:
    """``(VisionTextDualEncoderModel, tokenizer, image processor)``: the pretrained tower, a random
    text tower and projections drawn from ``seed``."""
    import torch
    from transformers import AutoModel, BertConfig, BertModel, ViTImageProcessor
    from transformers.utils import logging as hf_logging

    from medadapt.families.towers import dual_encoder_from_towers
    from medadapt.tiny import byte_level_tokenizer

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's ImageNet classifier is not part of the tower: expected
    try:
        vision = AutoModel.from_pretrained(str(model_dir))
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = byte_level_tokenizer(64)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text = BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=0, **TEXT))
        model = dual_encoder_from_towers(vision, text, projection_dim=PROJECTION_DIM, logit_scale_init_value=LOGIT_SCALE_INIT)
    finally:
        torch.random.set_rng_state(state)
    processor = ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3
    )
    return model.eval(), tokenizer, processor


def real_tower_backbone(model_dir: Path = MODEL_DIR, seed: int = 0) -> Any:
    """The dual encoder as a medadapt :class:`~medadapt.backbones.Backbone` (in memory)."""
    from medadapt.backbones import backbone_from_model

    model, tokenizer, processor = real_tower_model(model_dir, seed)
    return backbone_from_model(model, tokenizer=tokenizer, image_processor=processor, source=None)


def real_tower_base(model_dir: Path = MODEL_DIR, cache: Path = CACHE, seed: int = 0) -> Path:
    """A folder holding the dual encoder (built and saved once; rebuilt when the weights or settings change)."""
    digest = hashlib.sha256(json.dumps({"text": TEXT, "proj": PROJECTION_DIM, "size": IMAGE_SIZE, "scale": LOGIT_SCALE_INIT, "seed": seed,
                                        "weights": (model_dir / "model.safetensors").stat().st_size}, sort_keys=True).encode()).hexdigest()[:10]
    folder = cache / f"{NAME}-bert-{digest}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    model, tokenizer, processor = real_tower_model(model_dir, seed)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    tmp.rename(folder)
    return folder
