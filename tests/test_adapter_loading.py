"""Loading LoRA stages: strict (a stage writes only its own adapter's tensors) and constant-time
(the N-th stage touches only its own layers, never peft's whole-model injection or state dict)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file

from medadapt import ContinualVLM, StageFileError
from medadapt._io import sha256_file
from medadapt.tiny import tiny_backbone
from tests.conftest import base_state_checksum, make_image_list

pytestmark = pytest.mark.usefixtures("core_single_thread")

WEIGHTS = "adapter_model.safetensors"
Q_A = "base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"


def _lora(r: int = 4, **kwargs) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kwargs)


def _stages(tmp_path, names=("cxr", "derm", "histo")):
    """A tiny CLIP with one non-identity LoRA domain per name, saved; returns (model, folder)."""
    model = ContinualVLM(tiny_backbone("clip", seed=0))
    torch.manual_seed(7)
    for name in names:
        model.add_domain(name, ["normal", "abnormal"], f"a {name} image of {{}}.", adapter=_lora())
    model.save_pretrained(tmp_path / "stage")
    return model, tmp_path / "stage"


def _tamper(root, name: str, edit) -> None:
    """Rewrite one stage's weights with ``edit`` and make its manifest hash agree (an attacker who can
    rewrite both, as in issue 13), so only the key/shape checks stand in the way."""
    path = root / name / WEIGHTS
    weights = load_file(str(path))
    edit(weights)
    save_file(weights, str(path), metadata={"format": "pt"})
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["adapters"][name]["files"][WEIGHTS] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))


def _snapshot(model: ContinualVLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.base_model.state_dict().items()}


TAMPERS = {
    # issue 13 section 1: a base weight, another domain's adapter tensor, the logit scale
    "base weight": (lambda w: w.__setitem__("base_model.model.visual_projection.weight", torch.zeros(32, 32)), "visual_projection.weight"),
    "other adapter": (lambda w: w.__setitem__(Q_A.replace("lora_A.weight", "lora_A.cxr.weight"), torch.zeros(4, 32)), r"lora_A\.cxr\.weight"),
    "logit_scale": (lambda w: w.__setitem__("base_model.model.logit_scale", torch.tensor(0.0)), "logit_scale"),
    "wrong rank": (lambda w: w.__setitem__(Q_A, torch.zeros(8, 32)), r"shape \[8, 32\] .* need \[4, 32\]"),
    "missing tensor": (lambda w: w.pop(Q_A), "miss 1 tensor"),
}


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_stage_cannot_write_what_it_does_not_own(tmp_path, kind):
    """Issue 13 section 1: the tampered stage is refused naming the key; the victim's base, its own
    adapter and its predictions are exactly as before, and no half-injected adapter is left."""
    _, root = _stages(tmp_path)
    edit, message = TAMPERS[kind]
    _tamper(root, "derm", edit)
    victim = ContinualVLM(tiny_backbone("clip", seed=0))
    victim.load_adapter(root, name="cxr")
    images = make_image_list(3)
    before_probs = victim.predict_proba(images, "cxr")
    before_state, before_base = _snapshot(victim), base_state_checksum(victim)
    with pytest.raises(StageFileError, match=message):
        victim.load_adapter(root, name="derm")
    assert base_state_checksum(victim) == before_base
    now = victim.base_model.state_dict()
    assert now.keys() == before_state.keys()  # no derm tensors anywhere
    for key, value in before_state.items():
        assert torch.equal(now[key], value), key
    assert "derm" not in victim.lora and victim.adapter_names() == ["cxr"] and "derm" not in victim.domains
    torch.testing.assert_close(victim.predict_proba(images, "cxr"), before_probs, atol=0, rtol=0)
    # from_pretrained of the whole tampered save is refused too
    with pytest.raises(StageFileError, match=message):
        ContinualVLM.from_pretrained(root)


def test_refused_first_stage_leaves_the_base_unwrapped(tmp_path):
    _, root = _stages(tmp_path)
    _tamper(root, "cxr", TAMPERS["base weight"][0])
    victim = ContinualVLM(tiny_backbone("clip", seed=0))
    before = _snapshot(victim)
    with pytest.raises(StageFileError, match="visual_projection.weight"):
        victim.load_adapter(root, name="cxr")
    assert victim.lora.peft_model is None  # checked before peft wrapped anything
    now = victim.base_model.state_dict()
    assert now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())


def test_refused_stage_with_a_non_plain_config_is_removed_again(tmp_path):
    """Configs whose tensors are only known after peft injects them (here DoRA) are checked after
    injection; a refused one is taken out again, leaving the model as it was."""
    model = ContinualVLM(tiny_backbone("clip", seed=0))
    torch.manual_seed(3)
    model.add_domain("cxr", ["a", "b"], "{}", adapter=_lora())
    model.add_domain("dora", ["a", "b"], "{}", adapter=_lora(use_dora=True))
    model.save_pretrained(tmp_path / "stage")
    _tamper(tmp_path / "stage", "dora", TAMPERS["logit_scale"][0])
    victim = ContinualVLM(tiny_backbone("clip", seed=0))
    victim.load_adapter(tmp_path / "stage", name="cxr")
    before, images = _snapshot(victim), make_image_list(2)
    probs = victim.predict_proba(images, "cxr")
    with pytest.raises(StageFileError, match="logit_scale"):
        victim.load_adapter(tmp_path / "stage", name="dora")
    now = victim.base_model.state_dict()
    assert now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())
    torch.testing.assert_close(victim.predict_proba(images, "cxr"), probs, atol=0, rtol=0)


def test_good_load_changes_nothing_else_and_restores_the_adapter(tmp_path):
    source, root = _stages(tmp_path)
    victim = ContinualVLM(tiny_backbone("clip", seed=0))
    victim.load_adapter(root, name="cxr")
    before = _snapshot(victim)
    victim.load_adapter(root, name="derm")
    now = victim.base_model.state_dict()
    for key, value in before.items():  # base and cxr untouched
        assert torch.equal(now[key], value), key
    images = make_image_list(3)
    for name in ("cxr", "derm"):
        torch.testing.assert_close(victim.predict_proba(images, name), source.predict_proba(images, name), atol=1e-6, rtol=0)
        saved = load_file(str(root / name / WEIGHTS))
        state = victim.lora.state_dict(name)
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


def test_nth_stage_touches_only_its_own_layers(tmp_path, monkeypatch):
    """After the first stage, loading does not go through peft's whole-model injection nor its
    state-dict loading: only ``update_layer`` on that stage's target layers."""
    source, root = _stages(tmp_path, names=("s0", "s1", "s2", "s3"))
    model = ContinualVLM(tiny_backbone("clip", seed=0))
    model.load_adapter(root, name="s0")

    def forbidden(*args, **kwargs):
        raise AssertionError("whole-model peft path used for a stage whose targets are already wrapped")

    monkeypatch.setattr(peft.PeftModel, "add_adapter", forbidden)
    monkeypatch.setattr(peft.tuners.tuners_utils.BaseTuner, "inject_adapter", forbidden)
    monkeypatch.setattr("medadapt.adapters.lora.set_peft_model_state_dict", forbidden)
    monkeypatch.setattr("medadapt.adapters.lora.get_peft_model_state_dict", forbidden)
    updated = []
    original = peft.tuners.lora.layer.LoraLayer.update_layer

    def counting(self, adapter_name, *args, **kwargs):
        updated.append((adapter_name, kwargs.get("target_name")))
        return original(self, adapter_name, *args, **kwargs)

    monkeypatch.setattr(peft.tuners.lora.layer.LoraLayer, "update_layer", counting)
    for name in ("s1", "s2", "s3"):
        model.load_adapter(root, name=name)
    targets = {p for p, layer in model.lora._layers().layers.items()}
    assert len(targets) == 8  # q/v of 2 layers in both towers
    assert sorted(updated) == sorted((n, p) for n in ("s1", "s2", "s3") for p in targets)
    monkeypatch.undo()
    images = make_image_list(3)
    for name in ("s0", "s1", "s2", "s3"):
        torch.testing.assert_close(model.predict_proba(images, name), source.predict_proba(images, name), atol=1e-6, rtol=0)
        assert all(not p.requires_grad for p in model.adapter_parameters(name))
    # the adapters still train, switch and save as peft adapters
    model.save_pretrained(tmp_path / "again")
    for name in ("s1", "s3"):
        peft_model = PeftModel.from_pretrained(tiny_backbone("clip", seed=0).model, str(tmp_path / "again" / name))
        loaded = {k.replace(f".{name}.", "."): v for k, v in peft.get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
        saved = load_file(str(root / name / WEIGHTS))
        assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_training_an_adapter_loaded_on_the_fast_path(tmp_path):
    _, root = _stages(tmp_path, names=("s0", "s1"))
    model = ContinualVLM(tiny_backbone("clip", seed=0))
    model.load_adapter(root, name="s0")
    model.load_adapter(root, name="s1")
    params = model.set_trainable(["s1"])
    assert params and all(p.requires_grad for p in params)
    assert all(not p.requires_grad for p in model.adapter_parameters("s0"))
    before = [p.detach().clone() for p in params]
    pixel_values = model.preprocess(make_image_list(4))
    loss = torch.nn.functional.cross_entropy(model(pixel_values, "s1"), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    torch.optim.SGD(params, lr=0.5).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))


def test_adapter_parameters_are_found_in_named_parameters_order():
    """``LoraBank.parameters`` reads the LoRA layers directly; it must list exactly what the model's
    ``named_parameters`` attributes to the adapter, in the same order (optimizer state depends on it)."""
    from peft.tuners.lora import LoraLayer

    def owned_by(name: str) -> set[int]:
        """ids of the parameters peft's LoRA layers hold for adapter ``name`` (peft's own bookkeeping)."""
        ids = set()
        for module in model.base_model.modules():
            if isinstance(module, LoraLayer):
                for attr in LoraLayer.adapter_layer_names:  # lora_A/B, lora_embedding_A/B, lora_magnitude_vector
                    holder = getattr(module, attr)
                    if name in holder:
                        entry = holder[name]
                        ids |= {id(p) for p in entry.parameters()} if isinstance(entry, torch.nn.Module) else {id(entry)}
        return ids

    model = ContinualVLM(tiny_backbone("clip", seed=0))
    model.add_domain("plain", ["a", "b"], "{}", adapter=_lora())
    model.add_domain("dora", ["a", "b"], "{}", adapter=_lora(use_dora=True))
    model.add_shared_adapter("embed", adapter=LoraConfig(r=2, target_modules=["token_embedding", "q_proj"]))
    model.add_shared_adapter("biased", adapter=_lora(lora_bias=True))
    for name in ("plain", "dora", "embed", "biased"):
        ids = owned_by(name)
        expected = [p for _, p in model.base_model.named_parameters() if id(p) in ids]
        got = model.lora.parameters(name)
        assert len(got) == len(expected) > 0 and all(a is b for a, b in zip(got, expected)), name
    assert model.lora.parameters("nope") == []
