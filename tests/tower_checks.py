"""Checks every image tower / family must pass (used by test_towers.py and test_open_clip.py).

Each takes a factory building a fresh, identical :class:`ContinualVLM` (same seed), so a check can
compare a model with adapters against the untouched base.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import pytest
import torch

from medadapt import ContinualVLM, PromptConfig
from medadapt.adapters.lora import default_lora_config

VISION_EXTRA_REASON = (
    "needs timm / open_clip, which import torchvision; torchvision's ops must match the installed torch "
    "(on this machine only torch 2.14.1 + torchvision 0.29.1 do). .ci/run runs these tests in its second "
    "virtualenv .venv-vision (pip install torch==2.14.1 && pip install -e '.[test,open_clip]')."
)


def vision_extra_import(name: str):
    """Import ``name`` (timm, open_clip) or skip with the reason; in CI's vision venv a failure is an error."""
    try:
        return __import__(name)
    except Exception as exc:  # torchvision raises RuntimeError ("operator torchvision::nms does not exist")
        if os.environ.get("MEDADAPT_REQUIRE_VISION_EXTRA") == "1":
            raise
        pytest.skip(f"{name} cannot be imported here ({type(exc).__name__}: {str(exc)[:120]}); {VISION_EXTRA_REASON}")


def images(n: int = 6, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def lora_on_default_targets(model: ContinualVLM):
    """The family's default LoRA targets with random (non-identity) B, so the adapter changes outputs."""
    config = default_lora_config(model.family.default_lora_targets(model.base_model), r=4)
    config.init_lora_weights = False
    return config


def add_domains(model: ContinualVLM, prompt: bool = True) -> ContinualVLM:
    torch.manual_seed(1234)  # peft draws the non-identity LoRA weights from the global RNG
    model.add_domain("xr", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=lora_on_default_targets(model))
    model.add_domain("us", ["benign", "malignant", "normal"], "a breast ultrasound of {}.", adapter=lora_on_default_targets(model))
    if prompt:
        model.add_domain("ct", ["head", "chest", "abdomen"], "a ct scan of the {}.", adapter=PromptConfig(), seed=2)
        with torch.no_grad():
            ctx = model.prompt_adapters["ct"].ctx
            ctx.add_(torch.randn(ctx.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    return model


def check_lora_reaches_image_tower(model: ContinualVLM, imgs) -> None:
    """The default LoRA has layers inside the image tower, and they change image embeddings."""
    tower = model.vision_tower
    wrapped = [n for n, m in tower.named_modules() if hasattr(m, "lora_A") and "xr" in getattr(m, "lora_A", {})]
    assert wrapped, "the default LoRA targets miss the image tower"
    base = model.embed_images(imgs, adapter="base")
    assert not torch.allclose(model.embed_images(imgs, adapter="xr"), base, atol=1e-4)


def check_mixed_equals_per_domain(model: ContinualVLM, imgs) -> None:
    names = list(model.domains)
    domains = [names[i % len(names)] for i in range(len(imgs))]
    mixed = model.predict_proba(imgs, domain=domains)
    for name in names:
        rows = [i for i, d in enumerate(domains) if d == name]
        alone = model.predict_proba([imgs[i] for i in rows], domain=name)
        for k, i in enumerate(rows):
            torch.testing.assert_close(mixed[i], alone[k], atol=1e-5, rtol=0)
    assert len({tuple(p.shape) for p in mixed}) > 1  # the domains really have different label sets


def check_base_bit_identical(factory: Callable[[], ContinualVLM], imgs) -> None:
    """Adding adapters and training one step changes no base weight and no base output, bit for bit."""
    reference = factory()
    before_state = {k: v.clone() for k, v in reference.base_model.state_dict().items()}
    before = reference.embed_images(imgs, adapter="base")
    model = add_domains(factory())
    model.set_trainable(["xr"])
    params = model.adapter_parameters("xr")
    optimizer = torch.optim.SGD(params, lr=0.5)
    model.train()
    pv = model.preprocess(imgs)
    loss = model(pv, "xr").logsumexp(-1).mean()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    optimizer.step()
    model.eval()
    assert torch.equal(model.embed_images(imgs, adapter="base"), before)
    state = {k.replace(".base_layer.", "."): v for k, v in model.base_model.state_dict().items() if "lora_" not in k}
    assert state.keys() == before_state.keys()
    assert all(torch.equal(state[k], before_state[k]) for k in state)  # BatchNorm running stats included


def check_round_trip(model: ContinualVLM, folder, imgs) -> ContinualVLM:
    model.save_pretrained(folder)
    restored = ContinualVLM.from_pretrained(folder)
    assert restored.adapter_names() == model.adapter_names()
    for name in model.domains:
        torch.testing.assert_close(restored.predict_proba(imgs, domain=name), model.predict_proba(imgs, domain=name), atol=1e-6, rtol=0)
    return restored


def check_routing(model: ContinualVLM, imgs) -> None:
    """The router fits on the frozen tower's features (CNN maps included) and routes every image."""
    dark = [(im // 4).astype(np.uint8) for im in imgs]
    router = model.fit_router({"xr": imgs, "us": dark}, threshold=0.99)
    assert router.domains == ["xr", "us"]
    routed = model.predict_proba(imgs[:2] + dark[:2], domain="auto")
    assert [r.domain for r in routed] == ["xr", "xr", "us", "us"]
