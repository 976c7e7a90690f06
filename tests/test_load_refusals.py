"""Issue 21: load-side silent failures and raw tracebacks become clear refusals (or correct behaviour).

Each test tampers with a copy of one small save (the tiny CLIP with one LoRA domain) the way the
hostile pass did, re-hashing the files in the manifest where the tampering would otherwise be
caught by the sha256 check, and expects a clear medadapt error naming the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medadapt import ContinualVLM
from medadapt._io import sha256_file
from medadapt.errors import AdapterError, CheckpointError, HubError, StageFileError
from medadapt.saves.manifest import manifest_sha256
from medadapt.locking import LOCK_NAME, describe_holder
from medadapt.tiny import tiny_backbone
from tests.conftest import core_lora_config

pytestmark = pytest.mark.usefixtures("core_single_thread")

DEEP = "[" * 100_000 + "]" * 100_000  # Python's json parser raises RecursionError on this


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    model = ContinualVLM(tiny_backbone("clip"))
    torch.manual_seed(0)
    model.add_domain("cxr", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config())
    folder = tmp_path_factory.mktemp("template") / "stages"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def save(tmp_path, template) -> Path:
    folder = tmp_path / "stages"
    shutil.copytree(template, folder)
    return folder


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _rehash(folder: Path, adapter: str = "cxr") -> None:
    """Record the current sha256 of the stage's files (tampering the hashes cannot catch)."""
    manifest = _manifest(folder)
    files = manifest["adapters"][adapter]["files"]
    for name in files:
        files[name] = sha256_file(folder / adapter / name)
    _write_manifest(folder, manifest)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "cxr" / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    _rehash(folder)


# -- modules_to_save --------------------------------------------------------------------------------
def test_modules_to_save_is_refused_when_added():
    model = ContinualVLM(tiny_backbone("clip"))
    with pytest.raises(AdapterError, match="modules_to_save is not supported.*visual_projection"):
        model.add_domain("cxr", ["a", "b"], "{}", adapter=core_lora_config(modules_to_save=["visual_projection"]))
    with pytest.raises(AdapterError, match="modules_to_save is not supported"):
        model.add_shared_adapter("shared", adapter=core_lora_config(modules_to_save=["visual_projection"]))
    assert model.stage_order == [] and model.adapter_names() == []
    model.add_domain("cxr", ["a", "b"], "{}", adapter=core_lora_config())  # the model is usable afterwards
    assert model.adapter_names() == ["cxr"]


def test_tampered_stage_with_modules_to_save_and_a_base_tensor_is_refused(save):
    weights_path = save / "cxr" / "adapter_model.safetensors"
    weights = load_file(str(weights_path))
    weights["base_model.model.visual_projection.modules_to_save.weight"] = torch.zeros(32, 32)
    weights["base_model.model.visual_projection.weight"] = torch.zeros(32, 32)
    save_file(weights, str(weights_path))
    _edit_config(save, modules_to_save=["visual_projection"])
    with pytest.raises(StageFileError, match="modules_to_save is not supported"):
        ContinualVLM.from_pretrained(save)


# -- tensors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_adapter_tensors_are_refused(save, bad):
    weights_path = save / "cxr" / "adapter_model.safetensors"
    weights = load_file(str(weights_path))
    key = sorted(weights)[0]
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = bad
    save_file(weights, str(weights_path))
    _rehash(save)
    with pytest.raises(StageFileError, match=rf"tensor '{key}' holds 1 NaN or infinite"):
        ContinualVLM.from_pretrained(save)


# -- deterministic saves ----------------------------------------------------------------------------
_SAVE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from peft import LoraConfig
    from medadapt import ContinualVLM
    from medadapt.saves.manifest import manifest_sha256
    from medadapt.tiny import tiny_backbone
    torch.set_num_threads(1)
    model = ContinualVLM(tiny_backbone("clip"))
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    model.add_domain("cxr", ["a", "b"], "{}", adapter=LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(sys.argv[1])
    print(manifest_sha256(sys.argv[1]))
    """
)


def test_saves_do_not_depend_on_pythonhashseed(tmp_path):
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
        folder = tmp_path / f"seed{seed}"
        runs.append((folder, subprocess.Popen([sys.executable, "-c", _SAVE_SCRIPT, str(folder)], env=env, stdout=subprocess.PIPE, text=True)))
    digests = []
    for folder, proc in runs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        digests.append(out.strip().splitlines()[-1])
        assert digests[-1] == manifest_sha256(folder)
    (a, _), (b, _) = runs
    assert (a / "cxr" / "adapter_config.json").read_bytes() == (b / "cxr" / "adapter_config.json").read_bytes()
    assert digests[0] == digests[1]


# -- deeply nested JSON -----------------------------------------------------------------------------
def test_deeply_nested_manifest_is_refused_and_saving_over_it_works(save):
    (save / "manifest.json").write_text('{"format": ' + DEEP + "}")
    with pytest.raises(StageFileError, match="nested deeper than 64 levels"):
        ContinualVLM.from_pretrained(save)
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("eye", ["a", "b"], "{}")
    model.save_pretrained(save)  # the unreadable old manifest is replaced
    assert list(ContinualVLM.from_pretrained(save).domains) == ["eye"]


def test_deeply_nested_adapter_config_is_refused(save):
    (save / "cxr" / "adapter_config.json").write_text('{"r": ' + DEEP + "}")
    _rehash(save)
    with pytest.raises(StageFileError, match="adapter_config.json.*nested deeper"):
        ContinualVLM.from_pretrained(save)


def test_deeply_nested_journal_is_refused_on_load_and_save(save):
    (save / ".trash-x").mkdir()
    (save / ".medadapt-journal.json").write_text(DEEP)
    with pytest.raises(StageFileError, match="nested deeper"):
        ContinualVLM.from_pretrained(save)
    model = ContinualVLM(tiny_backbone("clip"))
    with pytest.raises(StageFileError, match="nested deeper"):
        model.save_pretrained(save)
    assert (save / "cxr" / "adapter_model.safetensors").is_file()  # saved work intact


def test_deeply_nested_checkpoint_state_is_refused(tmp_path):
    from medadapt.training.checkpoint import STATE_NAME, read_state
    from medadapt.training.resume_check import verify_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / STATE_NAME).write_text('{"loop": ' + DEEP + "}")
    with pytest.raises(StageFileError, match="nested deeper"):
        read_state(folder)
    with pytest.raises(CheckpointError, match="nested deeper"):
        verify_checkpoint(folder, tmp_path)


# -- lock files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ['{"pid": "abc"}', '{"pid": ' + str(10**30) + "}", '{"pid": -3}', DEEP, "\xff\xfe"])
def test_nonsense_lock_file_does_not_block_saves(save, content):
    (save / LOCK_NAME).write_bytes(content.encode("utf-8", "surrogateescape") if content != "\xff\xfe" else b"\xff\xfe")
    assert describe_holder(save) == "unknown process"
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("eye", ["a", "b"], "{}")
    model.save_pretrained(save)
    assert list(ContinualVLM.from_pretrained(save).domains) == ["eye"]


# -- manifest and adapter config --------------------------------------------------------------------
def test_unknown_key_in_a_domain_entry_is_refused(save):
    manifest = _manifest(save)
    manifest["domains"][0]["colour"] = "red"
    _write_manifest(save, manifest)
    with pytest.raises(StageFileError, match=r"domains\[0\] has unknown key\(s\) \['colour'\]"):
        ContinualVLM.from_pretrained(save)


def test_vqa_domain_in_a_dual_encoder_save_is_refused_at_load(save):
    manifest = _manifest(save)
    manifest["domains"][0]["task"] = "vqa"
    _write_manifest(save, manifest)
    with pytest.raises(StageFileError, match="task 'vqa'.*'clip' family.*needs a generative base"):
        ContinualVLM.from_pretrained(save)
    model = ContinualVLM(tiny_backbone("clip"))
    with pytest.raises(StageFileError, match="task 'vqa'"):
        model.load_adapter(save, "cxr")
    assert model.stage_order == []


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"r": "four"}, "r must be a positive integer"),
        ({"r": 0}, "r must be a positive integer"),
        ({"lora_alpha": "x"}, "lora_alpha must be a number"),
        ({"lora_dropout": 2}, "lora_dropout must be a number"),
        ({"target_modules": [1, 2]}, "target_modules must be"),
        ({"rank_pattern": {"q_proj": "big"}}, "rank_pattern must map"),
    ],
)
def test_mistyped_adapter_config_is_refused(save, changes, problem):
    _edit_config(save, **changes)
    with pytest.raises(StageFileError, match=f"not a valid LoRA config: .*{problem}"):
        ContinualVLM.from_pretrained(save)


# -- bases, push, files -----------------------------------------------------------------------------
def test_local_base_with_only_pickled_weights_gets_a_clear_error(tmp_path):
    backbone = tiny_backbone("clip")
    folder = tmp_path / "base"
    backbone.model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(StageFileError, match=r"no \.safetensors weights.*pytorch_model\.bin.*safetensors only"):
        ContinualVLM.from_base(str(folder))


def test_push_to_an_invalid_repo_id_is_a_clear_error(save):
    model = ContinualVLM.from_pretrained(save)
    with pytest.raises(HubError, match="'bad repo id!' is not a valid Hub repo id"):
        model.push_to_hub("bad repo id!")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_saved_file_gets_the_same_permissions(tmp_path, umask):
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("cxr", ["a", "b"], "{}")
    previous = os.umask(umask)
    try:
        model.save_pretrained(tmp_path / "save")
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in (tmp_path / "save").rglob("*") if p.is_file()}
    assert "save/base/model.safetensors" in modes and "save/cxr/adapter_model.safetensors" in modes
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_loading_a_saved_base_prints_no_progress_bars(save, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    ContinualVLM.from_pretrained(save)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored for the caller's own transformers calls
