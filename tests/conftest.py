"""Shared fixtures for the test-suite.

Core fixtures (backbones, adapters, inference, stage files, errors) are the ones below, all named
``tiny_*`` / ``make_images`` / ``core_*``; other fixture groups may be added further down.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from PIL import Image

from medadapt import ContinualVLM, PromptConfig
from medadapt.tiny import byte_level_tokenizer, tiny_backbone

# ---------------------------------------------------------------------------------------------
# optional resources: skipped on a developer machine that lacks them, an error in CI (CI=true),
# where the extras are installed and a missing file means a dependency release dropped it
# ---------------------------------------------------------------------------------------------
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def optional_import(module: str, reason: str):
    """``pytest.importorskip`` outside CI; in CI the import must succeed (its error fails the test module)."""
    return importlib.import_module(module) if IN_CI else pytest.importorskip(module, reason=reason)


def bundled_file(folder: Path, name: str, package: str) -> Path:
    """A test file shipped inside ``package``: skip when absent, but fail in CI (CI=true)."""
    path = Path(folder) / name
    if not path.is_file():
        message = f"{name} is not among {package}'s installed test files (looked in {folder})"
        if IN_CI:
            pytest.fail(f"{message}; in CI a missing bundled file is an error: pin {package} to a release that ships it")
        pytest.skip(message)
    return path


# ---------------------------------------------------------------------------------------------
# core fixtures: tiny CLIP / SigLIP ContinualVLMs with a few domains of every adapter kind
# ---------------------------------------------------------------------------------------------

CORE_LORA_TARGETS = ["q_proj", "v_proj"]

# name -> (labels, prompt template); adapters are set in build_tiny_vlm
CORE_DOMAINS = {
    "chest": (["normal", "pneumonia", "effusion"], "a chest x-ray showing {}."),  # LoRA (non-identity)
    "derm": (["benign", "malignant"], "a skin photo of {}."),  # prompt: text context + visual tokens
    "fundus": (["healthy", "retinopathy"], "a fundus image of {}."),  # prompt: text context only
    "histo": (["tumor", "stroma", "fat"], "a slide of {} tissue."),  # LoRA, peft default init (= base)
    "knee": (["intact", "torn"], "a knee mri showing {}."),  # adapter="none": served by the base
}
CORE_SHARED = "generalist"  # shared LoRA (non-identity)
CORE_ADAPTERS = ["chest", "derm", "fundus", "histo", CORE_SHARED]  # model.adapter_names() (knee has none)


def core_lora_config(r: int = 4, identity: bool = False, **kwargs) -> LoraConfig:
    """A small LoRA config; ``identity=False`` initialises B != 0 so the adapter changes outputs."""
    return LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=list(CORE_LORA_TARGETS),
        init_lora_weights=True if identity else False,
        **kwargs,
    )


def perturb_prompt(model: ContinualVLM, name: str, seed: int = 0, scale: float = 0.5) -> None:
    """Add noise to a prompt adapter's context (and visual tokens) so it is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    prompt = model.prompt_adapters[name]
    with torch.no_grad():
        for param in prompt.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def build_tiny_vlm(family: str = "clip", seed: int = 0, with_domains: bool = True) -> ContinualVLM:
    """A tiny ContinualVLM (random weights from ``seed``) with the five CORE_DOMAINS and one shared LoRA."""
    model = ContinualVLM(tiny_backbone(family, seed=seed))
    if not with_domains:
        return model
    torch.manual_seed(1234)  # peft draws the non-identity LoRA weights from the global RNG
    labels, prompt = CORE_DOMAINS["chest"]
    model.add_domain("chest", labels, prompt, adapter=core_lora_config())
    labels, prompt = CORE_DOMAINS["derm"]
    model.add_domain("derm", labels, prompt, adapter=PromptConfig(n_visual_tokens=2), seed=1)
    perturb_prompt(model, "derm", seed=1)
    labels, prompt = CORE_DOMAINS["fundus"]
    model.add_domain("fundus", labels, prompt, adapter=PromptConfig(), seed=2)
    perturb_prompt(model, "fundus", seed=2)
    labels, prompt = CORE_DOMAINS["histo"]
    model.add_domain("histo", labels, prompt, adapter=core_lora_config(identity=True))
    labels, prompt = CORE_DOMAINS["knee"]
    model.add_domain("knee", labels, prompt, adapter="none")
    model.add_shared_adapter(CORE_SHARED, core_lora_config())
    return model


@pytest.fixture
def core_single_thread():
    """Run a test with one torch thread: tiny models gain nothing from more, and on a busy machine
    OpenMP threads spin-wait and make the suite many times slower. Restores the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def tiny_clip() -> ContinualVLM:
    """Tiny CLIP ContinualVLM: chest (LoRA), derm (prompt + visual tokens), fundus (text prompt), histo
    (identity LoRA), knee (no adapter: base-served) and the shared LoRA 'generalist'."""
    return build_tiny_vlm("clip")


@pytest.fixture
def tiny_siglip() -> ContinualVLM:
    """Tiny SigLIP ContinualVLM with the same domains as ``tiny_clip``."""
    return build_tiny_vlm("siglip")


@pytest.fixture(params=["clip", "siglip"])
def tiny_vlm(request) -> ContinualVLM:
    """``tiny_clip`` and ``tiny_siglip`` in turn."""
    return build_tiny_vlm(request.param)


@pytest.fixture
def tiny_empty_clip() -> ContinualVLM:
    """Tiny CLIP ContinualVLM without any domain (same base weights as ``tiny_clip``)."""
    return build_tiny_vlm("clip", with_domains=False)


def make_image_list(n: int = 4, seed: int = 0, sizes=((20, 24), (32, 32), (40, 17), (9, 50))) -> list[np.ndarray]:
    """``n`` float32 (H, W, 3) images in [0, 1] of varying sizes."""
    rng = np.random.RandomState(seed)
    return [rng.rand(*sizes[i % len(sizes)], 3).astype(np.float32) for i in range(n)]


@pytest.fixture
def make_images() -> Callable[..., list[np.ndarray]]:
    """Factory: ``make_images(n=4, seed=0)`` -> list of float (H, W, 3) images of varying sizes."""
    return make_image_list


# -- helpers shared by the core tests -------------------------------------------------------------
def base_state_checksum(model: ContinualVLM) -> str:
    """sha256 over the base model's own tensors (LoRA tensors excluded, peft's ``base_layer`` renamed)."""
    digest = hashlib.sha256()
    state = model.base_model.state_dict()
    items = sorted((k.replace(".base_layer.", "."), v) for k, v in state.items() if "lora_" not in k)
    for key, value in items:
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_snapshot(model: ContinualVLM) -> tuple:
    """Everything a refused call must leave alone: stages, domains, shared adapters, whether peft
    wrapped the base, and a sha256 over every tensor of the model (base, LoRA and prompt adapters)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    domains = tuple((name, tuple(d.labels)) for name, d in model.domains.items())
    return tuple(model.adapter_names()), domains, dict(model.shared), model.lora.peft_model is None, digest.hexdigest()


@contextmanager
def unchanged(model: ContinualVLM) -> Iterator[None]:
    """``with unchanged(model), pytest.raises(...): model.load_adapter(...)``: the refusal changed nothing."""
    before = model_snapshot(model)
    yield
    assert model_snapshot(model) == before, "the refused call changed the model"


def base_parameters(model: ContinualVLM) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.base_model.named_parameters() if "lora_" not in n}


def frozen_probs(family: str, pixel_values: torch.Tensor, prompts: list[str], seed: int = 0) -> torch.Tensor:
    """Zero-shot probabilities straight from a freshly built transformers model (no medadapt involved)."""
    backbone = tiny_backbone(family, seed=seed)
    padding = "max_length" if family == "siglip" else True
    tokens = backbone.tokenizer(prompts, padding=padding, truncation=True, max_length=64, return_tensors="pt")
    kwargs = {"input_ids": tokens["input_ids"]}
    if family != "siglip":
        kwargs["attention_mask"] = tokens["attention_mask"]
    with torch.no_grad():
        out = backbone.model(pixel_values=pixel_values, **kwargs)
    return out.logits_per_image.softmax(dim=-1)


def train_adapter(model: ContinualVLM, name: str, domain: str, pixel_values: torch.Tensor, labels: torch.Tensor, steps: int = 8, lr: float = 0.05) -> list[float]:
    """A few Adam steps on adapter ``name`` serving ``domain``; returns the losses."""
    params = model.set_trainable([name])
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        logits = model(pixel_values, domain=domain, adapter=None if name == domain else name)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    model.set_trainable([])
    return losses


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_dual_encoder(seed: int = 0):
    """A tiny VisionTextDualEncoderModel (ViT + BERT) with a byte-level tokenizer and a 32px ViT processor."""
    from transformers import BertConfig, ViTConfig, ViTImageProcessor, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    tokenizer = byte_level_tokenizer(64)
    vit = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        hidden_dropout_prob=0.0,  # deterministic training steps (the base is frozen, not in eval mode)
        attention_probs_dropout_prob=0.0,
    )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vit, bert, projection_dim=16)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = VisionTextDualEncoderModel(config)
    finally:
        torch.random.set_rng_state(state)
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32})
    return model, tokenizer, image_processor
