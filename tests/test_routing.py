"""Automatic routing: predict_proba(domain="auto") picks each image's domain from frozen-base features,
flags images that match no domain as unrouted (served by the shared adapter), and the router is
saved with the model. Synthetic domains for the mechanics; the real datasets for the >= 0.95 bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medadapt import ContinualVLM, MedAdaptError
from medadapt.data import default_synthetic_domains, load_domain
from medadapt.routing import ROUTER_KEY, DomainRouter, RoutedPrediction, RoutingError
from medadapt.tiny import tiny_backbone
from tests.conftest import core_lora_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED = "shared"

pytestmark = pytest.mark.usefixtures("core_single_thread")


@pytest.fixture(scope="module")
def synthetic():
    """Three synthetic modalities (grey x-ray 32px, grey ultrasound 28px, RGB fundus 40px): specs and images."""
    specs = default_synthetic_domains(n_train=60, n_test=30)
    out = {}
    for spec in specs:
        data = load_domain(spec["name"], spec["labels"], spec["data"])
        out[spec["name"]] = {
            "spec": spec,
            "train": [data.splits["train"][i][0] for i in range(len(data.splits["train"]))],
            "test": [data.splits["test"][i][0] for i in range(len(data.splits["test"]))],
        }
    return out


def build_model(synthetic, domains=None, shared: bool = True, adapter=None) -> ContinualVLM:
    """A tiny CLIP with one non-identity LoRA per synthetic domain (and a shared LoRA)."""
    model = ContinualVLM(tiny_backbone("clip", seed=0))
    torch.manual_seed(0)
    for name in domains or list(synthetic):
        spec = synthetic[name]["spec"]
        model.add_domain(name, spec["labels"], spec["prompt"], adapter=adapter or core_lora_config())
    if shared:
        model.add_shared_adapter(SHARED, core_lora_config())
    return model


@pytest.fixture(scope="module")
def routed(synthetic):
    """A model with its router fitted on the three domains' train images."""
    model = build_model(synthetic)
    model.fit_router({name: d["train"] for name, d in synthetic.items()}, threshold=0.99)
    return model


def noise_images(n: int = 12) -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    return [rng.rand(32, 32, 3).astype(np.float32) for _ in range(n)]


def test_routes_synthetic_domains_to_their_adapters(routed, synthetic):
    images = [x for d in synthetic.values() for x in d["test"]]
    truth = [name for name, d in synthetic.items() for _ in d["test"]]
    preds = routed.predict_proba(images, domain="auto")
    assert len(preds) == len(images) and all(isinstance(p, RoutedPrediction) for p in preds)
    accuracy = np.mean([p.domain == t and not p.unrouted for p, t in zip(preds, truth)])
    assert accuracy >= 0.9, accuracy
    for p in preds:
        assert p.labels == routed.domains[p.domain].labels and p.probs.shape == (len(p.labels),)
        torch.testing.assert_close(p.probs.sum(), torch.tensor(1.0))
        assert p.adapter == (SHARED if p.unrouted else p.domain)
        assert (p.score > 1) == p.unrouted


def test_routed_probs_equal_a_direct_call_to_that_adapter(routed, synthetic):
    images = synthetic["synth_ultrasound"]["test"][:6]
    preds = routed.predict_proba(images, domain="auto")
    for image, p in zip(images, preds):
        direct = routed.predict_proba([image], p.domain, adapter=p.adapter)[0]
        torch.testing.assert_close(p.probs, direct, atol=1e-5, rtol=1e-4)


def test_noise_is_unrouted_and_served_by_the_shared_adapter(routed):
    preds = routed.predict_proba(noise_images(), domain="auto")
    assert all(p.unrouted for p in preds)
    assert all(p.adapter == SHARED and p.score > 1 for p in preds)
    assert all(p.labels == routed.domains[p.domain].labels for p in preds)  # scored against the best match's labels


def test_a_domain_never_trained_goes_unrouted(synthetic):
    model = build_model(synthetic, domains=["synth_xray", "synth_ultrasound"])
    model.fit_router({n: synthetic[n]["train"] for n in ("synth_xray", "synth_ultrasound")})
    preds = model.predict_proba(synthetic["synth_fundus"]["test"], domain="auto")  # RGB fundus: never trained
    assert np.mean([p.unrouted for p in preds]) >= 0.9
    kept = model.predict_proba(synthetic["synth_xray"]["test"], domain="auto")
    assert np.mean([p.domain == "synth_xray" and not p.unrouted for p in kept]) >= 0.9


def test_threshold_is_the_in_domain_coverage(synthetic):
    model = build_model(synthetic)
    train = {name: d["train"] for name, d in synthetic.items()}
    images = [x for d in synthetic.values() for x in d["test"]]
    rates = {}
    for threshold in (0.0, 0.5, 1.0):
        model.fit_router(train, threshold=threshold)
        rates[threshold] = np.mean([p.unrouted for p in model.predict_proba(images, domain="auto")])
        assert model.extras[ROUTER_KEY]["coverage"] == threshold
    assert rates[0.0] >= 0.9 and rates[0.0] >= rates[0.5] >= rates[1.0] and rates[1.0] <= 0.1, rates


def test_router_survives_save_and_load(routed, synthetic, tmp_path):
    images = [x for d in synthetic.values() for x in d["test"][:8]] + noise_images(4)
    before = routed.predict_proba(images, domain="auto")
    routed.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["extras"][ROUTER_KEY]["domains"] == list(synthetic)
    restored = ContinualVLM.from_pretrained(tmp_path)
    after = restored.predict_proba(images, domain="auto")
    for a, b in zip(before, after):
        assert (a.domain, a.adapter, a.unrouted, a.score) == (b.domain, b.adapter, b.unrouted, b.score)
        assert torch.equal(a.probs, b.probs)
    assert any(p.unrouted for p in after) and not all(p.unrouted for p in after)


def test_router_state_round_trips_exactly(routed):
    router = DomainRouter.from_dict(routed.extras[ROUTER_KEY])
    again = DomainRouter.from_dict(json.loads(json.dumps(router.to_dict())))
    for name in ("weights", "bias", "means", "variances", "thresholds"):
        assert torch.equal(getattr(router, name), getattr(again, name))
    assert again.domains == router.domains and again.fallback == SHARED and again.features == router.features


def test_fallback_none_serves_unrouted_images_with_the_frozen_base(synthetic):
    model = build_model(synthetic, shared=False)
    model.fit_router({name: d["train"] for name, d in synthetic.items()})
    assert model.extras[ROUTER_KEY]["fallback"] is None  # "auto" finds no shared adapter
    images = noise_images(3)
    for image, p in zip(images, model.predict_proba(images, domain="auto")):
        assert p.unrouted and p.adapter is None
        torch.testing.assert_close(p.probs, model.predict_proba([image], p.domain, adapter="base")[0], atol=1e-5, rtol=1e-4)


def test_domains_without_an_adapter_are_served_by_the_fallback(synthetic):
    model = build_model(synthetic, adapter="none")  # as after joint / continual training
    model.fit_router({name: d["train"] for name, d in synthetic.items()}, fallback=SHARED)
    preds = model.predict_proba(synthetic["synth_fundus"]["test"][:5], domain="auto")
    assert all(p.adapter == SHARED for p in preds)


def test_routing_errors(synthetic, routed):
    empty = ContinualVLM(tiny_backbone("clip", seed=0))
    with pytest.raises(RoutingError, match="no trained domains"):
        empty.predict_proba(noise_images(1), domain="auto")
    with pytest.raises(RoutingError, match="no trained domains"):
        empty.fit_router({"x": noise_images(4)})
    unfitted = build_model(synthetic, domains=["synth_xray"])
    with pytest.raises(RoutingError, match="fit_router"):
        unfitted.predict_proba(noise_images(1), domain="auto")
    train = {"synth_xray": synthetic["synth_xray"]["train"][:10]}
    for bad in (-0.01, 1.5, math.nan, "0.9", True, None):
        with pytest.raises(RoutingError, match=r"threshold must be a number in \[0, 1\]"):
            unfitted.fit_router(train, threshold=bad)
    with pytest.raises(RoutingError, match="not domains of this model"):
        unfitted.fit_router({"knee": noise_images(4)})
    with pytest.raises(RoutingError, match="at least 2 images"):
        unfitted.fit_router({"synth_xray": noise_images(1)})
    with pytest.raises(RoutingError, match="not a shared adapter"):
        unfitted.fit_router(train, fallback="synth_xray")
    with pytest.raises(RoutingError, match="stacked"):
        routed.predict_proba(noise_images(1), domain="auto", adapter=("synth_xray", SHARED))
    unfitted.fit_router(train)
    unfitted.remove_domain("synth_xray")
    unfitted.add_domain("other", ["a", "b"])
    with pytest.raises(RoutingError, match="no longer has"):
        unfitted.predict_proba(noise_images(1), domain="auto")
    assert issubclass(RoutingError, MedAdaptError) and issubclass(RoutingError, ValueError)


def test_corrupted_router_state_is_a_clear_error(routed):
    state = dict(routed.extras[ROUTER_KEY])
    for broken in ({**state, "means": {"dtype": "<f4", "shape": [2], "data": "!!"}}, {**state, "domains": ["a"]}, {**state, "format_version": 99}):
        with pytest.raises(RoutingError, match="router"):
            DomainRouter.from_dict(broken)


def test_trainer_fits_saves_and_reports_routing(tmp_path):
    from medadapt.training.trainer import ContinualTrainer

    from .training_helpers import tiny_config

    results = ContinualTrainer(tiny_config(tmp_path, "rehearsal"), progress=False).run()
    domains = results["domains"]
    assert 0.9 <= results["routing_accuracy"] <= 1.0
    assert set(results["routing_accuracy_per_domain"]) == set(domains)
    for key in ("auto_routing_accuracy", "oracle_accuracy", "stacked_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert isinstance(results["stacking_helps"], bool)
    assert results["routing"]["oracle_adapters"] == {d: d for d in domains} and results["routing"]["fallback"] == SHARED
    assert set(results["merging"]["methods"]) == {"linear", "ties", "dare_ties"} and "acc" in results["merging"]["shared"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["routing_accuracy"] == results["routing_accuracy"]
    pulled = ContinualVLM.from_pretrained(tmp_path)
    assert pulled.stage_order == [*domains, SHARED]  # the temporary merged adapters are not saved
    assert pulled.extras[ROUTER_KEY]["domains"] == domains
    data = load_domain("xr", ["normal", "pneumonia"], results["config"]["domains"][0]["data"])
    preds = pulled.predict_proba([data.splits["test"][i][0] for i in range(10)], domain="auto")
    assert np.mean([p.domain == "xr" for p in preds]) >= 0.8


def test_stage_router_fits_reuse_earlier_features_and_fit_the_same_router(synthetic):
    """The trainer refits the router after every stage; the frozen-base features of earlier domains
    are taken from a cache instead of running the image tower again, and the router is the same."""
    from medadapt.training.batches import PixelStore
    from medadapt.training.composition import RouterFeatureCache, fit_stage_router, router_indices

    model = build_model(synthetic)
    store = PixelStore(model.preprocess)
    names = list(synthetic)
    for name in names:
        spec = synthetic[name]["spec"]
        store.register(name, "train", load_domain(name, spec["labels"], spec["data"]).splits["train"])
    cache, cap = RouterFeatureCache(), 40  # 60 train images per domain: a fixed subset of 40
    for stage in range(len(names)):
        fit_stage_router(model, store, names[: stage + 1], cap=cap, cache=cache)
    assert cache.computed == cap * len(names)  # each domain's images through the tower once, not once per stage
    cached_state = dict(model.extras[ROUTER_KEY])
    indices = {n: router_indices(len(store.labels(n, "train")), cap) for n in names}
    assert all(len(i) == cap for i in indices.values()) and indices[names[0]] != list(range(cap))
    for name in names:  # the cached features are what the tower gives now
        fresh = model.router_features(store.pixels(name, "train", indices[name]))
        assert torch.equal(cache.entries[name][1], fresh)
    model.fit_router({n: store.pixels(n, "train", indices[n]) for n in names}, preprocessed=True)  # no cache
    assert model.extras[ROUTER_KEY] == cached_state


# -- real data ---------------------------------------------------------------------------------------
REAL = {
    "pneumonia": (["normal", "pneumonia"], {"format": "npz", "path": str(DATA / "pneumoniamnist.npz"), "max_samples": {"train": 1000}}),
    "breast": (["malignant", "normal or benign"], {"format": "npz", "path": str(DATA / "breastmnist.npz")}),
    "organ": (["head", "chest", "abdomen"], {"format": "vqa_rad_organ", "path": str(DATA / "vqa-rad")}),
}


@pytest.mark.timeout(240)
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} not found (medmnist .npz files and vqa-rad/)")
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_routing_accuracy_on_real_data(family):
    """PneumoniaMNIST / BreastMNIST / VQA-RAD organ: routed from a random-weight tiny base's features.

    Trained on at most 1000 images per domain, tested on the full test splits (624 + 156 + 94)."""
    model = ContinualVLM(tiny_backbone(family, seed=0))
    pixels = {}
    for name, (labels, data) in REAL.items():
        domain = load_domain(name, labels, data)
        model.add_domain(name, labels, adapter="none")
        for split in ("train", "test"):
            ds = domain.splits[split]
            pixels[name, split] = model.preprocess([ds[i][0] for i in range(len(ds))])
    router = model.fit_router({name: pixels[name, "train"] for name in REAL}, preprocessed=True)
    routed = {}
    for name in REAL:
        decision = router.route(model.router_features(pixels[name, "test"], router.features))
        routed[name] = [d == name and not u for d, u in zip(decision.domains, decision.unrouted)]
    accuracy = np.mean([ok for oks in routed.values() for ok in oks])
    per_domain = {name: float(np.mean(oks)) for name, oks in routed.items()}
    assert accuracy >= 0.95, (accuracy, per_domain)
    assert min(per_domain.values()) >= 0.9, per_domain
