"""open_clip models as a backbone family: a tiny open_clip CLIP from a custom model config (tiny
text tower), saved as a local checkpoint folder and loaded through ``ContinualVLM.from_base``.

These need the ``open_clip`` extra (torchvision): .ci/run runs them in its second venv."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from medadapt import ContinualVLM, PromptConfig
from medadapt.errors import AdapterError, UnsupportedBackboneError

from . import tower_checks as checks

pytestmark = [pytest.mark.vision_extra, pytest.mark.usefixtures("core_single_thread")]

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def open_clip():
    return checks.vision_extra_import("open_clip")


@pytest.fixture(scope="module")
def checkpoint(open_clip, tmp_path_factory):
    """A local open_clip checkpoint folder: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-open-clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _factory(checkpoint):
    return lambda: ContinualVLM.from_base(str(checkpoint))


def test_loads_with_its_own_preprocess_and_tokenizer(checkpoint):
    model = ContinualVLM.from_base(str(checkpoint))
    assert model.family.name == "open_clip" and model.family.kind == "dual-encoder"
    assert model.backbone.revision.startswith("sha256:") and len(model.backbone.revision) == 7 + 64
    pv = model.preprocess(checks.images(2))
    assert pv.shape == (2, 3, 32, 32)
    model.add_domain("zs", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter="none")
    probs = model.predict_proba(checks.images(3), domain="zs")
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(-1), torch.ones(3))
    same = ContinualVLM.from_base(f"local-dir:{checkpoint}")
    assert torch.equal(same.embed_images(checks.images(2)), model.embed_images(checks.images(2)))


def test_default_lora_targets_mlp_layers_not_multihead_attention(checkpoint):
    model = checks.add_domains(ContinualVLM.from_base(str(checkpoint)), prompt=False)
    wrapped = [n for n, m in model.base_model.named_modules() if hasattr(m, "lora_A") and "xr" in m.lora_A]
    assert wrapped and all(n.endswith(("mlp.c_fc", "mlp.c_proj")) for n in wrapped)
    assert any(n.startswith("visual.") for n in wrapped) and any(n.startswith("transformer.") for n in wrapped)


def test_adapters_mixed_batch_routing_and_round_trip(checkpoint, tmp_path):
    imgs = checks.images(7)
    model = checks.add_domains(ContinualVLM.from_base(str(checkpoint)))  # LoRA x2 + text prompt context
    checks.check_lora_reaches_image_tower(model, imgs)
    checks.check_mixed_equals_per_domain(model, imgs)
    checks.check_routing(model, imgs)
    restored = checks.check_round_trip(model, tmp_path / "save", imgs)
    manifest = json.loads((tmp_path / "save" / "manifest.json").read_text())
    base = manifest["base"]
    assert base["family"] == "open_clip" and base["source"] == str(checkpoint)
    assert base["revision"] == model.backbone.revision and base["open_clip"]["revision"].startswith("sha256:")
    assert restored.extras["router"] == model.extras["router"]


def test_base_bit_identical(checkpoint):
    checks.check_base_bit_identical(_factory(checkpoint), checks.images(4))


def test_in_memory_model_saves_its_base_and_reloads(open_clip, checkpoint, tmp_path):
    from medadapt.families import open_clip_backbone

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{checkpoint}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{checkpoint}")
    vlm = checks.add_domains(ContinualVLM(open_clip_backbone(model, TINY_CFG, tokenizer, preprocess)), prompt=False)
    vlm.save_pretrained(tmp_path / "save")
    assert {p.name for p in (tmp_path / "save" / "base").iterdir()} >= {"open_clip_config.json", "open_clip_model.safetensors"}
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    imgs = checks.images(3)
    torch.testing.assert_close(restored.predict_proba(imgs, domain="xr"), vlm.predict_proba(imgs, domain="xr"), atol=1e-6, rtol=0)


def test_stage_folder_loads_with_plain_peft(open_clip, checkpoint, tmp_path):
    imgs = checks.images(3)
    model = checks.add_domains(ContinualVLM.from_base(str(checkpoint)), prompt=False)
    model.save_pretrained(tmp_path / "save")
    raw, _, _ = open_clip.create_model_and_transforms(f"local-dir:{checkpoint}")  # a plain open_clip model
    peft_model = PeftModel.from_pretrained(raw, str(tmp_path / "save" / "us")).eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{checkpoint}")
    prompts = model.get_domain("us").prompts()
    with torch.no_grad():
        img = F.normalize(peft_model.encode_image(model.preprocess(imgs)), dim=-1)
        txt = F.normalize(peft_model.encode_text(tokenizer(prompts)), dim=-1)
    torch.testing.assert_close(img, model.embed_images(imgs, adapter="us"), atol=1e-6, rtol=0)
    torch.testing.assert_close(txt, model.embed_texts(prompts, adapter="us"), atol=1e-6, rtol=0)
    assert not torch.allclose(img, model.embed_images(imgs), atol=1e-4)


def test_vpt_refused_text_prompt_context_works(checkpoint):
    model = ContinualVLM.from_base(str(checkpoint))
    with pytest.raises(AdapterError, match="'open_clip'.*VPT is supported on"):
        model.add_domain("v", ["a", "b"], "an image of {}.", adapter=PromptConfig(n_visual_tokens=2))
    model.add_domain("p", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=PromptConfig(), seed=0)
    imgs = checks.images(2)
    base = model.predict_proba(imgs, domain="p", adapter="base")
    torch.testing.assert_close(model.predict_proba(imgs, domain="p"), base, atol=1e-5, rtol=0)  # template init = zero-shot
    with torch.no_grad():
        ctx = model.prompt_adapters["p"].ctx  # noise, not a constant: LayerNorm removes a constant shift
        ctx.add_(torch.randn(ctx.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(model.predict_proba(imgs, domain="p"), base, atol=1e-4)


def test_pickle_only_checkpoint_is_refused_with_the_conversion(checkpoint, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((checkpoint / "open_clip_config.json").read_text())
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(UnsupportedBackboneError) as info:
        ContinualVLM.from_base(str(folder))
    message = str(info.value)
    assert "only a pickle (open_clip_pytorch_model.bin)" in message and "never unpickles" in message
    assert "st.save_file" in message and "open_clip_model.safetensors" in message


def test_unknown_names_are_clear_errors(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnsupportedBackboneError, match="'hf-hub:nobody/no-such-open-clip' was not found on the Hub"):
        ContinualVLM.from_base("hf-hub:nobody/no-such-open-clip", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UnsupportedBackboneError, match="does not exist"):
        ContinualVLM.from_base(f"local-dir:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedBackboneError, match="no open_clip_config.json"):
        ContinualVLM.from_base(f"local-dir:{empty}")


def test_tokenizer_offsets_give_each_token_its_word(checkpoint):
    model = ContinualVLM.from_base(str(checkpoint))
    text = "a breast ultrasound image that is normal or benign."
    out = model.backbone.tokenizer([text], return_offsets_mapping=True)
    ids, offsets = out["input_ids"][0], out["offset_mapping"][0]
    n = int((ids != 0).sum())
    spans = {tuple(o) for o in offsets[1 : n - 1].tolist()}
    words = {text[s:e] for s, e in spans}
    assert words == set(text.split(" "))
    assert offsets[0].tolist() == [0, 0] and offsets[n - 1].tolist() == [0, 0]
