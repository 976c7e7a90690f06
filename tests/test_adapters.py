"""Domains and adapters: add_domain with LoRA / prompt / default adapters, shared adapters, one peft base."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

from medadapt import AdapterError, ContinualVLM, Domain, DomainError, PromptConfig
from medadapt.adapters.prompt import PromptAdapter
from tests.conftest import (
    CORE_SHARED,
    base_parameters,
    build_tiny_vlm,
    core_lora_config,
    make_image_list,
    perturb_prompt,
    train_adapter,
)

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _base_numel(model: ContinualVLM) -> int:
    return sum(p.numel() for p in base_parameters(model).values())


def test_add_domain_kinds_and_defaults(tiny_empty_clip):
    model = tiny_empty_clip
    d1 = model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")  # default adapter
    d2 = model.add_domain("derm", ("benign", "malignant"), "a skin photo of {}.", adapter=PromptConfig(n_visual_tokens=3))
    d3 = model.add_domain("histo", ["a", "b", "c"], adapter=core_lora_config(r=2))  # default prompt "{}"
    assert isinstance(d1, Domain) and d1.adapter_type == "lora" and d2.adapter_type == "prompt"
    assert d3.prompt == "{}" and d3.prompts() == ["a", "b", "c"]
    assert d1.prompts() == ["a chest x-ray showing normal.", "a chest x-ray showing pneumonia."]
    assert model.adapter_names() == ["chest", "derm", "histo"]
    assert list(model.domains) == ["chest", "derm", "histo"]
    default = model.lora.config("chest")
    assert default.r == 8 and set(default.target_modules) == {"q_proj", "v_proj"}
    assert model.lora.config("histo").r == 2
    assert model.adapter_type("derm") == "prompt" and model.prompt_adapters["derm"].visual.shape == (3, 32)
    assert model.predict_proba(make_image_list(2), "histo").shape == (2, 3)


def test_adapter_given_as_dict(tiny_empty_clip):
    model = tiny_empty_clip
    model.add_domain("chest", ["x", "y"], "scan of {}.", adapter={"r": 2, "target_modules": ["q_proj"]})
    model.add_domain("derm", ["x", "y"], "scan of {}.", adapter={"adapter_type": "prompt", "n_visual_tokens": 1})
    assert model.adapter_type("chest") == "lora" and model.lora.config("chest").r == 2
    assert model.adapter_type("derm") == "prompt"


def test_shared_adapter(tiny_clip):
    model = tiny_clip
    assert model.shared == {CORE_SHARED: "lora"}
    assert CORE_SHARED in model.adapter_names() and CORE_SHARED not in model.domains
    model.add_shared_adapter("shared-prompt", PromptConfig(n_visual_tokens=2), seed=0)
    assert model.shared["shared-prompt"] == "prompt"
    images = make_image_list(3)
    for name in (CORE_SHARED, "shared-prompt"):
        probs = model.predict_proba(images, "chest", adapter=name)
        assert probs.shape == (3, 3)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    # a shared adapter is not a domain
    with pytest.raises(DomainError, match="unknown domain"):
        model.predict_proba(images, CORE_SHARED)


def test_lora_one_named_adapter_per_domain_on_one_base(tiny_empty_clip):
    model = tiny_empty_clip
    base = model.base_model
    numel = _base_numel(model)
    n_tensors = len(base_parameters(model))
    torch.manual_seed(0)
    for name in ("chest", "histo", "derm"):
        model.add_domain(name, ["x", "y"], "an image of {}.", adapter=core_lora_config())
    model.add_shared_adapter("generalist", core_lora_config())
    assert model.lora.names() == ["chest", "histo", "derm", "generalist"]
    peft_model = model.lora.peft_model
    assert peft_model.base_model.model is base is model.base_model is model.backbone.model
    assert _base_numel(model) == numel and len(base_parameters(model)) == n_tensors  # no copies of the base
    all_ids = {id(p) for p in model.parameters()}
    assert len(all_ids) == len(list(model.parameters()))
    # each adapter owns its own lora_A / lora_B tensors inside the shared layers
    params = {n: {id(p) for p in model.adapter_parameters(n)} for n in model.lora.names()}
    assert all(len(v) == 2 * 2 * 2 * 2 for v in params.values())  # 2 towers x 2 layers x (q, v) x (A, B)
    names = list(params)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not params[a] & params[b]
    # lora parameters are small next to the base
    lora_numel = sum(p.numel() for p in model.adapter_parameters("chest"))
    assert lora_numel < numel / 10


def test_set_trainable_selects_exactly_one_adapter(tiny_clip):
    model = tiny_clip
    for name in ("chest", "derm", CORE_SHARED):
        params = model.set_trainable([name])
        assert {id(p) for p in params} == {id(p) for p in model.adapter_parameters(name)}
        assert all(p.requires_grad for p in params)
    assert model.set_trainable([]) == []


def test_lora_learns_and_changes_only_its_adapter(tiny_clip):
    model = tiny_clip
    images = make_image_list(6, seed=3)
    pv = model.preprocess(images)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    others = {n: [p.detach().clone() for p in model.adapter_parameters(n)] for n in ("derm", "fundus", "histo", CORE_SHARED)}
    losses = train_adapter(model, "chest", "chest", pv, labels, steps=8, lr=0.05)
    assert losses[-1] < losses[0] - 0.05
    for name, before in others.items():
        for p, q in zip(model.adapter_parameters(name), before):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_prompt_adapter_learns(family):
    """Text context and visual tokens both receive gradients and the loss drops in a few Adam steps."""
    model = build_tiny_vlm(family, with_domains=False)
    model.add_domain("derm", ["benign", "malignant", "other"], "a skin photo of {}.",
                     adapter=PromptConfig(n_visual_tokens=2), seed=0)
    images = make_image_list(4, seed=4)
    pv = model.preprocess(images)
    labels = torch.tensor([0, 1, 2, 1])
    prompt = model.prompt_adapters["derm"]
    ctx0 = prompt.ctx.detach().clone()
    vis0 = prompt.visual.detach().clone()
    losses = train_adapter(model, "derm", "derm", pv, labels, steps=6, lr=0.05)
    assert losses[-1] < losses[0] - 0.05, losses
    assert not torch.equal(prompt.ctx, ctx0)
    assert not torch.equal(prompt.visual, vis0)  # the visual tokens get gradients too


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_untrained_template_prompt_reproduces_zero_shot(family):
    model = build_tiny_vlm(family, with_domains=False)
    model.add_domain("chest", ["normal", "pneumonia", "effusion"], "a chest x-ray showing {}.", adapter=PromptConfig())
    images = make_image_list(4)
    prompt = model.prompt_adapters["chest"]
    assert prompt.config.ctx_text == "a chest x-ray showing"
    assert prompt.config.n_ctx_tokens == len("a chest x-ray showing")  # byte-level tokens
    with_prompt = model.predict_proba(images, "chest")
    base = model.predict_proba(images, "chest", adapter="base")
    torch.testing.assert_close(with_prompt, base, atol=1e-6, rtol=0)
    # ... and it really goes through the prompt adapter: perturbing it changes the output
    perturb_prompt(model, "chest")
    assert not torch.allclose(model.predict_proba(images, "chest"), base, atol=1e-4)


def test_prompt_config_initialisations(tiny_empty_clip):
    model = tiny_empty_clip
    model.add_domain("a1", ["x", "y"], "{} seen on ct", adapter=PromptConfig(n_ctx=3), seed=0)  # template w/o prefix
    model.add_domain("a2", ["x", "y"], "ct of {}", adapter=PromptConfig(ctx_init="random", n_ctx=5), seed=0)
    model.add_domain("a3", ["x", "y"], "ct of {}", adapter=PromptConfig(ctx_init="a photo of"))
    assert model.prompt_adapters["a1"].config.ctx_text == "X X X"
    assert model.prompt_adapters["a2"].config.ctx_text == "X X X X X"
    assert model.prompt_adapters["a3"].config.ctx_text == "a photo of"
    assert model.prompt_adapters["a1"].ctx.std() < 0.1
    emb = model.backbone.family.towers.text_token_embedding(model.base_model).weight
    ids = model.backbone.tokenizer("a photo of")["input_ids"][1:-1]
    assert torch.equal(model.prompt_adapters["a3"].ctx, emb[ids])
    # same seed -> same random context
    model.add_domain("a4", ["x", "y"], "ct of {}", adapter=PromptConfig(ctx_init="random", n_ctx=5), seed=0)
    assert torch.equal(model.prompt_adapters["a2"].ctx, model.prompt_adapters["a4"].ctx)
    with pytest.raises(AdapterError, match="n_ctx"):
        PromptConfig(n_ctx=0)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_prompt_adapter_saves_as_safetensors_and_json(tmp_path, family):
    model = build_tiny_vlm(family)
    model.save_pretrained(tmp_path / "save")
    folder = tmp_path / "save" / "derm"
    assert sorted(p.name for p in folder.iterdir()) == ["prompt_config.json", "prompt_model.safetensors"]
    config = json.loads((folder / "prompt_config.json").read_text())
    assert config["adapter_type"] == "prompt" and config["n_visual_tokens"] == 2
    assert config["ctx_text"] == "a skin photo of" and config["n_ctx_tokens"] == len("a skin photo of")
    weights = load_file(str(folder / "prompt_model.safetensors"))
    prompt = model.prompt_adapters["derm"]
    assert set(weights) == {"ctx", "visual"}
    assert torch.equal(weights["ctx"], prompt.ctx.detach()) and torch.equal(weights["visual"], prompt.visual.detach())
    assert set(load_file(str(tmp_path / "save" / "fundus" / "prompt_model.safetensors"))) == {"ctx"}
    # rebuilt from the two files alone
    rebuilt = PromptAdapter(PromptConfig.from_dict(config))
    rebuilt.load_state_dict(weights)
    assert torch.equal(rebuilt.ctx, prompt.ctx)

    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    images = make_image_list(3)
    for d in ("derm", "fundus"):
        assert torch.equal(restored.predict_proba(images, d), model.predict_proba(images, d))


def test_failed_lora_injection_leaves_model_usable(tiny_clip):
    model = tiny_clip
    images = make_image_list(2)
    before = model.predict_proba(images, "chest")
    with pytest.raises(AdapterError, match="could not inject"):
        model.add_domain("bad", ["x", "y"], "a {}", adapter=LoraConfig(r=2, target_modules=["no_such_module"]))
    assert "bad" not in model.domains and "bad" not in model.lora and "bad" not in model.adapter_names()
    assert torch.equal(model.predict_proba(images, "chest"), before)
    model.add_domain("bad", ["x", "y"], "a {}", adapter=core_lora_config())  # the name is free again
    assert model.predict_proba(images, "bad").shape == (2, 2)
