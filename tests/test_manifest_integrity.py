"""Issue 13, section 1 (manifest side): every file hashed, a schema for the manifest, the manifest's own
integrity (``manifest_sha256=``), and a full hash of a base that medadapt saved itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from medadapt import BaseMismatchError, ContinualVLM, PromptConfig, StageFileError
from medadapt._io import sha256_file
from medadapt.tiny import tiny_backbone
from tests.conftest import core_lora_config, make_image_list, unchanged

IMAGES = make_image_list(2)

pytestmark = pytest.mark.usefixtures("core_single_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny CLIP (base saved in the folder) with a LoRA and a prompt stage."""
    torch.manual_seed(0)
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("cxr", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config())
    model.add_domain("derm", ["benign", "malignant"], "a skin photo of {}.", adapter=PromptConfig(), seed=1)
    root = tmp_path_factory.mktemp("integrity") / "save"
    model.save_pretrained(root)
    return model, root


def _copy(root, tmp_path, name="copy"):
    import shutil

    dest = tmp_path / name
    shutil.copytree(root, dest)
    return dest


def _edit(root, edit):
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_an_adapter_entry_with_no_files_listed_is_refused(saved, tmp_path):
    model, root = saved
    copy = _copy(root, tmp_path)
    weights = load_file(copy / "cxr" / "adapter_model.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, copy / "cxr" / "adapter_model.safetensors")
    _edit(copy, lambda m: m["adapters"]["cxr"].__setitem__("files", {}))  # tampered weights, hash check skipped before
    with pytest.raises(StageFileError, match=r"adapters\['cxr'\]\.files does not list .*adapter_config.json.*adapter_model.safetensors"):
        ContinualVLM.from_pretrained(copy)
    target = ContinualVLM(tiny_backbone("clip"))
    with unchanged(target), pytest.raises(StageFileError, match="does not list"):
        target.load_adapter(copy, name="cxr")
    copy = _copy(root, tmp_path, "copy2")
    _edit(copy, lambda m: m["adapters"]["derm"]["files"].pop("prompt_model.safetensors"))
    with unchanged(target), pytest.raises(StageFileError, match=r"adapters\['derm'\]\.files does not list \['prompt_model.safetensors'\]"):
        target.load_adapter(copy, name="derm")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.__setitem__("format_version", True), "format_version must be a positive integer, got True"),
        (lambda m: m.__setitem__("format_version", -1), "format_version must be a positive integer, got -1"),
        (lambda m: m.__setitem__("format_version", "1"), "format_version must be a positive integer"),
        (lambda m: m.__setitem__("adapters", list(m["adapters"].values())), "adapters must be object, got list"),
        (lambda m: m["adapters"].__setitem__("cxr", "cxr"), r"adapters\['cxr'\] must be object, got str"),
        (lambda m: m["adapters"]["cxr"].__setitem__("type", "pickle"), r"adapters\['cxr'\]\.type must be one of"),
        (lambda m: m["adapters"]["cxr"]["files"].__setitem__("adapter_config.json", "abc"), "must be a sha256"),
        (lambda m: m.__setitem__("domains", {"cxr": {}}), "domains must be list, got dict"),
        (lambda m: m["domains"][0].__setitem__("labels", "normal"), r"domains\[0\]\.labels must be list"),
        (lambda m: m["domains"][0].__setitem__("labels", [None, "x"]), r"domains\[0\]\.labels\[0\] must be string"),
        (lambda m: m.__setitem__("stage_order", ["cxr", "cxr", "derm"]), "stage_order lists a stage twice"),
        (lambda m: m.__setitem__("stage_order", ["cxr", "ghost"]), "stage 'ghost' in stage_order has no entry"),
        (lambda m: m.__setitem__("base", []), "base must be object, got list"),
        (lambda m: m["base"].__setitem__("files", {}), "base.files must list the saved base's config.json"),
        (lambda m: m.__setitem__("extras", [1]), "extras must be object"),
    ],
)
def test_malformed_manifests_end_in_a_clear_stage_file_error(saved, tmp_path, edit, message):
    _, root = saved
    copy = _copy(root, tmp_path)
    _edit(copy, edit)
    with pytest.raises(StageFileError, match=message):
        ContinualVLM.from_pretrained(copy)


def test_manifest_sha256_pins_labels_prompts_and_hashes(saved, tmp_path):
    model, root = saved
    from medadapt.saves.manifest import manifest_sha256

    copy = _copy(root, tmp_path)
    pinned = manifest_sha256(copy)
    restored = ContinualVLM.from_pretrained(copy, manifest_sha256=pinned)
    assert restored.domains["cxr"].labels == ["normal", "pneumonia"]
    # swap the label order: nothing in the adapter files changes, so no file hash can notice
    _edit(copy, lambda m: m["domains"][0].__setitem__("labels", ["pneumonia", "normal"]))
    assert ContinualVLM.from_pretrained(copy).domains["cxr"].labels == ["pneumonia", "normal"]  # unpinned: loads
    with pytest.raises(StageFileError, match="manifest .*changed since that hash was recorded"):
        ContinualVLM.from_pretrained(copy, manifest_sha256=pinned)
    target = ContinualVLM(tiny_backbone("clip"))
    with unchanged(target), pytest.raises(StageFileError, match="changed since that hash was recorded"):
        target.load_adapter(copy, name="cxr", manifest_sha256=pinned)


def test_a_saved_base_is_verified_in_full(saved, tmp_path):
    model, root = saved
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(manifest["base"]["weights_sha256"]) == 64
    copy = _copy(root, tmp_path)
    weights_file = next(n for n in manifest["base"]["files"] if n.endswith(".safetensors"))
    weights = load_file(copy / "base" / weights_file)
    # change the last value of the largest tensor: the sampled fingerprint reads only the first 64 values
    name = max(weights, key=lambda k: weights[k].numel())
    weights[name] = weights[name].clone()
    weights[name].view(-1)[-1] += 1.0
    save_file(weights, copy / "base" / weights_file, metadata={"format": "pt"})
    digest = sha256_file(copy / "base" / weights_file)
    _edit(copy, lambda m: m["base"]["files"].__setitem__(weights_file, digest))  # the attacker updates the file hash
    with pytest.raises(BaseMismatchError, match="a base tensor was changed"):
        ContinualVLM.from_pretrained(copy)
    # the unmodified save still loads and gives the same predictions
    restored = ContinualVLM.from_pretrained(root)
    assert torch.equal(restored.predict_proba(IMAGES, "cxr"), model.predict_proba(IMAGES, "cxr"))
