"""Stage files: manifest.json + one peft-compatible folder per adapter, round trips, composition."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from medadapt import AdapterError, ContinualVLM, DomainError, StageFileError
from medadapt._io import sha256_file
from medadapt.locking import LOCK_FILES
from medadapt.backbones import config_fingerprint, weights_fingerprint
from medadapt.tiny import tiny_backbone
from tests.conftest import (
    CORE_ADAPTERS,
    CORE_DOMAINS,
    CORE_SHARED,
    base_state_checksum,
    build_tiny_vlm,
    make_image_list,
    train_adapter,
    unchanged,
)

ADAPTERS = CORE_ADAPTERS

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _outputs(model: ContinualVLM, images) -> dict[str, torch.Tensor]:
    """Every output a save must restore exactly."""
    out = {}
    for d in CORE_DOMAINS:
        out[f"proba/{d}"] = model.predict_proba(images, d)
        out[f"shared/{d}"] = model.predict_proba(images, d, adapter=CORE_SHARED)
        out[f"base/{d}"] = model.predict_proba(images, d, adapter="base")
    domains = list(CORE_DOMAINS)
    for i, p in enumerate(model.predict_proba(images, [domains[i % len(domains)] for i in range(len(images))])):
        out[f"mixed/{i}"] = p
    for a in ("base", *ADAPTERS):
        out[f"img/{a}"] = model.embed_images(images, adapter=a)
        out[f"txt/{a}"] = model.embed_texts(["a chest x-ray", "skin"], adapter=a)
    return out


def test_manifest_content_and_layout(tiny_clip, tmp_path):
    model = tiny_clip
    model.save_pretrained(tmp_path / "save")
    root = tmp_path / "save"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "medadapt.stages" and manifest["format_version"] == 1
    base = manifest["base"]
    assert base["source"] == "medadapt/tiny-clip" and "revision" in base
    assert base["family"] == "clip" and base["model_type"] == "clip"
    assert base["config_fingerprint"] == config_fingerprint(tiny_backbone("clip").model)
    assert base["weights_fingerprint"] == weights_fingerprint(tiny_backbone("clip").model)
    assert base["saved_in"] == "base"  # built in memory: the base travels with the save
    assert [d["name"] for d in manifest["domains"]] == list(CORE_DOMAINS)
    for d in manifest["domains"]:
        labels, prompt = CORE_DOMAINS[d["name"]]
        assert d["labels"] == labels and d["prompt"] == prompt
        expected = {"derm": "prompt", "fundus": "prompt", "knee": "none"}.get(d["name"], "lora")
        assert d["adapter_type"] == expected
    assert manifest["shared"] == [{"name": CORE_SHARED, "adapter_type": "lora"}]
    assert manifest["stage_order"] == [*CORE_DOMAINS, CORE_SHARED]
    assert not (root / "knee").exists()  # a base-served domain has no folder
    assert set(manifest["adapters"]) == set(ADAPTERS)
    for name, entry in manifest["adapters"].items():
        folder = root / entry["path"]
        assert entry["path"] == name and folder.is_dir()
        expected = (
            {"prompt_config.json", "prompt_model.safetensors"}
            if entry["type"] == "prompt"
            else {"adapter_config.json", "adapter_model.safetensors"}
        )
        assert set(entry["files"]) == expected == {p.name for p in folder.iterdir()}
        for filename, digest in entry["files"].items():
            assert sha256_file(folder / filename) == digest
    for filename, digest in base["files"].items():
        assert sha256_file(root / "base" / filename) == digest
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.name not in LOCK_FILES]  # no staging / trash left


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_lora_folder_loads_with_plain_peft(tmp_path, family):
    model = build_tiny_vlm(family)
    model.save_pretrained(tmp_path / "save")
    images = make_image_list(3)
    pv = model.preprocess(images)
    for name in ("chest", CORE_SHARED):
        fresh = tiny_backbone(family, seed=0)
        peft_model = PeftModel.from_pretrained(fresh.model, str(tmp_path / "save" / name))
        peft_model.eval()
        prompts = model.get_domain("chest").prompts()
        tokens = fresh.tokenizer(prompts, padding="max_length" if family == "siglip" else True, max_length=64,
                                 truncation=True, return_tensors="pt")
        text_kwargs = {"input_ids": tokens["input_ids"]}
        if family == "clip":
            text_kwargs["attention_mask"] = tokens["attention_mask"]
        with torch.no_grad():
            img = F.normalize(peft_model.get_image_features(pixel_values=pv).pooler_output, dim=-1)
            txt = F.normalize(peft_model.get_text_features(**text_kwargs).pooler_output, dim=-1)
        torch.testing.assert_close(img, model.embed_images(images, adapter=name), atol=1e-6, rtol=0)
        torch.testing.assert_close(txt, model.embed_texts(prompts, adapter=name), atol=1e-6, rtol=0)
        # and it is not the base
        assert not torch.allclose(img, model.embed_images(images), atol=1e-4)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_from_pretrained_restores_identical_outputs(tmp_path, family):
    model = build_tiny_vlm(family)
    images = make_image_list(5)
    train_adapter(model, "chest", "chest", model.preprocess(images), torch.tensor([0, 1, 2, 0, 1]), steps=2)
    model.extras["routing"] = {"chest": 1}
    model.save_pretrained(tmp_path / "save")
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    assert restored.adapter_names() == model.adapter_names() == ADAPTERS
    assert restored.stage_order == model.stage_order and restored.get_domain("knee").adapter_type == "none"
    assert restored.shared == model.shared and list(restored.domains) == list(model.domains)
    assert restored.extras == {"routing": {"chest": 1}}
    assert base_state_checksum(restored) == base_state_checksum(model)
    expected, got = _outputs(model, images), _outputs(restored, images)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # the same again with the base given explicitly (a rebuilt tiny backbone)
    again = ContinualVLM.from_pretrained(tmp_path / "save", base=tiny_backbone(family, seed=0))
    got = _outputs(again, images)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_from_pretrained_of_a_save_whose_base_is_a_folder(tmp_path):
    backbone = tiny_backbone("clip", seed=0)
    for part in (backbone.model, backbone.tokenizer, backbone.image_processor):
        part.save_pretrained(tmp_path / "base")
    model = ContinualVLM.from_base(str(tmp_path / "base"))
    torch.manual_seed(0)
    from tests.conftest import core_lora_config

    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config())
    model.save_pretrained(tmp_path / "save")
    manifest = json.loads((tmp_path / "save" / "manifest.json").read_text())
    assert manifest["base"]["source"] == str(tmp_path / "base") and manifest["base"]["saved_in"] is None
    assert not (tmp_path / "save" / "base").exists()
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    images = make_image_list(2)
    assert torch.equal(restored.predict_proba(images, "chest"), model.predict_proba(images, "chest"))
    # a folder without manifest but with a model is loaded as a plain base
    plain = ContinualVLM.from_pretrained(tmp_path / "base")
    assert plain.adapter_names() == [] and plain.backbone.fingerprints == backbone.fingerprints


def test_load_adapter_composes_stages_from_other_saves(tmp_path):
    source = build_tiny_vlm("clip")
    source.save_pretrained(tmp_path / "a")
    images = make_image_list(3)
    target = build_tiny_vlm("clip", with_domains=False)
    assert target.load_adapter(tmp_path / "a", name="derm", as_name="skin") == "skin"
    assert target.load_adapter(tmp_path / "a" / "chest") == "chest"  # an adapter folder inside a save
    assert target.load_adapter(tmp_path / "a", name=CORE_SHARED) == CORE_SHARED
    assert target.load_adapter(tmp_path / "a", name="knee") == "knee"  # a base-served domain: labels only
    assert target.adapter_names() == ["skin", "chest", CORE_SHARED]
    assert list(target.domains) == ["skin", "chest", "knee"]
    assert torch.equal(target.predict_proba(images, "knee"), source.predict_proba(images, "knee"))
    assert target.shared == {CORE_SHARED: "lora"}
    assert target.get_domain("skin").labels == source.get_domain("derm").labels
    assert target.get_domain("skin").prompt == source.get_domain("derm").prompt
    assert torch.equal(target.predict_proba(images, "skin"), source.predict_proba(images, "derm"))
    assert torch.equal(target.predict_proba(images, "chest"), source.predict_proba(images, "chest"))
    assert torch.equal(target.predict_proba(images, "chest", adapter=CORE_SHARED),
                       source.predict_proba(images, "chest", adapter=CORE_SHARED))
    assert target.provenance["skin"]["adapter"] == "derm"
    assert target.provenance["skin"]["path"] == str((tmp_path / "a").resolve())

    # a second save with its own stage; compose both into one model and save that composition
    second = build_tiny_vlm("clip", with_domains=False)
    torch.manual_seed(5)
    from tests.conftest import core_lora_config

    second.add_domain("eye", ["healthy", "sick"], "a fundus image of {}.", adapter=core_lora_config())
    second.save_pretrained(tmp_path / "b")
    assert target.load_adapter(tmp_path / "b") == "eye"  # the only stage of that save
    target.save_pretrained(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["stage_order"] == ["skin", "chest", CORE_SHARED, "knee", "eye"]
    assert manifest["adapters"]["skin"]["source"]["adapter"] == "derm"
    composed = ContinualVLM.from_pretrained(tmp_path / "c")
    assert torch.equal(composed.predict_proba(images, "eye"), second.predict_proba(images, "eye"))
    assert torch.equal(composed.predict_proba(images, "skin"), source.predict_proba(images, "derm"))


def test_load_adapter_needs_a_name_when_a_save_holds_several(tmp_path, tiny_clip):
    tiny_clip.save_pretrained(tmp_path / "a")
    target = build_tiny_vlm("clip", with_domains=False)
    with unchanged(target), pytest.raises(AdapterError, match="say which one with `name=`"):
        target.load_adapter(tmp_path / "a")
    with unchanged(target), pytest.raises(StageFileError, match="lists no adapter 'nope'"):
        target.load_adapter(tmp_path / "a", name="nope")
    assert target.adapter_names() == []


def test_remove_domain(tiny_clip, tmp_path):
    model = tiny_clip
    images = make_image_list(2)
    fundus = model.predict_proba(images, "fundus")
    model.save_pretrained(tmp_path / "save")
    model.remove_domain("chest")
    model.remove_domain("derm")
    assert model.adapter_names() == ["fundus", "histo", CORE_SHARED]
    assert list(model.domains) == ["fundus", "histo", "knee"]
    assert "chest" not in model.lora and "derm" not in model.prompt_adapters
    with pytest.raises(DomainError, match="unknown domain 'chest'"):
        model.predict_proba(images, "chest")
    assert torch.equal(model.predict_proba(images, "fundus"), fundus)
    model.save_pretrained(tmp_path / "save")  # overwrite: the removed stages' folders go away
    assert not (tmp_path / "save" / "chest").exists() and not (tmp_path / "save" / "derm").exists()
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    assert restored.adapter_names() == ["fundus", "histo", CORE_SHARED]
    # removed names can be reused
    model.add_domain("chest", ["x", "y"], "{}")
    assert model.adapter_type("chest") == "lora"
    model.remove_domain(CORE_SHARED)
    assert model.shared == {}
    model.remove_domain("knee")
    assert "knee" not in model.domains and "knee" not in model.stage_order


def test_saving_twice_leaves_adapter_files_byte_identical(tiny_clip, tmp_path):
    model = tiny_clip
    root = tmp_path / "save"
    model.save_pretrained(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in LOCK_FILES)  # lock files: rewritten by design
    first = {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    manifest1 = (root / "manifest.json").read_bytes()
    model.save_pretrained(root)
    assert sorted(p for p in root.rglob("*") if p.is_file() and p.name not in LOCK_FILES) == files
    for p, (data, inode, mtime) in first.items():
        assert p.read_bytes() == data, p
        if p.name != "manifest.json":
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == (inode, mtime), p  # not rewritten at all
    assert (root / "manifest.json").read_bytes() == manifest1

    # change one adapter: only its folder changes
    with torch.no_grad():
        model.adapter_parameters("chest")[0].add_(0.01)
    model.save_pretrained(root)
    for p, (data, _, _) in first.items():
        changed = p.read_bytes() != data
        assert changed == (p.parent.name == "chest" and p.suffix == ".safetensors" or p.name == "manifest.json"), p


def test_save_and_load_make_no_network_calls(tiny_clip, tmp_path, monkeypatch):
    """A save of a tiny (Hub-id-looking) base must not look anything up on the Hub."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # so a lookup, if any, would really be attempted
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    tiny_clip.save_pretrained(tmp_path / "save")
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    build_tiny_vlm("clip", with_domains=False).load_adapter(tmp_path / "save", name="chest")
    restored.save_pretrained(tmp_path / "save2")
    assert attempts == []


def test_short_adapter_names_round_trip(tmp_path):
    """Names that are substrings of peft's 'lora_' prefix or of module names still stay apart."""
    from tests.conftest import core_lora_config

    model = build_tiny_vlm("clip", with_domains=False)
    torch.manual_seed(0)
    for name in ("a", "s", "v", "en"):
        model.add_domain(name, ["x", "y"], "an image of {}.", adapter=core_lora_config())
        assert len(model.adapter_parameters(name)) == 16  # 2 towers x 2 layers x (q, v) x (A, B)
    model.save_pretrained(tmp_path / "save")
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    images = make_image_list(2)
    outputs = [model.predict_proba(images, n) for n in ("a", "s", "v", "en")]
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)
    for name, expected in zip(("a", "s", "v", "en"), outputs):
        assert torch.equal(restored.predict_proba(images, name), expected), name
