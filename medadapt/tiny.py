"""Tiny bases built from config, for tests, the offline demo and benchmarks: dual encoders (CLIP,
SigLIP, VisionTextDualEncoder with other image towers) here, generative VLMs in
:mod:`medadapt.tiny_generative`; :func:`tiny_names` is the one list of built-in names.

It downloads nothing: the tokenizer is byte-level (every string tokenises), the image processor
resizes to 32x32, and the weights are randomly initialised from a seed. It is *not* a medical
model; it exists so that every code path runs on a laptop without network access.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .backbones import Backbone, backbone_from_model
from .errors import UnsupportedBackboneError

TINY_SOURCE = {"clip": "medadapt/tiny-clip", "siglip": "medadapt/tiny-siglip"}


def byte_level_tokenizer(max_length: int = 64) -> Any:
    """A byte-level tokenizer (256 byte symbols + pad/bos/eos) that works offline for any text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}  # eos != 2: CLIP treats eos id 2 as a legacy config
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", model_max_length=max_length
    )


def quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - older transformers
        pass


def tiny_backbone(family: str = "clip", seed: int = 0, image_size: int = 32, hidden: int = 32) -> Backbone:
    """Build a 2-layer CLIP or SigLIP with hidden size ``hidden`` from config, deterministically."""
    quiet_transformers()
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    max_len = 64
    tokenizer = byte_level_tokenizer(max_len)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_len,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    vision = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        num_channels=3,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if family == "clip":
            config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden, logit_scale_init_value=4.6052)
            model = CLIPModel(config)
            image_processor = CLIPImageProcessor(
                size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
            )
        elif family == "siglip":
            config = SiglipConfig(text_config=text, vision_config=vision)
            model = SiglipModel(config)
            image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
        else:
            raise UnsupportedBackboneError(f"tiny backbones exist for 'clip' and 'siglip', not {family!r}")
    finally:
        torch.random.set_rng_state(generator_state)
    model.config._name_or_path = TINY_SOURCE[family]
    backbone = backbone_from_model(model, tokenizer=tokenizer, image_processor=image_processor, source=None)
    return backbone


def tiny_names() -> list[str]:
    """Names of the built-in tiny bases (``model:`` in a run config): dual encoders and generative VLMs."""
    from .tiny_generative import TINY_GENERATIVE_NAMES

    return [f"tiny-{family}" for family in TINY_SOURCE] + list(TINY_GENERATIVE_NAMES)


def tiny_base(name: str, seed: int = 0) -> Backbone:
    """The built-in tiny base ``name`` (see :func:`tiny_names`), built from config with random weights."""
    from .tiny_generative import TINY_GENERATIVE_NAMES, tiny_generative

    if name in TINY_GENERATIVE_NAMES:
        model, processor = tiny_generative(name, seed=seed)
        return backbone_from_model(model, processor=processor, source=None)
    family = name.split("-", 1)[1] if name.startswith("tiny-") else name
    if family not in TINY_SOURCE:
        raise UnsupportedBackboneError(f"unknown tiny base {name!r}; built in: {tiny_names()}")
    return tiny_backbone(family, seed=seed)


TINY_TOWERS = ("resnet", "convnext", "efficientnet", "vit", "timm-resnet")


def tiny_tower_dual_encoder(tower: str = "resnet", seed: int = 0, image_size: int = 32, hidden: int = 32) -> Backbone:
    """A ``VisionTextDualEncoderModel`` with a tiny image tower of kind ``tower`` and a 1-layer BERT
    text tower, built from config with random weights (see :data:`TINY_TOWERS`).

    ``"timm-resnet"`` is a timm ``resnet10t`` created with ``pretrained=False`` and wrapped as
    ``TimmWrapperModel`` (needs timm, so torchvision: the ``open_clip`` extra).
    """
    quiet_transformers()
    from transformers import (
        AutoModel,
        BertConfig,
        BertModel,
        ConvNextConfig,
        EfficientNetConfig,
        ResNetConfig,
        ViTConfig,
        ViTImageProcessor,
    )

    from .families.towers import dual_encoder_from_towers

    tokenizer = byte_level_tokenizer(64)
    text_config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=64, pad_token_id=0,
    )
    configs = {
        "resnet": lambda: ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
        "convnext": lambda: ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2),
        "efficientnet": lambda: EfficientNetConfig(image_size=image_size, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128),
        "vit": lambda: ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=hidden * 2, image_size=image_size, patch_size=8),
    }
    if tower not in configs and tower != "timm-resnet":
        raise UnsupportedBackboneError(f"tiny towers: {TINY_TOWERS}, not {tower!r}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if tower == "timm-resnet":
            from transformers import TimmWrapperConfig, TimmWrapperModel

            vision = TimmWrapperModel(TimmWrapperConfig(architecture="resnet10t", num_classes=0, do_pooling=True))
        else:
            vision = AutoModel.from_config(configs[tower]())
        with torch.no_grad():  # torch's default init: transformers' small normal init vanishes in a tiny CNN
            for module in vision.modules():
                if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
                    module.reset_parameters()
        model = dual_encoder_from_towers(vision, BertModel(text_config), projection_dim=hidden, logit_scale_init_value=4.6052)
    finally:
        torch.random.set_rng_state(state)
    image_processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    return backbone_from_model(model, tokenizer=tokenizer, image_processor=image_processor, source=None)
