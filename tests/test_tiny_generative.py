"""Tiny generative VLMs built from config: processor -> forward -> generate, save/load round trip,
and the known traps of each family (Gemma 3 token_type_ids, PaliGemma labels and added tokens,
Idefics3's nested text model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.errors import UnsupportedBackboneError
from medadapt.tiny_generative import (
    TINY_GENERATIVE_NAMES,
    generative_byte_tokenizer,
    tiny_generative,
)

# A prompt per family with exactly one image placeholder, and the number of image tokens it
# must expand to (LLaVA: 4x4 patches; Gemma 3: pooled to 2x2; PaliGemma: 4x4; Idefics3: 4x4
# pixel-shuffled by 2).
PROMPTS = {
    "tiny-llava": ("USER: <image>\nIs there a fracture? ASSISTANT:", 16),
    "tiny-gemma3": ("<start_of_image> Is there a fracture?", 4),
    "tiny-paligemma": ("<image>answer en Is there a fracture?", 16),
    "tiny-idefics3": ("User:<image> Is there a fracture?<end_of_utterance>\nAssistant:", 4),
}


def _image(seed: int = 0, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _inputs(name: str, processor, n: int = 1) -> dict:
    text, _ = PROMPTS[name]
    # one list of images per prompt: Gemma 3 reads a flat list as all images of one prompt
    return processor(images=[[_image(i)] for i in range(n)], text=[text] * n, return_tensors="pt")


def _image_token_id(model) -> int:
    return model.config.image_token_id


def test_names_are_the_four_families():
    assert set(TINY_GENERATIVE_NAMES) == {"tiny-llava", "tiny-gemma3", "tiny-paligemma", "tiny-idefics3"}


@pytest.mark.parametrize("name", TINY_GENERATIVE_NAMES)
def test_processor_forward_gives_logits_over_the_whole_vocabulary(name):
    model, processor = tiny_generative(name)
    tokenizer = processor.tokenizer
    # vocab sized after the processor added its tokens, image ids taken from the tokenizer
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert tokenizer.convert_ids_to_tokens(_image_token_id(model)) in ("<image>", "<image_soft_token>")

    inputs = _inputs(name, processor, n=2)
    ids = inputs["input_ids"]
    expected_image_tokens = PROMPTS[name][1]
    assert (ids == _image_token_id(model)).sum(dim=1).tolist() == [expected_image_tokens] * 2
    assert int(ids.max()) < len(tokenizer)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    # the image reaches the logits: another image gives other logits for the same text
    other = processor(images=[[_image(7)], [_image(8)]], text=[PROMPTS[name][0]] * 2, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**other).logits[:, -1], logits[:, -1])


@pytest.mark.parametrize("name", TINY_GENERATIVE_NAMES)
def test_generate_appends_new_tokens(name):
    model, processor = tiny_generative(name)
    inputs = _inputs(name, processor)
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_len + 3)
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])
    assert isinstance(processor.decode(out[0, prompt_len:], skip_special_tokens=True), str)
    again = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(out, again)


@pytest.mark.parametrize("name", TINY_GENERATIVE_NAMES)
def test_same_seed_same_weights_and_global_rng_untouched(name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_generative(name, seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # the global generator was restored
    b, _ = tiny_generative(name, seed=0)
    c, _ = tiny_generative(name, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", TINY_GENERATIVE_NAMES)
def test_save_and_auto_load_round_trip_offline(name, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = tiny_generative(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert ("chat_template.jinja" in files) == (processor.chat_template is not None)

    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert type(loaded_processor) is type(processor)
    assert len(loaded_processor.tokenizer) == len(processor.tokenizer)
    assert loaded_processor.chat_template == processor.chat_template

    a, b = _inputs(name, processor), _inputs(name, loaded_processor)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(**a).logits, loaded(**b).logits)


def test_gemma3_needs_token_type_ids_for_bidirectional_image_attention():
    model, processor = tiny_generative("tiny-gemma3")
    inputs = _inputs("tiny-gemma3", processor)
    image_positions = inputs["input_ids"][0] == _image_token_id(model)
    assert inputs["token_type_ids"][0].bool().tolist() == image_positions.tolist()
    without = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    with torch.no_grad():
        full = model(**inputs).logits[0]
        causal = model(**without).logits[0]
    first_image = int(image_positions.nonzero()[0])
    # before the image nothing changes; on the image tokens (and after) dropping the ids changes
    # the logits, because the image tokens then attend causally instead of to the whole image
    assert torch.equal(full[:first_image], causal[:first_image])
    assert not torch.allclose(full[image_positions], causal[image_positions], atol=1e-4)
    assert not torch.allclose(full[-1], causal[-1], atol=1e-5)


def test_paligemma_processor_makes_its_own_labels_from_the_suffix():
    model, processor = tiny_generative("tiny-paligemma")
    text = PROMPTS["tiny-paligemma"][0]
    batch = processor(images=[_image()], text=[text], suffix=["yes"], return_tensors="pt")
    ids, labels, types = batch["input_ids"][0], batch["labels"][0], batch["token_type_ids"][0]
    suffix = types == 1
    suffix_ids = processor.tokenizer("yes", add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    assert ids[suffix].tolist() == suffix_ids  # the answer plus eos, appended after the prompt
    assert torch.equal(labels[suffix], ids[suffix])
    assert (labels[~suffix] == -100).all()  # the prompt (image, bos, question) is masked
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0
    # without a suffix the processor still returns labels, all masked
    plain = processor(images=[_image()], text=[text], return_tensors="pt")
    assert (plain["labels"] == -100).all()


def test_paligemma_vocab_is_sized_after_the_processor_adds_its_tokens():
    model, processor = tiny_generative("tiny-paligemma")
    bare = generative_byte_tokenizer({"image_token": "<image>"})
    # the processor added 1024 <locXXXX> and 128 <segXXX> tokens to the tokenizer it was given
    assert len(processor.tokenizer) == len(bare) + 1024 + 128
    loc = processor.tokenizer.convert_tokens_to_ids("<loc1023>")
    assert loc == len(processor.tokenizer) - 129
    assert model.get_input_embeddings().num_embeddings > loc
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


def test_idefics3_language_model_is_nested_at_model_text_model():
    from transformers import LlamaModel

    model, _ = tiny_generative("tiny-idefics3")
    assert isinstance(model.model.text_model, LlamaModel)
    assert not hasattr(model.model, "language_model")
    assert model.get_decoder() is model.model.text_model
    # the other three keep it at model.language_model
    for name in ("tiny-llava", "tiny-gemma3", "tiny-paligemma"):
        other, _ = tiny_generative(name)
        assert other.get_decoder() is other.model.language_model


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-gemma3", "tiny-idefics3"])
def test_chat_template_places_the_image_and_runs(name):
    model, processor = tiny_generative(name)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Any effusion?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "Any effusion?" in prompt
    placeholder = "<start_of_image>" if name == "tiny-gemma3" else "<image>"
    assert prompt.count(placeholder) == 1
    inputs = processor(images=[_image()], text=[prompt], add_special_tokens=False, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(processor.tokenizer.bos_token_id) <= 1
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == len(ids)


def test_gemma3_chat_template_starts_with_bos_like_the_real_one():
    _, processor = tiny_generative("tiny-gemma3")
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    bos = processor.tokenizer.bos_token_id
    # tokenising the rendered chat with special tokens doubles bos, as with google/gemma-3
    assert processor.tokenizer(prompt)["input_ids"][:2] == [bos, bos]
    assert processor.tokenizer(prompt, add_special_tokens=False)["input_ids"].count(bos) == 1


def test_byte_tokenizer_round_trips_any_text_and_adds_no_eos():
    tokenizer = generative_byte_tokenizer({"image_token": "<image>"})
    text = "Left Lower-Lobe opacity: 3.5 cm, ödème? <image> ✓"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert ids.count(tokenizer.image_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<bos>" + text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<image>", "")


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnsupportedBackboneError, match="tiny-llava.*tiny-gemma3"):
        tiny_generative("tiny-qwen2-vl")
