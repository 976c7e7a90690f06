"""Any transformers image encoder as the image tower of a VisionTextDualEncoderModel: ResNet,
ConvNeXt, EfficientNet (CNNs), a ViT, and a timm model wrapped as TimmWrapperModel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from peft import PeftModel
from transformers.modeling_outputs import BaseModelOutput

from medadapt import ContinualVLM, PromptConfig
from medadapt.errors import AdapterError, UnsupportedBackboneError
from medadapt.tiny import tiny_tower_dual_encoder

from . import tower_checks as checks

CNN_TOWERS = ["resnet", "convnext", "efficientnet"]
pytestmark = pytest.mark.usefixtures("core_single_thread")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def factory(tower: str):
    return lambda: ContinualVLM(tiny_tower_dual_encoder(tower, seed=0))


def _timm_factory():
    checks.vision_extra_import("timm")
    return factory("timm-resnet")


@pytest.mark.parametrize("tower", CNN_TOWERS)
def test_cnn_tower_default_lora_targets_last_stage_and_projection(tower):
    model = ContinualVLM(tiny_tower_dual_encoder(tower))
    targets = model.family.default_lora_targets(model.base_model)
    assert targets[:4] == ["query", "value", "q_proj", "v_proj"]  # text tower
    assert targets[-1] == "visual_projection"
    tower_targets = [t for t in targets if t.startswith("vision_model.")]
    assert len(tower_targets) == 4
    modules = dict(model.base_model.named_modules())
    assert all(isinstance(modules[t], (torch.nn.Conv2d, torch.nn.Linear)) for t in tower_targets)
    assert all(getattr(modules[t], "groups", 1) == 1 for t in tower_targets)  # no depthwise convolutions
    # the last layers of the tower, in module order
    dense = [n for n, m in modules.items() if n.startswith("vision_model.") and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and getattr(m, "groups", 1) == 1]
    assert tower_targets == dense[-4:]
    model.add_domain("d", ["a", "b"], "an image of {}.")  # the same targets once peft has wrapped them
    assert model.family.default_lora_targets(model.base_model) == targets


def test_vit_tower_keeps_attention_targets_and_vpt():
    model = ContinualVLM(tiny_tower_dual_encoder("vit"))
    assert model.family.default_lora_targets(model.base_model) == ["query", "value", "q_proj", "v_proj"]
    model.add_domain("d", ["a", "b"], "an image of {}.", adapter=PromptConfig(n_visual_tokens=2), seed=0)
    with torch.no_grad():
        model.prompt_adapters["d"].visual.normal_(0, 1.0)
    imgs = checks.images(3)
    assert not torch.allclose(model.embed_images(imgs, adapter="d"), model.embed_images(imgs), atol=1e-4)


@pytest.mark.parametrize("tower", CNN_TOWERS)
def test_cnn_tower_adapters_mixed_batches_and_round_trip(tower, tmp_path):
    imgs = checks.images(7)
    model = checks.add_domains(factory(tower)())
    checks.check_lora_reaches_image_tower(model, imgs)
    checks.check_mixed_equals_per_domain(model, imgs)
    checks.check_round_trip(model, tmp_path / "save", imgs)


@pytest.mark.parametrize("tower", ["resnet", "efficientnet"])
def test_cnn_tower_base_is_bit_identical(tower):
    checks.check_base_bit_identical(factory(tower), checks.images(4))


@pytest.mark.parametrize("tower", ["resnet", "convnext"])
def test_cnn_tower_routing_uses_feature_maps(tower):
    model = checks.add_domains(factory(tower)(), prompt=False)
    checks.check_routing(model, checks.images(8))


@pytest.mark.parametrize("tower", ["resnet", "convnext"])
def test_cnn_tower_stage_folder_loads_with_plain_peft(tower, tmp_path):
    from transformers import VisionTextDualEncoderModel

    imgs = checks.images(3)
    model = checks.add_domains(factory(tower)(), prompt=False)
    model.save_pretrained(tmp_path / "save")
    base = VisionTextDualEncoderModel.from_pretrained(tmp_path / "save" / "base")
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "save" / "xr")).eval()
    pv = model.preprocess(imgs)
    prompts = model.get_domain("xr").prompts()
    tokens = model.backbone.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        tower_out = peft_model.vision_model(pixel_values=pv)
        pooled = tower_out.pooler_output.flatten(1)  # ResNet: (N, C, 1, 1); ConvNeXt: (N, C)
        img = F.normalize(peft_model.visual_projection(pooled), dim=-1)
        txt = F.normalize(peft_model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output, dim=-1)
    torch.testing.assert_close(img, model.embed_images(imgs, adapter="xr"), atol=1e-6, rtol=0)
    torch.testing.assert_close(txt, model.embed_texts(prompts, adapter="xr"), atol=1e-6, rtol=0)
    assert not torch.allclose(img, model.embed_images(imgs), atol=1e-4)


def test_vpt_on_a_cnn_tower_is_refused_and_text_prompts_still_work():
    model = ContinualVLM(tiny_tower_dual_encoder("resnet"))
    with pytest.raises(AdapterError) as info:
        model.add_domain("d", ["a", "b"], "an image of {}.", adapter=PromptConfig(n_visual_tokens=4))
    message = str(info.value)
    assert "'vision-text-dual-encoder'" in message and "ResNetModel" in message and "ViT-like" in message
    assert "n_visual_tokens=0" in message
    assert "d" not in model.domains and model.adapter_names() == []
    model.add_domain("d", ["a", "b"], "an image of {}.", adapter=PromptConfig(), seed=0)
    assert model.predict_proba(checks.images(2), domain="d").shape == (2, 2)


def test_tower_without_pooled_output_or_map_is_a_clear_error(monkeypatch):
    model = ContinualVLM(tiny_tower_dual_encoder("resnet"))
    tower = model.base_model.vision_model
    monkeypatch.setattr(tower, "forward", lambda pixel_values, **kw: BaseModelOutput(last_hidden_state=torch.zeros(pixel_values.shape[0], 16)))
    with pytest.raises(UnsupportedBackboneError) as info:
        model.embed_images(checks.images(2))
    message = str(info.value)
    assert "pooled output" in message and "'vision-text-dual-encoder'" in message and "TimmWrapperModel" in message


# -- timm (second venv: needs torchvision) ---------------------------------------------------------
@pytest.mark.vision_extra
def test_timm_tower_goes_through_the_cnn_path(tmp_path):
    make = _timm_factory()
    imgs = checks.images(6)
    model = checks.add_domains(make())
    assert type(model.vision_tower).__name__ == "TimmWrapperModel"
    assert model.base_model.config.vision_config.hidden_size == model.vision_tower.timm_model.num_features
    targets = model.family.default_lora_targets(model.base_model)
    assert [t for t in targets if t.startswith("vision_model.timm_model.layer4.")] and targets[-1] == "visual_projection"
    with pytest.raises(AdapterError, match="TimmWrapperModel"):
        model.add_domain("v", ["a", "b"], "{}", adapter=PromptConfig(n_visual_tokens=2))
    checks.check_lora_reaches_image_tower(model, imgs)
    checks.check_mixed_equals_per_domain(model, imgs)
    checks.check_routing(model, imgs)
    checks.check_round_trip(model, tmp_path / "save", imgs)


@pytest.mark.vision_extra
def test_timm_tower_base_bit_identical_and_plain_peft(tmp_path):
    make = _timm_factory()
    imgs = checks.images(3)
    checks.check_base_bit_identical(make, imgs)
    from transformers import VisionTextDualEncoderModel

    model = checks.add_domains(make(), prompt=False)
    model.save_pretrained(tmp_path / "save")
    base = VisionTextDualEncoderModel.from_pretrained(tmp_path / "save" / "base")
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "save" / "us")).eval()
    with torch.no_grad():
        img = F.normalize(peft_model.get_image_features(pixel_values=model.preprocess(imgs)).pooler_output, dim=-1)
    torch.testing.assert_close(img, model.embed_images(imgs, adapter="us"), atol=1e-6, rtol=0)


# -- a recipe on real data with a CNN-tower dual encoder --------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_recipe_on_real_data_with_a_cnn_tower(tmp_path):
    from accelerate import Accelerator

    from medadapt.backbones import save_backbone
    from medadapt.training.config import load_config
    from medadapt.training.trainer import ContinualTrainer

    files = {"pneumonia": DATA / "pneumoniamnist.npz", "breast": DATA / "breastmnist.npz"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        pytest.skip(f"real data missing: {missing} (../shared/data)")
    base = tmp_path / "resnet-bert"
    save_backbone(tiny_tower_dual_encoder("resnet", seed=0), str(base))
    settings = {
        "model": str(base),
        "paradigm": "rehearsal",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "compare_naive": False,
        "adapter": {"type": "lora", "r": 4, "alpha": 8},  # the family's default targets: CNN tower + projection + text q/v
        "rehearsal": {"size": 32, "policy": "reservoir", "ratio": 0.5},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.003, "checkpoint_every": 100, "eval_batch_size": 64},
        "domains": [
            {"name": "pneumonia", "labels": ["normal", "pneumonia"], "prompt": "a pediatric chest x-ray showing {}.",
             "data": {"format": "npz", "path": str(files["pneumonia"]), "splits": {"train": "train", "test": "test"},
                      "max_samples": {"train": 96, "test": 64}}},
            {"name": "breast", "labels": ["malignant", "normal or benign"], "prompt": "a breast ultrasound image that is {}.",
             "data": {"format": "npz", "path": str(files["breast"]), "splits": {"train": "train", "test": "test"},
                      "max_samples": {"train": 96, "test": 64}}},
        ],
    }
    config = load_config(None, defaults=yaml.safe_load(yaml.safe_dump(settings)))
    results = ContinualTrainer(config, overwrite=True, accelerator=Accelerator(cpu=True), progress=False).run()
    matrix = results["accuracy_matrix"]
    assert len(matrix) == 2 and all(0.0 <= v <= 1.0 for row in matrix for v in row if v is not None)
    restored = ContinualVLM.from_pretrained(tmp_path / "run")
    assert type(restored.vision_tower).__name__ == "ResNetModel"
    assert "router" in restored.extras  # fitted after each stage on the CNN tower's feature maps
    routed = restored.predict_proba(checks.images(2, size=28), domain="auto")
    assert all(r.domain in ("pneumonia", "breast") for r in routed)
