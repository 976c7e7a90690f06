"""The backbone-family seam: registries, import structure, and the label-embedding cache."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from medadapt import ContinualVLM
from medadapt.adapters import adapter_kind, adapter_kinds, kind_for_spec
from medadapt.errors import AdapterError, UnsupportedBackboneError
from medadapt.families import family_by_name, family_for_model_type, supported_families

from tools.arch_metrics import components, graph as import_graph

from .conftest import build_tiny_vlm, core_lora_config, perturb_prompt

PACKAGE = Path(__file__).resolve().parents[1] / "medadapt"


def _import_graph() -> dict[str, set[str]]:
    """Every medadapt module -> the medadapt modules it imports, type-only and package-internal imports
    included (the same graph ``tools/arch_metrics.py`` measures)."""
    return import_graph(typing=True)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    return sorted(c for c in components(graph) if len(c) > 1)


def test_no_import_cycles_between_modules():
    graph = _import_graph()
    assert not _circles(graph), _circles(graph)
    # the check sees real edges, type-only and package-internal ones included
    assert "medadapt.saves.io" in graph["medadapt.model"]
    assert "medadapt.families.open_clip" in graph["medadapt.families"]
    assert "medadapt.adapters.registry" in graph["medadapt.families.base"]  # under TYPE_CHECKING there
    circle = {"medadapt.a": {"medadapt.b"}, "medadapt.b": {"medadapt.c"}, "medadapt.c": {"medadapt.a"}, "medadapt.d": set()}
    assert _circles(circle) == [["medadapt.a", "medadapt.b", "medadapt.c"]]  # the check can fail
    package_internal = {"medadapt.x": {"medadapt.x.y"}, "medadapt.x.y": {"medadapt.z"}, "medadapt.z": {"medadapt.x"}}
    assert _circles(package_internal) == [["medadapt.x", "medadapt.x.y", "medadapt.z"]]


def test_no_private_names_called_across_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and any(
                a.name.startswith("_") and not a.name.startswith("__") for a in node.names
            ):
                offenders.append(f"{path.name}: from {node.module} import {[a.name for a in node.names]}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr not in ("_version", "_name_or_path")  # torch's in-place counter, transformers' config path
            ):
                offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not offenders, offenders


def test_family_registry_lists_supported_families():
    assert family_for_model_type("clip").name == "clip"
    assert family_by_name("siglip").pipeline_tag == "zero-shot-image-classification"
    with pytest.raises(UnsupportedBackboneError, match="Supported families: .*clip"):
        family_for_model_type("resnet")
    assert any(f.startswith("vision-text-dual-encoder") for f in supported_families())


def test_adapter_kind_registry():
    assert {"lora", "prompt"} <= set(adapter_kinds())
    assert kind_for_spec(core_lora_config()) is adapter_kind("lora")
    with pytest.raises(AdapterError, match="unknown adapter kind 'ia3'"):
        adapter_kind("ia3")


def test_family_and_vision_tower_are_public():
    model = build_tiny_vlm("clip", with_domains=False)
    assert model.family.name == "clip"
    assert model.vision_tower is model.base_model.vision_model
    assert model.family.default_lora_targets(model.base_model) == ["q_proj", "v_proj"]


# -- label-embedding cache ------------------------------------------------------------------------
def _fresh(model: ContinualVLM, domain: str, adapter: str | None) -> torch.Tensor:
    with torch.no_grad():
        return model.scorer.label_features(model.get_domain(domain), adapter, cache=False)


def _served(model: ContinualVLM, domain: str, adapter: str | None) -> torch.Tensor:
    with torch.no_grad():
        return model.scorer.label_features(model.get_domain(domain), adapter)


def _assert_fresh(model: ContinualVLM, domain: str, adapter: str | None) -> None:
    assert torch.equal(_served(model, domain, adapter), _fresh(model, domain, adapter)), f"stale labels for {domain}/{adapter}"


def test_label_cache_reuses_until_anything_changes(tmp_path):
    model = build_tiny_vlm("clip")
    scorer = model.scorer
    _assert_fresh(model, "chest", "chest")
    hits = scorer.label_cache_hits
    _served(model, "chest", "chest")
    assert scorer.label_cache_hits == hits + 1  # reused, not recomputed

    # a training step on the text side
    params = model.set_trainable(["chest"])
    optimizer = torch.optim.SGD(params, lr=0.5)
    logits = model(model.preprocess([torch.rand(3, 32, 32)]), "chest")
    logits.sum().backward()
    optimizer.step()
    model.set_trainable([])
    _assert_fresh(model, "chest", "chest")

    # a prompt adapter's context changed in place
    _served(model, "derm", "derm")
    perturb_prompt(model, "derm", seed=7)
    _assert_fresh(model, "derm", "derm")

    # weights loaded from elsewhere
    _served(model, "chest", "chest")
    state = {k: v + 0.25 for k, v in model.adapter_state_dict("chest").items()}
    model.load_adapter_weights("chest", state)
    _assert_fresh(model, "chest", "chest")

    # removed and re-added under the same name with other labels and weights
    _served(model, "histo", "histo")
    model.remove_domain("histo")
    torch.manual_seed(5)
    model.add_domain("histo", ["tumour", "normal"], "a slide of {}.", adapter=core_lora_config())
    _assert_fresh(model, "histo", "histo")

    # a merge creates a new adapter; the old entries of its sources stay valid
    model.merge_adapters(["chest", "generalist"], into="merged")
    _assert_fresh(model, "chest", "merged")
    _assert_fresh(model, "chest", "chest")

    # loading a saved stage over a removed one
    model.save_pretrained(tmp_path / "save")
    _served(model, "chest", "chest")
    model.remove_domain("chest")
    model.load_adapter(tmp_path / "save", name="chest")
    _assert_fresh(model, "chest", "chest")


def test_removing_the_active_adapter_leaves_every_other_frozen():
    model = build_tiny_vlm("clip")
    model.predict_proba([torch.rand(3, 32, 32)], domain="chest")  # chest becomes peft's active adapter
    model.remove_domain("chest")  # peft activates another adapter and flips its requires_grad on
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []


# -- frozen image features reused across epochs -----------------------------------------------------
def _text_only_run(cache_bytes: int | None, epochs: int = 2):
    from medadapt.training.objectives import Batch, build_objective

    model = build_tiny_vlm("clip", with_domains=False)
    torch.manual_seed(0)
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config_text())
    if cache_bytes is not None:
        model.scorer.image_cache_bytes = cache_bytes
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1] * 6)
    params = model.set_trainable(["chest"])
    optimizer = torch.optim.SGD(params, lr=0.5)
    objective = build_objective("classification")
    losses = []
    for _ in range(epochs):
        for start in (0, 6):
            rows = list(range(start, start + 6))
            batch = Batch(images[rows], labels[rows], ["chest"] * 6, keys=[("chest", i) for i in rows])
            loss, _ = objective(model, batch, "chest")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return model, losses


def core_lora_config_text():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=r".*text_model.*(q_proj|v_proj)", init_lora_weights=False)


def test_text_only_training_reuses_frozen_image_features_exactly():
    cached, cached_losses = _text_only_run(None)
    uncached, uncached_losses = _text_only_run(0)  # a cache of 0 bytes: every image is recomputed
    assert cached.scorer.image_cache_hits == 12  # the second epoch read every image from the cache
    assert uncached.scorer.image_cache_hits == 0
    assert cached_losses == pytest.approx(uncached_losses, abs=1e-6)
    assert uncached.scorer._image_bytes == 0


def test_image_cache_is_dropped_when_the_image_side_changes():
    model, _ = _text_only_run(None, epochs=1)
    scorer = model.scorer
    keys = [("chest", 0)]
    pixels = torch.rand(1, 3, 32, 32)
    first = scorer._cached_image_features(pixels, "chest", keys)
    assert torch.equal(scorer._cached_image_features(pixels * 0, "chest", keys), first)  # served by key
    state = {k: v + 0.1 for k, v in model.adapter_state_dict("chest").items()}
    model.load_adapter_weights("chest", state)  # new weights: the cached features are stale
    assert torch.equal(scorer._cached_image_features(pixels, "chest", keys), scorer.image_features(pixels, "chest"))


def test_run_configs_know_every_built_in_tiny_base():
    from medadapt.tiny import tiny_names
    from medadapt.training.config import BUILTIN_MODELS

    assert list(BUILTIN_MODELS) == tiny_names()
