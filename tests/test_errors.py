"""Errors: every failure raises a medadapt exception with a message naming the problem, and leaves
existing work (the model's domains, an earlier save) intact where medadapt promises it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medadapt.locking import LOCK_FILES
import torch

import medadapt.saves.io as hub_io
from medadapt import (
    AdapterError,
    BaseMismatchError,
    ContinualVLM,
    DomainError,
    ImageError,
    MedAdaptError,
    StageFileError,
)
from medadapt._io import sha256_file
from medadapt.tiny import tiny_backbone
from tests.conftest import CORE_ADAPTERS, CORE_DOMAINS, CORE_SHARED, build_tiny_vlm, make_image_list, unchanged

IMAGES = make_image_list(3)

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _snapshot(model: ContinualVLM) -> dict[str, torch.Tensor]:
    out = {d: model.predict_proba(IMAGES, d) for d in model.domains}
    out.update({f"base/{d}": model.predict_proba(IMAGES, d, adapter="base") for d in model.domains})
    return out


def _assert_unchanged(model: ContinualVLM, names: list[str], snapshot: dict[str, torch.Tensor]) -> None:
    assert model.adapter_names() == names
    now = _snapshot(model)
    assert now.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert torch.equal(now[key], value), key


def _rewrite_manifest(root, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _rehash(root, name: str, filename: str) -> None:
    """Make the manifest agree with a file we changed on purpose (to reach checks behind the sha256)."""
    digest = sha256_file(root / name / filename)
    _rewrite_manifest(root, lambda m: m["adapters"][name]["files"].__setitem__(filename, digest))


@pytest.fixture
def core_saved(tmp_path):
    """A tiny CLIP with the core domains, saved to tmp_path/'save'; returns (model, folder)."""
    model = build_tiny_vlm("clip")
    model.save_pretrained(tmp_path / "save")
    return model, tmp_path / "save"


# -- domains and adapters -------------------------------------------------------------------------
def test_unknown_domain_lists_known_ones(tiny_clip):
    with pytest.raises(DomainError, match=r"unknown domain 'spine'; known domains: \['chest', 'derm', 'fundus', 'histo', 'knee'\]"):
        tiny_clip.predict_proba(IMAGES, "spine")
    with pytest.raises(DomainError, match="unknown domain 'spine'"):
        tiny_clip.predict_proba(IMAGES, ["chest", "spine", "derm"])
    with pytest.raises(DomainError, match="unknown domain 'spine'"):
        tiny_clip.remove_domain("spine")
    with pytest.raises(DomainError, match="none \\(add one with add_domain\\)"):
        build_tiny_vlm("clip", with_domains=False).predict_proba(IMAGES, "spine")


def test_unknown_adapter(tiny_clip):
    with pytest.raises(AdapterError, match="unknown adapter 'nope'; use 'base'"):
        tiny_clip.predict_proba(IMAGES, "chest", adapter="nope")
    with pytest.raises(AdapterError, match="unknown adapter 'nope'"):
        tiny_clip.embed_images(IMAGES, adapter="nope")
    with pytest.raises(AdapterError, match="unknown adapter 'nope'"):
        tiny_clip.set_trainable(["nope"])
    with pytest.raises(AdapterError, match="at most one prompt adapter"):
        tiny_clip.predict_proba(IMAGES, "chest", adapter=["derm", "fundus"])
    with pytest.raises(AdapterError, match="stacked adapters are not supported in a mixed-domain batch"):
        tiny_clip.predict_proba(IMAGES, ["chest", "derm", "chest"], adapter=["chest", CORE_SHARED])


def test_duplicate_domain_name(tiny_clip):
    before = _snapshot(tiny_clip)
    with pytest.raises(DomainError, match="domain 'chest' already exists \\(as a domain\\)"):
        tiny_clip.add_domain("chest", ["a", "b"], "{}")
    with pytest.raises(DomainError, match="already exists \\(as a shared adapter\\)"):
        tiny_clip.add_domain(CORE_SHARED, ["a", "b"], "{}")
    with pytest.raises(DomainError, match="shared adapter 'derm' already exists"):
        tiny_clip.add_shared_adapter("derm")
    _assert_unchanged(tiny_clip, CORE_ADAPTERS, before)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(labels=[]), "labels must be a non-empty list"),
        (dict(labels="pneumonia"), "labels must be a non-empty list"),
        (dict(labels=["a", "b", "a"]), "duplicate labels \\['a'\\]"),
        (dict(prompt="a chest x-ray"), "must contain exactly one '\\{\\}'"),
        (dict(prompt="{} or {}"), "must contain exactly one '\\{\\}'"),
        (dict(prompt="{} of {organ}"), "is not a valid format string"),
        (dict(name="bad/name"), "may only use letters, digits"),
        (dict(name="base"), "is reserved"),
        (dict(name=""), "must be a non-empty string"),
    ],
)
def test_bad_domain_specs(tiny_clip, kwargs, fragment):
    spec = dict(name="spine", labels=["normal", "torn"], prompt="a spine mri showing {}.")
    spec.update(kwargs)
    before = tiny_clip.lora.names()
    with pytest.raises(DomainError, match=fragment):
        tiny_clip.add_domain(spec.pop("name"), **spec)
    assert tiny_clip.adapter_names() == CORE_ADAPTERS and list(tiny_clip.domains) == list(CORE_DOMAINS)
    assert tiny_clip.lora.names() == before  # no adapter was created for the refused domain


def test_bad_adapter_spec(tiny_clip):
    with pytest.raises(AdapterError, match="must be a peft LoraConfig or a medadapt PromptConfig or a medadapt HeadConfig, got str"):
        tiny_clip.add_domain("spine", ["a", "b"], "{}", adapter="lora")
    assert "spine" not in tiny_clip.domains


def test_mixed_batch_needs_one_domain_per_image(tiny_clip):
    with pytest.raises(DomainError, match="got 3 images but 2 domain names"):
        tiny_clip.predict_proba(IMAGES, ["chest", "derm"])


# -- images ---------------------------------------------------------------------------------------
def test_undecodable_images(tiny_clip, tmp_path):
    with pytest.raises(ImageError, match="image 0: cannot decode image bytes \\(12 bytes\\)"):
        tiny_clip.predict_proba(b"not an image", "chest")
    with pytest.raises(ImageError, match="image 1: file not found: .*missing.png"):
        tiny_clip.predict_proba([IMAGES[0], str(tmp_path / "missing.png")], "chest")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageError, match="cannot decode image file .*garbage.png"):
        tiny_clip.predict_proba(tmp_path / "garbage.png", "chest")
    with pytest.raises(ImageError, match="unsupported type dict"):
        tiny_clip.predict_proba([{"x": 1}], "chest")
    with pytest.raises(ImageError, match="no images given"):
        tiny_clip.predict_proba([], "chest")


@pytest.mark.parametrize(
    "array, fragment",
    [
        ([np.zeros((10, 12, 2))], "image 0: array of shape \\(10, 12, 2\\) is not an image"),  # (a bare one reads as 10 grey images)
        ([np.zeros((8, 8, 3)), np.zeros((3, 3, 3, 3))], "image 1: array of shape \\(3, 3, 3, 3\\)"),
        (np.zeros((2, 3, 4, 5, 6)), "is not an image"),
        (np.zeros((7,)), "is not an image"),
        (np.zeros((0, 12, 3)), "empty side"),
        (np.full((8, 8, 3), np.nan), "NaN or infinite"),
        (torch.zeros(2, 5, 5, 2), "is not an image"),  # a batch of 2-channel images
    ],
)
def test_wrong_array_shapes(tiny_clip, array, fragment):
    with pytest.raises(ImageError, match=fragment):
        tiny_clip.predict_proba(array, "chest")


# -- backbones and saves ----------------------------------------------------------------------------
def test_save_for_another_base(core_saved):
    model, root = core_saved
    with pytest.raises(BaseMismatchError, match="weights fingerprint .* the adapters were built for another base model"):
        ContinualVLM.from_pretrained(root, base=tiny_backbone("clip", seed=1))
    with pytest.raises(BaseMismatchError, match="config fingerprint"):
        ContinualVLM.from_pretrained(root, base=tiny_backbone("siglip", seed=0))
    other = build_tiny_vlm("clip", seed=1)
    before = _snapshot(other)
    with unchanged(other), pytest.raises(BaseMismatchError, match="another base model"):
        other.load_adapter(root, name="chest", as_name="chest2")
    siglip = build_tiny_vlm("siglip")
    with unchanged(siglip), pytest.raises(BaseMismatchError, match="another base model"):
        siglip.load_adapter(root / "derm")
    _assert_unchanged(other, CORE_ADAPTERS, before)
    assert isinstance(BaseMismatchError("x"), StageFileError)


def test_missing_adapter_file(core_saved):
    model, root = core_saved
    (root / "chest" / "adapter_model.safetensors").unlink()
    with pytest.raises(StageFileError, match="file chest/adapter_model.safetensors is missing"):
        ContinualVLM.from_pretrained(root)
    target = build_tiny_vlm("clip", with_domains=False)
    with unchanged(target), pytest.raises(StageFileError, match="is missing"):
        target.load_adapter(root, name="chest")
    assert target.adapter_names() == []


def test_corrupted_adapter_file(core_saved):
    model, root = core_saved
    weights = root / "derm" / "prompt_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(StageFileError, match="sha256 mismatch for derm/prompt_model.safetensors"):
        ContinualVLM.from_pretrained(root)
    _rehash(root, "derm", "prompt_model.safetensors")  # behind the hash, safetensors itself refuses it
    with pytest.raises(StageFileError, match="adapter 'derm' .*cannot read prompt_model.safetensors"):
        ContinualVLM.from_pretrained(root)
    lora = root / "chest" / "adapter_model.safetensors"
    lora.write_bytes(lora.read_bytes()[:100])
    _rehash(root, "chest", "adapter_model.safetensors")
    target = build_tiny_vlm("clip", with_domains=False)
    with unchanged(target), pytest.raises(StageFileError, match="cannot read adapter_model.safetensors"):
        target.load_adapter(root, name="chest")


def test_sha256_mismatch_after_editing_json(core_saved):
    model, root = core_saved
    config = root / "chest" / "adapter_config.json"
    data = bytearray(config.read_bytes())
    index = data.index(b'"r": 4') + len(b'"r": ')
    data[index : index + 1] = b"5"  # one byte
    config.write_bytes(bytes(data))
    with pytest.raises(StageFileError, match="sha256 mismatch for chest/adapter_config.json .*modified or corrupted"):
        ContinualVLM.from_pretrained(root)
    # behind the hash the weights do not fit the edited rank: refused, and the model keeps working
    _rehash(root, "chest", "adapter_config.json")
    target = build_tiny_vlm("clip")
    before = _snapshot(target)
    with unchanged(target), pytest.raises(StageFileError, match="weights do not fit this base model"):
        target.load_adapter(root, name="chest", as_name="chest2")
    assert "chest2" not in target.lora
    _assert_unchanged(target, CORE_ADAPTERS, before)


@pytest.mark.parametrize("path", ["../x", "/etc", "a/../../x", "..", "C:\\x"])
def test_manifest_path_traversal_refused(core_saved, path):
    model, root = core_saved
    _rewrite_manifest(root, lambda m: m["adapters"]["chest"].__setitem__("path", path))
    with pytest.raises(StageFileError, match="is not a plain relative path inside the save"):
        ContinualVLM.from_pretrained(root)
    target = build_tiny_vlm("clip", with_domains=False)
    with unchanged(target), pytest.raises(StageFileError, match="not a plain relative path"):
        target.load_adapter(root, name="derm")


def test_manifest_base_folder_traversal_refused(core_saved):
    model, root = core_saved
    _rewrite_manifest(root, lambda m: m["base"].__setitem__("saved_in", "../elsewhere"))
    with pytest.raises(StageFileError, match="base model: path '../elsewhere' .*not a plain relative path"):
        ContinualVLM.from_pretrained(root)


@pytest.mark.parametrize("filename, fragment", [("adapter_model.bin", "never loads pickled files"),
                                                ("../../evil.json", "must be a plain name")])
def test_manifest_file_names_refused(core_saved, filename, fragment):
    model, root = core_saved
    _rewrite_manifest(root, lambda m: m["adapters"]["chest"]["files"].__setitem__(filename, "0" * 64))
    with pytest.raises(StageFileError, match=fragment):
        ContinualVLM.from_pretrained(root)


def test_not_a_save(tmp_path, core_saved):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageFileError, match="not a complete medadapt save"):
        ContinualVLM.from_pretrained(tmp_path / "empty")
    model, root = core_saved
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(StageFileError, match="is not valid JSON"):
        ContinualVLM.from_pretrained(root)
    (root / "manifest.json").write_text(json.dumps({"format": "medadapt.stages", "format_version": 99}))
    with pytest.raises(StageFileError, match="format_version 99; this medadapt reads up to 1"):
        ContinualVLM.from_pretrained(root)


def test_failed_load_adapter_keeps_existing_domains(core_saved):
    model, root = core_saved
    target = build_tiny_vlm("clip")
    names = target.adapter_names()
    before = _snapshot(target)
    with unchanged(target), pytest.raises(DomainError, match="domain 'chest' already exists"):
        target.load_adapter(root, name="chest")
    with unchanged(target), pytest.raises(DomainError, match="is reserved"):
        target.load_adapter(root, name="chest", as_name="base")
    with unchanged(target), pytest.raises(StageFileError, match="lists no adapter 'spine'"):
        target.load_adapter(root, name="spine")
    (root / "fundus" / "prompt_config.json").write_text("{}")
    with unchanged(target), pytest.raises(StageFileError, match="sha256 mismatch"):
        target.load_adapter(root, name="fundus", as_name="fundus2")
    _assert_unchanged(target, names, before)
    # ... and the model can still load a good stage afterwards
    assert target.load_adapter(root, name="derm", as_name="derm2") == "derm2"
    assert torch.equal(target.predict_proba(IMAGES, "derm2"), model.predict_proba(IMAGES, "derm"))


# -- interrupted and refused saves ---------------------------------------------------------------
def _fail_on_call(monkeypatch, attribute: str, n: int) -> None:
    """Make ``medadapt.saves.io.<attribute>`` raise on its n-th call (1-based)."""
    original = getattr(hub_io, attribute)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash mid-save")
        return original(*args, **kwargs)

    monkeypatch.setattr(hub_io, attribute, wrapper)


def _change_adapters(model: ContinualVLM) -> None:
    with torch.no_grad():
        for name in model.adapter_names():
            model.adapter_parameters(name)[0].add_(0.05)


def test_crash_while_writing_adapters_keeps_the_old_save(core_saved, monkeypatch):
    """New folders are staged first: a crash there leaves the previous save loadable and unchanged."""
    model, root = core_saved
    expected = _snapshot(model)
    _change_adapters(model)
    _fail_on_call(monkeypatch, "_write_adapter", 3)  # halfway through the five adapters
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.save_pretrained(root)
    restored = ContinualVLM.from_pretrained(root)
    for key, value in expected.items():
        assert torch.equal(_snapshot(restored)[key], value), key
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.name not in LOCK_FILES]  # staging removed


def test_crash_while_swapping_folders_keeps_the_previous_save(core_saved, monkeypatch):
    """A crash halfway through swapping folders in is rolled back: the previous save loads unchanged
    (issue 13: the old design removed the manifest first and lost the previous save)."""
    from medadapt.saves import transaction

    model, root = core_saved
    expected = _snapshot(model)
    _change_adapters(model)
    calls = []

    def crash(step):
        calls.append(step)
        if step.startswith("move-in:") and sum(s.startswith("move-in:") for s in calls) == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(transaction, "FAULT_HOOK", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.save_pretrained(root)
    monkeypatch.setattr(transaction, "FAULT_HOOK", None)
    restored = ContinualVLM.from_pretrained(root)
    for key, value in expected.items():
        assert torch.equal(_snapshot(restored)[key], value), key
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.name not in LOCK_FILES]
    model.save_pretrained(root)  # saving again works and gives the new model
    restored = ContinualVLM.from_pretrained(root)
    assert torch.equal(restored.predict_proba(IMAGES, "chest"), model.predict_proba(IMAGES, "chest"))


def test_crash_during_a_first_save_leaves_no_manifest(tmp_path, monkeypatch):
    model = build_tiny_vlm("clip")
    _fail_on_call(monkeypatch, "_write_adapter", 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.save_pretrained(tmp_path / "fresh")
    assert [p.name for p in (tmp_path / "fresh").iterdir() if p.name not in LOCK_FILES] == []
    with pytest.raises(StageFileError, match="not a complete medadapt save"):
        ContinualVLM.from_pretrained(tmp_path / "fresh")
    monkeypatch.undo()
    from medadapt.saves import transaction

    def crash(step):
        if step == "manifest":  # the manifest is written last
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(transaction, "FAULT_HOOK", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.save_pretrained(tmp_path / "fresh2")
    assert not (tmp_path / "fresh2" / "manifest.json").exists()
    with pytest.raises(StageFileError, match="not a complete medadapt save"):
        ContinualVLM.from_pretrained(tmp_path / "fresh2")


def test_unserialisable_manifest_keeps_the_old_save(core_saved):
    model, root = core_saved
    expected = _snapshot(model)
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    _change_adapters(model)
    model.extras["routing"] = torch.zeros(2)  # not JSON
    with pytest.raises(StageFileError, match="manifest is not JSON-serialisable"):
        model.save_pretrained(root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files
    restored = ContinualVLM.from_pretrained(root)
    for key, value in expected.items():
        assert torch.equal(_snapshot(restored)[key], value), key


def test_old_manifest_with_dangerous_paths_does_not_move_folders(core_saved):
    model, root = core_saved
    (root / "keep").mkdir()
    (root / "keep" / "x.txt").write_text("x")
    _rewrite_manifest(root, lambda m: m["adapters"].update({"evil": {"path": ".."}, "evil2": {"path": "."}}))
    model.save_pretrained(root)
    assert (root / "keep" / "x.txt").read_text() == "x" and root.parent.is_dir()
    assert set(json.loads((root / "manifest.json").read_text())["adapters"]) == set(CORE_ADAPTERS)


def test_every_error_is_a_medadapt_error():
    for cls in (AdapterError, BaseMismatchError, DomainError, ImageError, StageFileError):
        assert issubclass(cls, MedAdaptError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("name", ["encoder", "0", "q_proj", "weight", "lora_A", "base_layer"])
def test_lora_names_that_clash_with_parameter_names(tiny_clip, name):
    """peft finds an adapter by its name inside parameter names: such names would mix adapters up."""
    before = _snapshot(tiny_clip)
    with pytest.raises(AdapterError, match=f"adapter name '{name}' clashes with the parameter names"):
        tiny_clip.add_domain(name, ["a", "b"], "{}", adapter=None)
    assert name not in tiny_clip.domains and name not in tiny_clip.lora
    _assert_unchanged(tiny_clip, CORE_ADAPTERS, before)


def test_missing_save_folder(tmp_path):
    with pytest.raises(StageFileError, match="is neither a local folder nor a valid Hub repo id"):
        ContinualVLM.from_pretrained(str(tmp_path / "does" / "not" / "exist"))
