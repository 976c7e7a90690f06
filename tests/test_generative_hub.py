"""The generative family through the real huggingface_hub client and the loopback Hub."""

from __future__ import annotations

import numpy as np
import torch
from huggingface_hub import HfApi
from peft import LoraConfig

from medadapt import ContinualVLM
from medadapt.tiny import tiny_base
from medadapt.tiny_generative import tiny_generative
from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)

IMAGES = [np.random.RandomState(i).randint(0, 255, (36, 40, 3), dtype=np.uint8) for i in range(2)]


def _lora(model: ContinualVLM) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=model.family.default_lora_targets(model.base_model), init_lora_weights=False)


def test_push_and_pull_pinned_stages_of_a_generative_model(fake_hub):  # noqa: F811
    model = ContinualVLM(tiny_base("tiny-gemma3"))
    torch.manual_seed(3)
    model.add_domain("cxr", ["no", "yes"], "Is there pneumonia? {}", adapter=_lora(model))
    model.add_domain("open", task="vqa", adapter=_lora(model))
    info = model.push_to_hub("org/gen-stages")
    files = fake_hub.files("org/gen-stages")
    assert "base/chat_template.jinja" in files and "base/processor_config.json" in files  # processor + chat template travel
    assert "pipeline_tag: image-text-to-text" in files["README.md"].decode()
    pulled = ContinualVLM.from_pretrained("org/gen-stages", revision=info.oid)
    assert pulled.get_domain("open").task == "vqa"
    assert torch.equal(pulled.predict_proba(IMAGES, domain="cxr"), model.predict_proba(IMAGES, domain="cxr"))
    assert pulled.generate(IMAGES, questions="What is shown?", domain="open", max_new_tokens=5) == model.generate(
        IMAGES, questions="What is shown?", domain="open", max_new_tokens=5
    )


def test_from_base_loads_a_generative_checkpoint_by_hub_id(fake_hub, tmp_path):  # noqa: F811
    built, processor = tiny_generative("tiny-llava")
    built.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    HfApi().create_repo("org/tiny-llava")
    HfApi().upload_folder(repo_id="org/tiny-llava", folder_path=str(tmp_path / "base"))
    model = ContinualVLM.from_base("org/tiny-llava")  # AutoModelForImageTextToText + AutoProcessor, safetensors only
    assert model.family.name == "image-text-to-text" and model.backbone.source == "org/tiny-llava"
    assert model.scorer.render("q").startswith("USER: <image>")  # the chat template came with the processor
    reference = ContinualVLM(built, processor=processor)
    assert model.backbone.fingerprints == reference.backbone.fingerprints
    for m in (model, reference):
        torch.manual_seed(0)
        m.add_domain("cxr", ["no", "yes"], "Pneumonia? {}", adapter=_lora(m))
    assert torch.equal(model.predict_proba(IMAGES, domain="cxr"), reference.predict_proba(IMAGES, domain="cxr"))
