"""Merging domain LoRAs into a shared adapter (peft add_weighted_adapter) and stacking a domain
adapter with the shared one."""

from __future__ import annotations

import json

import pytest
import torch

from medadapt import AdapterError, ContinualVLM, DomainError
from medadapt.merging import MERGES_KEY
from tests.conftest import CORE_SHARED, core_lora_config, make_image_list

pytestmark = pytest.mark.usefixtures("core_single_thread")

IMAGES = make_image_list(4)


def probs(model: ContinualVLM, domain: str, adapter) -> torch.Tensor:
    return model.predict_proba(IMAGES, domain, adapter=adapter)


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "svd", "cat"])
def test_merge_builds_a_shared_lora(tiny_clip, method):
    name = tiny_clip.merge_adapters(["chest", CORE_SHARED], into="merged", method=method)
    assert name == "merged" and tiny_clip.shared["merged"] == "lora" and tiny_clip.stage_order[-1] == "merged"
    assert tiny_clip.extras[MERGES_KEY]["merged"]["from"] == ["chest", CORE_SHARED]
    assert tiny_clip.extras[MERGES_KEY]["merged"]["method"] == method
    merged = probs(tiny_clip, "chest", "merged")
    assert not torch.allclose(merged, probs(tiny_clip, "chest", "base"), atol=1e-4)
    assert all(not p.requires_grad for p in tiny_clip.adapter_parameters("merged"))


def test_linear_merge_of_one_adapter_reproduces_it(tiny_clip):
    tiny_clip.merge_adapters(["chest"], into="copy", method="linear", weights=[1.0])
    torch.testing.assert_close(probs(tiny_clip, "chest", "copy"), probs(tiny_clip, "chest", None), atol=1e-5, rtol=1e-4)


def test_cat_merge_equals_stacking_both_adapters(tiny_clip):
    """cat keeps every factor, so its delta is the sum of both deltas: what stacking runs."""
    tiny_clip.merge_adapters(["chest", CORE_SHARED], into="both", method="cat", weights=[1.0, 1.0])
    stacked = probs(tiny_clip, "chest", ("chest", CORE_SHARED))
    torch.testing.assert_close(probs(tiny_clip, "chest", "both"), stacked, atol=1e-5, rtol=1e-4)


def test_dare_merge_is_reproducible_from_its_seed(tiny_clip):
    tiny_clip.merge_adapters(["chest", "histo"], into="a", method="dare_ties", density=0.3, seed=3)
    tiny_clip.merge_adapters(["chest", "histo"], into="b", method="dare_ties", density=0.3, seed=3)
    for pa, pb in zip(tiny_clip.adapter_parameters("a"), tiny_clip.adapter_parameters("b")):
        assert torch.equal(pa, pb)


def test_merged_adapter_is_saved_and_loaded_as_a_normal_stage(tiny_clip, tmp_path):
    tiny_clip.merge_adapters(["chest", "histo", CORE_SHARED], into="merged", method="ties", density=0.5)
    expected = probs(tiny_clip, "chest", "merged")
    tiny_clip.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {"name": "merged", "adapter_type": "lora"} in manifest["shared"]
    assert (tmp_path / "merged" / "adapter_model.safetensors").is_file()
    restored = ContinualVLM.from_pretrained(tmp_path)
    assert restored.shared["merged"] == "lora" and restored.extras[MERGES_KEY]["merged"]["method"] == "ties"
    torch.testing.assert_close(probs(restored, "chest", "merged"), expected)
    other = ContinualVLM.from_pretrained(tmp_path)  # a single stage composes into another model too
    other.remove_adapter("merged")
    assert other.load_adapter(tmp_path, name="merged", as_name="team") == "team"
    torch.testing.assert_close(probs(other, "chest", "team"), expected)


def test_merging_different_ranks(tiny_clip):
    tiny_clip.add_domain("spine", ["normal", "fracture"], "a spine mri with {}.", adapter=core_lora_config(r=8))
    for method in ("linear", "ties", "dare_ties"):
        with pytest.raises(AdapterError, match=r"equal rank.*'chest': 4.*'spine': 8.*svd"):
            tiny_clip.merge_adapters(["chest", "spine"], into=f"m_{method}", method=method)
    assert "m_linear" not in tiny_clip.shared and "m_linear" not in tiny_clip.lora
    tiny_clip.merge_adapters(["chest", "spine"], into="m_svd", method="svd", svd_rank=6)
    assert tiny_clip.lora.config("m_svd").r == 6
    tiny_clip.merge_adapters(["chest", "spine"], into="m_cat", method="cat")
    assert tiny_clip.lora.config("m_cat").r == 12


def test_merge_errors(tiny_clip):
    before = list(tiny_clip.stage_order)
    with pytest.raises(AdapterError, match="only LoRA adapters can be merged.*'derm'.*prompt"):
        tiny_clip.merge_adapters(["chest", "derm"], method="linear")
    with pytest.raises(AdapterError, match="unknown adapter 'elbow'"):
        tiny_clip.merge_adapters(["chest", "elbow"])
    with pytest.raises(AdapterError, match="unknown merge method 'average'"):
        tiny_clip.merge_adapters(["chest", "histo"], method="average")
    with pytest.raises(AdapterError, match="weights must be 2"):
        tiny_clip.merge_adapters(["chest", "histo"], weights=[1.0])
    with pytest.raises(AdapterError, match="density must be in"):
        tiny_clip.merge_adapters(["chest", "histo"], method="ties", density=0.0)
    with pytest.raises(AdapterError, match="density applies to"):
        tiny_clip.merge_adapters(["chest", "histo"], method="linear", density=0.5)
    with pytest.raises(AdapterError, match="distinct"):
        tiny_clip.merge_adapters(["chest", "chest"])
    with pytest.raises(AdapterError, match="at least one"):
        tiny_clip.merge_adapters([])
    with pytest.raises(DomainError, match="already exists"):
        tiny_clip.merge_adapters(["chest", "histo"], into="chest")
    with pytest.raises(DomainError, match="reserved"):
        tiny_clip.merge_adapters(["chest", "histo"], into="base")
    assert tiny_clip.stage_order == before and MERGES_KEY not in tiny_clip.extras  # nothing half-added


def test_stacking_runs_a_domain_adapter_with_the_shared_one(tiny_clip):
    stacked = probs(tiny_clip, "chest", ("chest", CORE_SHARED))
    assert stacked.shape == (4, 3)
    torch.testing.assert_close(stacked.sum(-1), torch.ones(4))
    for alone in ("chest", CORE_SHARED):
        assert not torch.allclose(stacked, probs(tiny_clip, "chest", alone), atol=1e-4)
    pixels = tiny_clip.preprocess(IMAGES)  # a prompt adapter with a shared LoRA (logits: these probs saturate)
    with torch.no_grad():
        prompt_stack = tiny_clip(pixels, "derm", adapter=("derm", CORE_SHARED))
        assert not torch.allclose(prompt_stack, tiny_clip(pixels, "derm", adapter="derm"), atol=1e-4)
