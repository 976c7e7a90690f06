"""Head adapters (medadapt.adapters.head): a linear head over image features beside the label-prompt prior.

The same checks LoRA and prompt stages have: the untrained head is the zero-shot model, it saves as
safetensors + JSON and round-trips, loads from the two plain files, travels through the (fake) Hub,
serves mixed-domain batches and routed calls, learns from data; bad input gets clear errors. The
last test trains a head on the real pretrained tower (skipped when ../shared is absent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medadapt import AdapterError, ConfigError, ContinualVLM, Domain, HeadConfig
from medadapt.adapters import adapter_kind
from medadapt.adapters.head import HeadAdapter, initial_head
from medadapt.tiny import tiny_backbone, tiny_tower_dual_encoder
from medadapt.tiny_generative import tiny_generative
from medadapt.backbones import backbone_from_model
from tests.conftest import core_lora_config, make_image_list
from tests.hub_server import TOKEN
from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.usefixtures("core_single_thread")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
IMAGES = make_image_list(4)


def perturbed(model: ContinualVLM, name: str, seed: int = 0) -> None:
    """Give head ``name`` non-trivial weights and buffers (so every tensor must travel)."""
    g = torch.Generator().manual_seed(seed)
    head = model.prompt_adapters[name]
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g))
        head.bias.copy_(torch.randn(head.bias.shape, generator=g))
        head.mean.copy_(torch.randn(head.mean.shape, generator=g) * 0.1)
        head.std.copy_(torch.rand(head.std.shape, generator=g) + 0.5)
        head.text_weight.fill_(0.5)


@pytest.fixture
def headed() -> ContinualVLM:
    model = ContinualVLM(tiny_backbone("clip", seed=0))
    torch.manual_seed(0)
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=HeadConfig())
    model.add_domain("derm", ["benign", "malignant", "nevus"], "a skin photo of {}.", adapter=core_lora_config())
    model.add_shared_adapter("shared", core_lora_config())
    return model


def test_untrained_head_is_the_zero_shot_model_and_perturbed_it_differs(headed):
    assert headed.adapter_type("chest") == "head" and headed.domains["chest"].adapter_type == "head"
    zero_shot = headed.predict_proba(IMAGES, "chest", adapter="base")
    assert torch.allclose(headed.predict_proba(IMAGES, "chest"), zero_shot, atol=1e-6)
    perturbed(headed, "chest")
    assert not torch.allclose(headed.predict_proba(IMAGES, "chest"), zero_shot, atol=1e-3)
    config = headed.prompt_adapters["chest"].config
    assert (config.num_labels, config.feature_dim, config.embed_dim) == (2, 32, 32)


def test_head_stacks_on_a_lora_and_reads_its_adapted_features(headed):
    perturbed(headed, "chest")
    alone = headed.predict_proba(IMAGES, "chest")
    stacked = headed.predict_proba(IMAGES, "chest", adapter=["shared", "chest"])
    assert stacked.shape == alone.shape and not torch.allclose(stacked, alone, atol=1e-4)
    with pytest.raises(AdapterError, match="at most one prompt adapter"):
        headed.add_domain("fundus", ["a", "b"], "{}", adapter=HeadConfig())
        headed.predict_proba(IMAGES, "chest", adapter=["chest", "fundus"])


def test_saves_as_safetensors_and_json_and_round_trips(headed, tmp_path):
    perturbed(headed, "chest")
    want = {d: headed.predict_proba(IMAGES, d) for d in headed.domains}
    headed.save_pretrained(tmp_path / "save")
    folder = tmp_path / "save" / "chest"
    assert sorted(p.name for p in folder.iterdir()) == ["head_config.json", "head_model.safetensors"]
    config = json.loads((folder / "head_config.json").read_text())
    assert config["adapter_type"] == "head" and config["num_labels"] == 2 and config["feature_dim"] == 32
    weights = load_file(str(folder / "head_model.safetensors"))
    assert set(weights) == {"weight", "bias", "text_weight", "mean", "std"}
    head = headed.prompt_adapters["chest"]
    assert torch.equal(weights["weight"], head.weight.detach()) and torch.equal(weights["std"], head.std)
    # rebuilt from the two plain files alone
    rebuilt = HeadAdapter(HeadConfig.from_dict(config))
    rebuilt.load_state_dict(weights)
    feats = torch.randn(3, 32)
    assert torch.equal(rebuilt(feats, torch.zeros(3, 2)), head(feats, torch.zeros(3, 2)))
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    assert restored.adapter_type("chest") == "head"
    for d, probs in want.items():
        assert torch.equal(restored.predict_proba(IMAGES, d), probs), d
    # one stage brought into another model of the same base
    other = ContinualVLM(tiny_backbone("clip", seed=0))
    assert other.load_adapter(tmp_path / "save", name="chest") == "chest"
    assert torch.equal(other.predict_proba(IMAGES, "chest"), want["chest"])


def test_mixed_batch_and_routing_serve_heads(headed):
    perturbed(headed, "chest")
    domains = ["chest", "derm", "chest", "derm"]
    mixed = headed.predict_proba(IMAGES, domains)
    for i, d in enumerate(domains):
        single = headed.predict_proba([IMAGES[i]], d)[0]
        assert torch.allclose(mixed[i], single, atol=1e-5), (i, d)
    rng = np.random.RandomState(0)
    bright = [np.clip(rng.rand(32, 32, 3) * 0.2 + 0.8, 0, 1).astype(np.float32) for _ in range(12)]
    dark = [(rng.rand(32, 32, 3) * 0.2).astype(np.float32) for _ in range(12)]
    headed.fit_router({"chest": bright[:8], "derm": dark[:8]}, threshold=0.99)
    routed = headed.predict_proba(bright[8:] + dark[8:], domain="auto")
    for r, img in zip(routed, bright[8:] + dark[8:]):
        if r.unrouted:
            continue
        assert r.adapter == r.domain
        assert torch.allclose(r.probs, headed.predict_proba([img], r.domain)[0], atol=1e-5)
    assert sum(r.domain == "chest" and not r.unrouted for r in routed[:4]) >= 3


def test_pushed_to_the_hub_and_pulled_back(headed, fake_hub, tmp_path):  # noqa: F811
    perturbed(headed, "chest")
    want = headed.predict_proba(IMAGES, "chest")
    headed.push_to_hub("medadapt-test/heads", token=TOKEN)
    files = fake_hub.files("medadapt-test/heads")
    assert {"chest/head_config.json", "chest/head_model.safetensors"} <= set(files)
    pulled = ContinualVLM.from_pretrained("medadapt-test/heads", token=TOKEN, cache_dir=tmp_path / "cache")
    assert pulled.adapter_type("chest") == "head" and torch.equal(pulled.predict_proba(IMAGES, "chest"), want)


def test_initialised_from_data_drops_an_uninformative_text_prior_and_learns():
    torch.manual_seed(0)
    head = HeadAdapter(HeadConfig(init="class_mean", num_labels=2, feature_dim=8))
    labels = torch.tensor([0] * 30 + [1] * 10)
    feats = torch.randn(40, 8)
    feats[labels == 1, 0] += 4.0  # class 1 is told apart by feature 0
    noise = torch.randn(40, 2) * 3  # a text prior that knows nothing
    decided = initial_head(head, feats, noise, labels)
    assert decided["text_prior"] is False and head.text_weight.item() == 0.0
    zero = HeadAdapter(HeadConfig(init="zero", num_labels=2, feature_dim=8))
    initial_head(zero, feats, noise, labels)
    assert torch.allclose(zero.bias.softmax(-1), torch.tensor([0.75, 0.25]), atol=1e-6)  # the class frequencies
    assert torch.allclose(zero.mean, feats.mean(0)) and torch.allclose(zero.std, feats.std(0))
    acc = (head(feats, noise).argmax(-1) == labels).float().mean().item()
    assert acc >= 0.95
    informative = torch.stack([-(labels.float()) * 5, labels.float() * 5], 1)
    head2 = HeadAdapter(HeadConfig(init="auto", num_labels=2, feature_dim=8))
    assert initial_head(head2, feats, informative, labels)["text_prior"] is True and head2.text_weight.item() == 1.0
    assert head2.weight.abs().sum().item() == 0.0  # auto keeps the text prior and starts the weights at zero


def test_trainer_starts_heads_from_data_and_refuses_a_shared_head(tmp_path):
    from medadapt.data import default_synthetic_domains
    from medadapt.training.config import load_config
    from medadapt.training.trainer import ContinualTrainer

    specs = default_synthetic_domains(n_train=40, n_test=20)[:2]
    base = {"model": "tiny-clip", "paradigm": "specialized", "domains": specs, "adapter": {"type": "head"},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.01}, "output_dir": str(tmp_path / "run")}
    results = ContinualTrainer(load_config(None, defaults=base), overwrite=True, progress=False).run()
    saved = json.loads((tmp_path / "run" / specs[0]["name"] / "head_config.json").read_text())
    assert saved["initialised"] is True
    trained = load_file(str(tmp_path / "run" / specs[0]["name"] / "head_model.safetensors"))
    assert trained["weight"].abs().sum() > 0 and not torch.equal(trained["std"], torch.ones_like(trained["std"]))
    assert 0.0 <= results["acc"] <= 1.0
    with pytest.raises(ConfigError, match="serves one domain's labels"):
        load_config(None, defaults={**base, "paradigm": "rehearsal"})
    load_config(None, defaults={**base, "paradigm": "rehearsal", "shared_adapter": {"type": "lora"}})  # accepted


def test_head_with_another_feature_size_is_a_clear_error(headed, tmp_path):
    perturbed(headed, "chest")
    headed.save_pretrained(tmp_path / "save")
    config, weights = adapter_kind("head").read(tmp_path / "save" / "chest", "chest")
    cnn = ContinualVLM(tiny_tower_dual_encoder("resnet"))  # pooled features of size 16, not 32
    domain = Domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")
    with pytest.raises(AdapterError, match="image features of size 32.*gives 16"):
        cnn.add_stage("chest", domain=domain, adapter=config, weights=weights)
    assert "chest" not in cnn.domains and "chest" not in cnn.prompt_adapters
    three = Domain("chest", ["a", "b", "c"], "{}")
    with pytest.raises(AdapterError, match="scores 2 labels"):
        ContinualVLM(tiny_backbone("clip", seed=0)).add_stage("chest", domain=three, adapter=config, weights=weights)
    with pytest.raises(AdapterError, match="cannot be shared"):
        headed.add_shared_adapter("shared-head", HeadConfig())
    with pytest.raises(AdapterError, match="init must be one of"):
        HeadConfig(init="mean")


def test_head_on_a_generative_base_is_refused_with_the_reason():
    model_, processor = tiny_generative("tiny-llava", seed=0)
    model = ContinualVLM(backbone_from_model(model_, processor=processor, source=None))
    with pytest.raises(AdapterError, match="generative base scores labels by the likelihood"):
        model.add_domain("cxr", ["no", "yes"], "Is there pneumonia? {}", adapter=HeadConfig())
    assert "cxr" not in model.domains


@pytest.mark.slow
def test_real_tower_head_learns_breast_in_three_epochs():
    """On the pretrained EfficientNet-Lite0 features a head trained like the recipe (lr 3e-3, 3 epochs,
    batch 32) beats the majority rate (0.731) on BreastMNIST test images: the frozen tower's features
    are what the head reads. Skips when ../shared is absent."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import real_tower

    if not real_tower.available() or not (DATA / "breastmnist.npz").is_file():
        pytest.skip(real_tower.missing_reason() + " or ../shared/data/breastmnist.npz is absent")
    from medadapt.data import load_domain
    from sklearn.metrics import roc_auc_score

    model = ContinualVLM(real_tower.real_tower_backbone())
    data = load_domain("breast", ["malignant", "normal or benign"], {
        "format": "npz", "path": str(DATA / "breastmnist.npz"), "splits": {"train": "train", "test": "test"}})
    model.add_domain("breast", data.labels, "a breast ultrasound image that is {}.", adapter=HeadConfig())
    train, test = data.splits["train"], data.splits["test"]
    x_train = model.preprocess([train[i][0] for i in range(len(train))])
    x_test = model.preprocess([test[i][0] for i in range(len(test))])
    y_train = torch.as_tensor(np.asarray(train.labels)).long()
    domain, served = model.get_domain("breast"), model.serve("breast")
    feats, zero_shot = model.scorer.head_inputs(x_train, domain, served)
    model.initialise_adapter("breast", [x_train], y_train)
    head = model.prompt_adapters["breast"]
    params = model.set_trainable(["breast"])
    assert {id(p) for p in params} == {id(head.weight), id(head.bias)}
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(y_train), generator=g).split(32):
            loss = torch.nn.functional.cross_entropy(head(feats[idx], zero_shot[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.set_trainable([])
    probs = model.predict_proba([test[i][0] for i in range(len(test))], "breast")
    y_test = np.asarray(test.labels)
    acc = float((probs.argmax(-1).numpy() == y_test).mean())
    auroc = roc_auc_score(y_test, probs[:, 1].numpy())
    assert acc >= 0.80 and auroc >= 0.85, (acc, auroc)
    assert x_test.shape[-1] == 64
