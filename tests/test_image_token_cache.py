"""Projected image tokens reused when only the language model trains (issue 23): exact, invalidated
when anything upstream of the language model changes, bounded, and rebuilt by a resumed run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig

from medadapt import ContinualVLM
from medadapt.errors import ConfigError
from medadapt.families.image_token_cache import ImageCacheSettings, ImageTokenCache
from medadapt.tiny import tiny_base
from medadapt.training.config import TrainSettings
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config  # noqa: F401

GENERATIVE = ["tiny-llava", "tiny-gemma3", "tiny-paligemma", "tiny-idefics3"]
QUESTION = "Is there pneumonia?"
ATOL = 1e-5


def _model(name: str) -> ContinualVLM:
    model = ContinualVLM(tiny_base(name))
    torch.manual_seed(0)
    targets = model.family.default_lora_targets(model.base_model)
    model.add_domain("cxr", ["no", "yes"], f"{QUESTION} {{}}", adapter=LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    return model


def _pixels(model: ContinualVLM, n: int = 4) -> torch.Tensor:
    return model.preprocess([np.random.RandomState(i).randint(0, 255, (40, 36, 3), dtype=np.uint8) for i in range(n)])


def _step(model: ContinualVLM, adapter: str, pixels: torch.Tensor, keys=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training forward and backward through ``adapter``: the loss and every trainable gradient."""
    params = model.set_trainable([adapter])
    for p in params:
        p.grad = None
    n = pixels.shape[0]
    answers = ["yes" if i % 2 else "no" for i in range(n)]
    loss, _ = model.scorer.lm_loss(pixels, [QUESTION] * n, answers, model.stages.serve_named(adapter), keys)
    loss.backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else None for p in params]


def _close(a: tuple, b: tuple) -> None:
    assert torch.allclose(a[0], b[0], atol=ATOL, rtol=0), (float(a[0]), float(b[0]))
    assert len(a[1]) == len(b[1])
    for ga, gb in zip(a[1], b[1]):
        assert ga is not None and gb is not None
        assert torch.allclose(ga, gb, atol=ATOL, rtol=0), float((ga - gb).abs().max())


@pytest.mark.parametrize("name", GENERATIVE)
def test_cached_losses_gradients_and_scores_equal_uncached(name):
    model = _model(name)
    model.train()
    pixels = _pixels(model)
    keys = [("train", "cxr", i) for i in range(4)]
    reference = _step(model, "cxr", pixels)
    with model.scorer.caching_images(ImageCacheSettings()) as cache:
        first = _step(model, "cxr", pixels, keys)  # epoch 1: computed and kept
        assert cache.misses == 4 and cache.hits == 0 and len(cache) == 4
        # epoch 2, another batch order and split: every row served from the cache
        order = [2, 0, 3, 1]
        second = _step(model, "cxr", pixels[order], [keys[i] for i in order])
        assert cache.hits == 4 and cache.refusals == {}
        _close(reference, first)
        _close(_step(model, "cxr", pixels[order]), second)
        model.eval()
        with torch.no_grad():
            domain, served = model.get_domain("cxr"), model.stages.serve_named("cxr")
            plain = model.scorer.logits(pixels, domain, served)
            cached = model.scorer.logits(pixels, domain, served, keys=[("test", "cxr", i) for i in range(4)])
            again = model.scorer.logits(pixels, domain, served, keys=[("test", "cxr", i) for i in range(4)])
        assert torch.allclose(plain, cached, atol=ATOL) and torch.allclose(plain, again, atol=ATOL)
        assert cache.hits == 8  # the second scoring call read all four
    assert model.scorer.image_cache is None  # the cache lives only inside the block


def _projector_lora(model: ContinualVLM) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=r"^model\.multi_modal_projector\.linear_(1|2)$", init_lora_weights=False)


def _training(name: str) -> tuple[ContinualVLM, torch.Tensor, list[tuple[str, str, int]]]:
    """A tiny model in train mode, four images and their sample keys."""
    model = _model(name)
    model.train()
    return model, _pixels(model), [("train", "cxr", i) for i in range(4)]


def test_a_stale_entry_is_never_used_once_a_projector_lora_trains():
    model, pixels, keys = _training("tiny-llava")
    with model.scorer.caching_images(ImageCacheSettings()) as cache:
        _step(model, "cxr", pixels, keys)
        assert len(cache) == 4
        torch.manual_seed(1)
        model.add_domain("proj", ["no", "yes"], f"{QUESTION} {{}}", adapter=_projector_lora(model))
        hits = cache.hits
        cached = _step(model, "proj", pixels, keys)
        assert cache.hits == hits, "the projector LoRA's step read image tokens made without it"
        assert any("'proj'" in reason for reason in cache.refusals)
        projector = [g for g in cached[1] if g is not None]
        assert projector and all(g.abs().sum() > 0 for g in projector)  # stale tokens would give no gradient
        _close(_step(model, "proj", pixels), cached)
        # the LM-only adapter still reuses what the frozen base made
        _step(model, "cxr", pixels, keys)
        assert cache.hits == hits + 4


def test_a_base_change_or_new_image_processor_settings_drop_every_entry():
    model, pixels, keys = _training("tiny-gemma3")
    with model.scorer.caching_images(ImageCacheSettings()) as cache:
        _step(model, "cxr", pixels, keys)
        projection = model.base_model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            projection.mul_(1.5)  # e.g. a LoRA merged into the base's projector
        changed = _step(model, "cxr", pixels, keys)
        assert cache.invalidations == 1 and cache.hits == 0
        _close(_step(model, "cxr", pixels), changed)
        model.backbone.image_processor.image_mean = [0.1, 0.2, 0.3]
        _step(model, "cxr", pixels, keys)
        assert cache.invalidations == 2 and cache.hits == 0
        _step(model, "cxr", pixels, keys)
        assert cache.hits == 4


def test_a_trainable_base_vision_parameter_or_an_unsupported_family_runs_uncached():
    model, pixels, keys = _training("tiny-llava")
    with model.scorer.caching_images(ImageCacheSettings()) as cache:
        _step(model, "cxr", pixels, keys)
        weight = model.base_model.model.multi_modal_projector.linear_2.weight
        weight.requires_grad_(True)
        try:
            loss, _ = model.scorer.lm_loss(pixels, [QUESTION] * 4, ["no"] * 4, model.stages.serve_named("cxr"), keys)
            loss.backward()
        finally:
            weight.requires_grad_(False)
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        assert "a vision-tower or projector parameter of the base trains" in cache.refusals
        scorer = model.scorer
        scorer.spec = dataclasses.replace(scorer.spec, no_image_cache="this family's forward needs its pixels")
        hits = cache.hits
        _close(_step(model, "cxr", pixels), _step(model, "cxr", pixels, keys))
        assert cache.hits == hits and cache.refusals["this family's forward needs its pixels"] == 1


def test_the_cache_keeps_to_its_budgets_and_spills_exactly(tmp_path):
    model = _model("tiny-llava")
    model.train()
    pixels = _pixels(model, 6)
    keys = [("train", "cxr", i) for i in range(6)]
    reference = _step(model, "cxr", pixels)
    per_image = 16 * 32 * 4  # 16 tokens of width 32 in float32
    settings = ImageCacheSettings(memory_bytes=2 * per_image + 10, spill_bytes=2 * per_image, spill_dir=str(tmp_path), spill_name="spill.bin")
    with model.scorer.caching_images(settings) as cache:
        _close(reference, _step(model, "cxr", pixels, keys))
        stats = cache.stats()
        assert stats["in_memory"] == 2 and stats["memory_bytes"] == 2 * per_image <= settings.memory_bytes
        assert stats["spilled"] == 2 and stats["spilled_bytes"] == 2 * per_image
        assert len(cache) == 4  # the last two fit nowhere and are recomputed when needed
        assert (tmp_path / "spill.bin").is_file()
        _close(reference, _step(model, "cxr", pixels, keys))
        assert cache.hits == 4 and cache.misses == 6 + 2
    assert not (tmp_path / "spill.bin").exists()


def test_the_spill_file_is_truncated_when_opened_and_deleted_when_closed(tmp_path):
    (tmp_path / "s.bin").write_bytes(b"\x7f" * 4096)  # left by a killed run
    cache = ImageTokenCache(ImageCacheSettings(memory_bytes=1, spill_bytes=4096, spill_dir=str(tmp_path), spill_name="s.bin"))
    assert (tmp_path / "s.bin").read_bytes() == b"\0" * 4096 and len(cache) == 0 and cache.get("k") is None
    tokens = torch.randn(3, 5)
    assert cache.put("k", tokens) and torch.equal(cache.get("k"), tokens)
    assert not cache.put("big", torch.randn(2048))  # over both budgets: not kept
    cache.close()
    assert not (tmp_path / "s.bin").exists()
    with pytest.raises(ConfigError):
        ImageCacheSettings(memory_bytes=-1)
    with pytest.raises(ConfigError):
        TrainSettings(image_cache_mb=-1)


GENERATIVE_RUN = dict(model="tiny-llava", adapter={"type": "lora", "r": 4, "alpha": 8, "target_modules": None})


def _adapters(folder) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(folder.glob("*/adapter_model.safetensors"))}


class _Dying:
    """An objective that stops the run (as a kill would) after ``after`` steps."""

    def __init__(self, objective, after: int) -> None:
        self.objective, self.after, self.calls = objective, after, 0

    def reset(self) -> None:
        self.objective.reset()

    def __call__(self, model, batch, adapter):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.objective(model, batch, adapter)


def test_a_run_with_the_cache_equals_one_without_and_a_resumed_run_rebuilds_it(tmp_path, one_thread):  # noqa: F811
    train = {"epochs": 2, "batch_size": 8, "lr": 0.005, "checkpoint_every": 2, "eval_batch_size": 64, "image_cache_spill_mb": 1}
    common = dict(n_domains=2, n_train=16, n_test=8, train=train, **GENERATIVE_RUN)
    plain = ContinualTrainer(tiny_config(tmp_path / "plain", "rehearsal", overrides=["train.image_cache_mb=0"], **common), progress=False).run()
    assert "image_cache" not in plain
    cached = ContinualTrainer(tiny_config(tmp_path / "cached", "rehearsal", **common), progress=False).run()
    stats = cached["image_cache"]
    assert stats["hits"] > 0 and stats["refusals"] == {}
    assert cached["accuracy_matrix"] == plain["accuracy_matrix"]
    assert _adapters(tmp_path / "cached").keys() == _adapters(tmp_path / "plain").keys()
    for name, blob in _adapters(tmp_path / "cached").items():
        assert blob == _adapters(tmp_path / "plain")[name], name
    assert not list((tmp_path / "cached").glob("image_token_cache*"))  # the spill file goes with the run

    # interrupted inside stage 2 (after a checkpoint), then resumed: the cache starts empty again
    config = tiny_config(tmp_path / "killed", "rehearsal", **common)
    victim = ContinualTrainer(config, progress=False)
    victim.setup()
    victim.objective = _Dying(victim.objective, after=9)
    with pytest.raises(KeyboardInterrupt):
        victim.run()
    assert victim.state.phase >= 2 and (tmp_path / "killed" / "checkpoints").is_dir()
    resumed = ContinualTrainer(config, resume=True, progress=False).run()
    assert resumed["accuracy_matrix"] == plain["accuracy_matrix"]
    assert resumed["image_cache"]["misses"] > 0 and resumed["image_cache"]["hits"] > 0
    assert not list((tmp_path / "killed").glob("image_token_cache*"))
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["accuracy_matrix"] == plain["accuracy_matrix"]
