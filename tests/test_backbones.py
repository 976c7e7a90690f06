"""Backbones: CLIP, SigLIP and VisionTextDualEncoder, built in memory or loaded from a folder; frozen base."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPProcessor

from medadapt import ContinualVLM, PromptConfig, UnsupportedBackboneError
from medadapt.tiny import byte_level_tokenizer, tiny_backbone
from tests.conftest import (
    base_parameters,
    base_state_checksum,
    build_tiny_vlm,
    core_lora_config,
    frozen_probs,
    make_image_list,
    tiny_dual_encoder,
    train_adapter,
)

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _save_tiny(family: str, folder) -> None:
    backbone = tiny_backbone(family, seed=0)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    backbone.image_processor.save_pretrained(folder)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_built_in_memory_with_tokenizer_and_image_processor(family):
    backbone = tiny_backbone(family, seed=0)
    model = ContinualVLM(backbone.model, tokenizer=backbone.tokenizer, image_processor=backbone.image_processor)
    assert model.backbone.family.name == family
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")
    images = make_image_list(3)
    probs = model.predict_proba(images, "chest", adapter="base")
    expected = frozen_probs(family, model.preprocess(images), model.get_domain("chest").prompts())
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_clip_built_with_processor_argument():
    backbone = tiny_backbone("clip", seed=0)
    processor = CLIPProcessor(image_processor=backbone.image_processor, tokenizer=backbone.tokenizer)
    model = ContinualVLM(backbone.model, processor=processor)
    assert model.backbone.tokenizer is backbone.tokenizer
    assert model.backbone.image_processor is backbone.image_processor
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")
    assert model.predict_proba(make_image_list(2), "chest").shape == (2, 2)


def test_built_model_without_preprocessing_is_refused():
    backbone = tiny_backbone("clip", seed=0)
    with pytest.raises(UnsupportedBackboneError, match="missing tokenizer"):
        ContinualVLM(backbone.model, image_processor=backbone.image_processor)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_from_base_local_folder(tmp_path, family):
    _save_tiny(family, tmp_path / "base")
    model = ContinualVLM.from_base(str(tmp_path / "base"))
    assert model.backbone.source == str(tmp_path / "base")
    assert model.backbone.family.name == family
    assert model.backbone.fingerprints == tiny_backbone(family, seed=0).fingerprints
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")
    images = make_image_list(3)
    expected = frozen_probs(family, model.preprocess(images), model.get_domain("chest").prompts())
    torch.testing.assert_close(model.predict_proba(images, "chest", adapter="base"), expected, atol=1e-5, rtol=0)
    assert all(not p.requires_grad for p in base_parameters(model).values())


def test_vision_text_dual_encoder_in_memory_and_from_folder(tmp_path):
    base, tokenizer, image_processor = tiny_dual_encoder(seed=0)
    model = ContinualVLM(base, tokenizer=tokenizer, image_processor=image_processor)
    assert model.backbone.family.name == "vision-text-dual-encoder"
    checksum = base_state_checksum(model)
    torch.manual_seed(0)
    from peft import LoraConfig

    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.",
                     adapter=LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False))
    model.add_domain("derm", ["benign", "malignant", "other"], "a skin photo of {}.", adapter=PromptConfig(n_visual_tokens=2))
    model.add_domain("eye", ["healthy", "sick"], "a fundus image of {}.", adapter=PromptConfig())
    images = make_image_list(4)
    pv = model.preprocess(images)
    labels = torch.tensor([0, 1, 0, 1])
    losses = train_adapter(model, "derm", "derm", pv, torch.tensor([0, 1, 2, 1]), steps=6)
    assert losses[-1] < losses[0]
    losses = train_adapter(model, "chest", "chest", pv, labels, steps=6, lr=0.1)
    assert losses[-1] < losses[0]

    # untrained template prompt adapter == zero-shot base
    torch.testing.assert_close(
        model.predict_proba(images, "eye"), model.predict_proba(images, "eye", adapter="base"), atol=1e-6, rtol=0
    )
    domains = ["chest", "derm", "eye", "chest"]
    mixed = model.predict_proba(images, domains)
    for i, d in enumerate(domains):
        torch.testing.assert_close(mixed[i], model.predict_proba([images[i]], d)[0], atol=1e-5, rtol=0)
    assert not torch.allclose(model.predict_proba(images, "chest"), model.predict_proba(images, "chest", adapter="base"))
    assert base_state_checksum(model) == checksum

    model.save_pretrained(tmp_path / "save")
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    assert restored.backbone.family.name == "vision-text-dual-encoder"
    for d in ("chest", "derm", "eye"):
        assert torch.equal(restored.predict_proba(images, d), model.predict_proba(images, d))
    assert base_state_checksum(restored) == checksum

    # from a folder holding the model, its tokenizer and image processor
    fresh, _, _ = tiny_dual_encoder(seed=0)
    fresh.save_pretrained(tmp_path / "vtde")
    tokenizer.save_pretrained(tmp_path / "vtde")
    image_processor.save_pretrained(tmp_path / "vtde")
    loaded = ContinualVLM.from_base(str(tmp_path / "vtde"))
    assert loaded.backbone.family.name == "vision-text-dual-encoder"
    assert loaded.backbone.fingerprints == model.backbone.fingerprints
    loaded.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=PromptConfig())
    torch.testing.assert_close(
        loaded.predict_proba(images, "chest", adapter="base"), model.predict_proba(images, "chest", adapter="base"),
        atol=1e-6, rtol=0,
    )


def test_vision_text_dual_encoder_default_lora_targets():
    base, tokenizer, image_processor = tiny_dual_encoder(seed=0)
    model = ContinualVLM(base, tokenizer=tokenizer, image_processor=image_processor)
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")  # default LoRA
    assert model.adapter_type("chest") == "lora"
    names = [n for n, _ in model.base_model.named_parameters() if "lora_A" in n]
    assert any("vision_model" in n for n in names) and any("text_model" in n for n in names)


def test_unsupported_architecture_names_supported_families(tmp_path):
    from transformers import BertConfig, BertModel

    tokenizer = byte_level_tokenizer(64)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UnsupportedBackboneError) as err:
        ContinualVLM(bert, tokenizer=tokenizer, image_processor=tiny_backbone("clip").image_processor)
    message = str(err.value)
    for family in ("clip", "siglip", "vision-text-dual-encoder"):
        assert family in message
    assert "'bert'" in message

    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedBackboneError, match="Supported families: clip"):
        ContinualVLM.from_base(str(tmp_path / "bert"))

    with pytest.raises(UnsupportedBackboneError, match="Supported families"):
        ContinualVLM(torch.nn.Linear(2, 2), tokenizer=tokenizer, image_processor=None)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_base_frozen_and_bit_identical_through_lifecycle(tmp_path, family):
    model = build_tiny_vlm(family, with_domains=False)
    before = base_state_checksum(model)
    pointers = {n: p.data_ptr() for n, p in base_parameters(model).items()}  # before peft renames to base_layer
    reference = tiny_backbone(family, seed=0).model.state_dict()
    assert all(not p.requires_grad for p in model.base_model.parameters())

    torch.manual_seed(0)
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config())
    model.add_domain("derm", ["benign", "malignant"], "a skin photo of {}.", adapter=PromptConfig(n_visual_tokens=2))
    model.add_shared_adapter("generalist", core_lora_config())
    images = make_image_list(4)
    pv = model.preprocess(images)
    labels = torch.tensor([0, 1, 1, 0])
    for name, domain in (("chest", "chest"), ("derm", "derm"), ("generalist", "chest")):
        model.set_trainable([name])
        assert all(not p.requires_grad for p in base_parameters(model).values())
        train_adapter(model, name, domain, pv, labels, steps=3, lr=0.1)
    assert all(not p.requires_grad for p in base_parameters(model).values())
    model.predict_proba(images, "chest")
    model.predict_proba(images, ["chest", "derm", "chest", "derm"])
    model.embed_images(images, adapter="derm")
    model.embed_texts(["a"], adapter="generalist")
    model.save_pretrained(tmp_path / "save")
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    model.load_adapter(tmp_path / "save", name="chest", as_name="chest2")

    assert base_state_checksum(model) == before
    assert base_state_checksum(restored) == before
    assert {n.replace(".base_layer.", "."): p.data_ptr() for n, p in base_parameters(model).items()} == pointers
    for key, value in model.base_model.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, reference[key.replace(".base_layer.", ".")]), key
    for m in (model, restored):
        assert all(not p.requires_grad for p in base_parameters(m).values())
        assert not any(p.requires_grad for p in m.parameters())  # nothing left trainable after inference/load
