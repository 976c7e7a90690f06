"""Merged export: a plain transformers checkpoint that loads with AutoModel... alone and computes what
medadapt computes for that domain (dual encoders and generative families); prompt adapters refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from medadapt import AdapterError
from tests.conftest import build_tiny_vlm
from tests.test_concurrent_serving import _llava

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _pil(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _plain_probs(folder, images, prompts) -> torch.Tensor:
    """Class probabilities from the exported folder with transformers only."""
    model = AutoModel.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(prompts, padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.softmax(-1)


def test_dual_encoder_domain_and_stack_equal_medadapt(tmp_path):
    model = build_tiny_vlm("clip")
    images = _pil(3)
    domain = model.get_domain("chest")
    before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    model.export_merged("chest", tmp_path / "chest")
    got = _plain_probs(tmp_path / "chest", images, domain.prompts())
    want = model.predict_proba(images, "chest")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(want, model.predict_proba(images, "chest", adapter="base"), atol=1e-3)  # LoRA matters
    assert all(torch.equal(v, before[k]) for k, v in model.base_model.state_dict().items())  # base untouched
    info = json.loads((tmp_path / "chest" / "medadapt_export.json").read_text())
    assert info["merged_adapters"] == ["chest"] and "AutoModel" in info["load_with"]

    model.export_merged(["chest", "generalist"], tmp_path / "stack")
    got = _plain_probs(tmp_path / "stack", images, domain.prompts())
    torch.testing.assert_close(got, model.predict_proba(images, "chest", adapter=["chest", "generalist"]), atol=1e-4, rtol=0)


def test_prompt_adapters_are_refused_with_the_reason(tmp_path):
    model = build_tiny_vlm("clip")
    for name in ("derm", "fundus"):
        with pytest.raises(AdapterError, match="prompt adapter.*not a change of weights"):
            model.export_merged(name, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_generative_export_equals_medadapt_for_that_domain(tmp_path):
    model = _llava()
    model.export_merged("cxr", tmp_path / "cxr")
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "cxr").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "cxr")
    images = _pil(2, seed=4)
    inputs = processor(text=["<image>\nIs there pneumonia?"] * 2, images=images, return_tensors="pt")
    with torch.no_grad():
        got = merged(**inputs).logits
        with model.adapters.active("cxr"):
            want = model.base_model(**inputs).logits
        with model.adapters.active(None):
            base = model.base_model(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(got, base, atol=1e-3)
