"""Inference: predict_proba, base / shared adapters, batched mixed-domain calls, embeddings, image inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt import ContinualVLM, PromptConfig
from medadapt.errors import ImageError
from tests.conftest import CORE_DOMAINS, CORE_SHARED, core_lora_config, frozen_probs, make_image_list, png_bytes

ALL_DOMAINS = list(CORE_DOMAINS)

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _family(model: ContinualVLM) -> str:
    return model.backbone.family.name


def test_predict_proba_shapes(tiny_vlm):
    model = tiny_vlm
    images = make_image_list(3)
    for domain, (labels, _) in CORE_DOMAINS.items():
        probs = model.predict_proba(images, domain)
        assert isinstance(probs, torch.Tensor) and probs.shape == (3, len(labels))
        torch.testing.assert_close(probs.sum(-1), torch.ones(3))
        assert (probs >= 0).all()
    assert model.predict_proba(images[0], "chest").shape == (1, 3)  # a single image
    mixed = model.predict_proba(images, ["chest", "derm", "knee"])
    assert isinstance(mixed, list) and [p.shape for p in mixed] == [(3,), (2,), (2,)]


def test_adapters_change_outputs(tiny_vlm):
    """The fixture's adapters are not the identity (so the round-trip tests below can fail)."""
    model = tiny_vlm
    images = make_image_list(3)
    for domain in ("chest", "derm", "fundus"):
        assert not torch.allclose(model.predict_proba(images, domain), model.predict_proba(images, domain, adapter="base"), atol=1e-4)
    # histo's LoRA uses peft's default init (B = 0): it serves exactly the base; knee has no adapter
    for domain in ("histo", "knee"):
        torch.testing.assert_close(model.predict_proba(images, domain), model.predict_proba(images, domain, adapter="base"), atol=1e-6, rtol=0)


def test_base_adapter_equals_frozen_model(tiny_vlm):
    model = tiny_vlm
    images = make_image_list(4)
    pv = model.preprocess(images)
    for domain in ALL_DOMAINS:
        expected = frozen_probs(_family(model), pv, model.get_domain(domain).prompts())
        # ask for the base after using every adapter kind, in both orders
        model.predict_proba(images, domain)
        got = model.predict_proba(images, domain, adapter="base")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    mixed = model.predict_proba(images, ["chest", "derm", "fundus", "knee"], adapter="base")
    for i, domain in enumerate(["chest", "derm", "fundus", "knee"]):
        expected = frozen_probs(_family(model), pv[i : i + 1], model.get_domain(domain).prompts())[0]
        torch.testing.assert_close(mixed[i], expected, atol=1e-5, rtol=0)


def test_base_right_after_adding_or_removing_a_lora(tiny_empty_clip):
    """Right after add_domain / remove_domain the base must still be served without any LoRA."""
    model = tiny_empty_clip
    images = make_image_list(3)
    pv = model.preprocess(images)
    torch.manual_seed(0)
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=core_lora_config())
    expected = frozen_probs("clip", pv, model.get_domain("chest").prompts())
    torch.testing.assert_close(model.predict_proba(images, "chest", adapter="base"), expected, atol=1e-5, rtol=0)
    base_emb = model.embed_images(images)
    model.add_domain("derm", ["a", "b"], "{}", adapter=core_lora_config())
    model.predict_proba(images, "derm")
    model.remove_domain("derm")
    torch.testing.assert_close(model.predict_proba(images, "chest", adapter="base"), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.embed_images(images, adapter="base"), base_emb, atol=1e-6, rtol=0)


def test_shared_adapter_is_used(tiny_clip):
    model = tiny_clip
    images = make_image_list(3)
    probs = model.predict_proba(images, "chest", adapter=CORE_SHARED)
    # recompute from the shared adapter's own embeddings
    img = model.embed_images(images, adapter=CORE_SHARED)
    txt = model.embed_texts(model.get_domain("chest").prompts(), adapter=CORE_SHARED)
    expected = (model.base_model.logit_scale.exp() * img @ txt.t()).softmax(-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(probs, model.predict_proba(images, "chest"), atol=1e-4)
    assert not torch.allclose(probs, model.predict_proba(images, "chest", adapter="base"), atol=1e-4)
    # a domain without an adapter of its own is served by the shared one too
    knee = model.predict_proba(images, "knee", adapter=CORE_SHARED)
    assert not torch.allclose(knee, model.predict_proba(images, "knee"), atol=1e-4)
    # another domain's adapter may serve a domain too, and stacks of LoRAs are summed
    assert model.predict_proba(images, "histo", adapter="chest").shape == (3, 3)
    stacked = model.predict_proba(images, "chest", adapter=["chest", CORE_SHARED])
    assert not torch.allclose(stacked, probs, atol=1e-4)
    # the mixed path serves every row through the shared adapter
    mixed = model.predict_proba(images, ["chest", "derm", "chest"], adapter=CORE_SHARED)
    torch.testing.assert_close(mixed[0], probs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[2], probs[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], model.predict_proba(images[1], "derm", adapter=CORE_SHARED)[0], atol=1e-5, rtol=0)


def predict_counting_vision_forwards(model, images, domains):
    """A mixed-domain ``predict_proba`` plus one list entry per vision-tower forward it ran."""
    calls = []
    handle = model.base_model.vision_model.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        return model.predict_proba(images, domains), calls
    finally:
        handle.remove()


def test_mixed_domain_batch_equals_per_domain_calls_and_is_batched(tiny_vlm):
    model = tiny_vlm
    domains = ["chest", "derm", "fundus", "histo", "knee", "derm", "chest", "fundus", "knee"]
    images = make_image_list(len(domains), seed=7)
    mixed, calls = predict_counting_vision_forwards(model, images, domains)
    # one forward for LoRA / base-served / text-only-prompt rows + one for the visual-prompt domain
    assert len(calls) == 2 < len(images)
    for i, domain in enumerate(domains):
        single = model.predict_proba([images[i]], domain)[0]
        torch.testing.assert_close(mixed[i], single, atol=1e-5, rtol=0)
    # all images of one domain -> equals the batched single-domain call
    batch = model.predict_proba(images, "derm")
    derm_rows = [i for i, d in enumerate(domains) if d == "derm"]
    for i in derm_rows:
        torch.testing.assert_close(mixed[i], batch[i], atol=1e-5, rtol=0)


def test_mixed_lora_only_batch_is_one_forward(tiny_clip):
    model = tiny_clip
    domains = ["chest", "histo", "fundus", "knee", "chest", "histo"]
    images = make_image_list(len(domains))
    mixed, calls = predict_counting_vision_forwards(model, images, domains)
    assert len(calls) == 1
    for i, domain in enumerate(domains):
        torch.testing.assert_close(mixed[i], model.predict_proba(images[i], domain)[0], atol=1e-5, rtol=0)


def test_embeddings_are_normalised_for_any_adapter(tiny_vlm):
    model = tiny_vlm
    images = make_image_list(3)
    texts = ["a chest x-ray", "a skin photo", "x"]
    for adapter in ("base", None, "chest", "derm", "fundus", "histo", CORE_SHARED, ["chest", CORE_SHARED]):
        img = model.embed_images(images, adapter=adapter)
        txt = model.embed_texts(texts, adapter=adapter)
        assert img.shape[0] == 3 and txt.shape[0] == 3 and img.shape[1] == txt.shape[1]
        torch.testing.assert_close(img.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert model.embed_texts("one text").shape[0] == 1
    # visual prompt tokens change image embeddings, a text-only prompt does not
    base = model.embed_images(images)
    assert not torch.allclose(model.embed_images(images, adapter="derm"), base, atol=1e-4)
    torch.testing.assert_close(model.embed_images(images, adapter="fundus"), base, atol=1e-6, rtol=0)
    assert not torch.allclose(model.embed_images(images, adapter="chest"), base, atol=1e-4)


# -- image inputs ---------------------------------------------------------------------------------
def _rgb_u8(h=23, w=31, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_image_inputs_of_every_kind_agree(tiny_clip, tmp_path):
    model = tiny_clip
    rgb = _rgb_u8()
    pil = Image.fromarray(rgb)
    (tmp_path / "img.png").write_bytes(png_bytes(pil))
    reference = model.preprocess([pil])
    same = {
        "numpy HWC": rgb,
        "numpy CHW": np.moveaxis(rgb, -1, 0).copy(),
        "numpy float [0,1]": rgb.astype(np.float32) / 255.0,
        "numpy float64 [0,1]": rgb.astype(np.float64) / 255.0,
        "torch CHW uint8": torch.from_numpy(np.moveaxis(rgb, -1, 0).copy()),
        "torch CHW float": torch.from_numpy(np.moveaxis(rgb, -1, 0).copy()).float() / 255.0,
        "torch HWC": torch.from_numpy(rgb),
        "path str": str(tmp_path / "img.png"),
        "path obj": tmp_path / "img.png",
        "bytes": png_bytes(pil),
        "RGBA opaque": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])),
    }
    for kind, image in same.items():
        assert torch.equal(model.preprocess([image]), reference), kind


def test_grey_and_16_bit_images(tiny_clip):
    model = tiny_clip
    grey = np.random.RandomState(1).randint(0, 256, size=(29, 19), dtype=np.uint8)
    grey[0, 0], grey[0, 1] = 0, 255  # full range, so the 16-bit min-max stretch maps back exactly
    reference = model.preprocess([Image.fromarray(grey).convert("RGB")])
    same = {
        "PIL L": Image.fromarray(grey),
        "numpy HW": grey,
        "numpy HW1": grey[..., None],
        "numpy 1HW": grey[None],
        "numpy float HW": grey.astype(np.float32) / 255.0,
        "PIL I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "numpy uint16": grey.astype(np.uint16) * 257,
        "PIL LA": Image.fromarray(grey).convert("LA"),
    }
    for kind, image in same.items():
        assert torch.equal(model.preprocess([image]), reference), kind
    i16 = Image.fromarray(grey.astype(np.uint16) * 257)
    assert i16.mode == "I;16"
    assert model.predict_proba([i16], "chest").shape == (1, 3)


def test_rgba_is_composited_on_black(tiny_clip):
    model = tiny_clip
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:8, :, 3] = 255  # top half opaque, bottom half transparent
    expected = np.zeros((16, 16, 3), np.uint8)
    expected[:8] = 200
    assert torch.equal(model.preprocess([Image.fromarray(rgba)]), model.preprocess([expected]))
    assert torch.equal(model.preprocess([rgba]), model.preprocess([expected]))


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (300, 5), (32, 32), (333, 211)])
def test_any_image_size(tiny_vlm, size):
    model = tiny_vlm
    image = np.random.RandomState(0).rand(*size, 3)
    assert model.preprocess([image]).shape[-2:] == (32, 32)
    assert model.predict_proba(image, "derm").shape == (1, 2)


def test_batches_as_arrays_and_mixed_lists(tiny_clip):
    model = tiny_clip
    stack = np.random.RandomState(0).rand(5, 24, 24, 3).astype(np.float32)
    assert model.predict_proba(stack, "chest").shape == (5, 3)
    tensor = torch.rand(4, 3, 20, 28)
    assert model.predict_proba(tensor, "chest").shape == (4, 3)
    greys = np.random.RandomState(0).randint(0, 256, size=(6, 20, 20), dtype=np.uint8)  # (N, H, W): batch or volume?
    with pytest.raises(ImageError, match="pass list\\(array\\)"):
        model.predict_proba(greys, "chest")
    assert model.predict_proba(list(greys), "chest").shape == (6, 3)
    mixed = [Image.fromarray(_rgb_u8()), _rgb_u8(10, 40), torch.rand(3, 9, 9), png_bytes(Image.fromarray(_rgb_u8(5, 5)))]
    assert model.predict_proba(mixed, "derm").shape == (4, 2)
    probs = model.predict_proba(mixed, ["derm", "chest", "fundus", "derm"])
    assert [p.shape[0] for p in probs] == [2, 3, 2, 2]


def test_predict_restores_training_mode(tiny_clip):
    model = tiny_clip
    model.train()
    model.predict_proba(make_image_list(1), "chest")
    assert model.training
    model.eval()
    model.predict_proba(make_image_list(1), "chest")
    assert not model.training


def test_prompt_shared_adapter_with_visual_tokens_serves_domains(tiny_clip):
    model = tiny_clip
    model.add_shared_adapter("vpt", PromptConfig(n_visual_tokens=2), seed=3)
    images = make_image_list(3)
    single = model.predict_proba(images, "chest", adapter="vpt")
    mixed = model.predict_proba(images, ["chest", "chest", "derm"], adapter="vpt")
    torch.testing.assert_close(mixed[0], single[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], single[1], atol=1e-5, rtol=0)
