"""The generative family (image-text-to-text VLMs) on tiny LLaVA, Gemma 3, PaliGemma and Idefics3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel

from medadapt import ContinualVLM, PromptConfig
from medadapt.data import VQADataset
from medadapt.errors import AdapterError, BaseMismatchError, DataError, DomainError, UnsupportedBackboneError
from medadapt.families import family_for_model_type
from medadapt.tiny import tiny_base
from medadapt.tiny_generative import tiny_generative
from medadapt.training.objectives import Batch, build_objective

from .conftest import base_state_checksum, build_tiny_vlm, unchanged

GENERATIVE = ["tiny-llava", "tiny-gemma3", "tiny-paligemma", "tiny-idefics3"]
QUESTION = "Is there pneumonia?"


def _lora(model: ContinualVLM, r: int = 4) -> LoraConfig:
    """A non-identity LoRA (B != 0) on the family's default targets."""
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=model.family.default_lora_targets(model.base_model), init_lora_weights=False)


def _images(n: int = 4, size: tuple[int, int] = (40, 36)) -> list[np.ndarray]:
    return [np.random.RandomState(i).randint(0, 255, (*size, 3), dtype=np.uint8) for i in range(n)]


def _model(name: str) -> ContinualVLM:
    model = ContinualVLM(tiny_base(name))
    torch.manual_seed(0)
    model.add_domain("cxr", ["no", "yes"], f"{QUESTION} {{}}", adapter=_lora(model))
    model.add_domain("organ", ["head", "chest", "abdomen"], "Which organ is shown? {}", adapter=_lora(model))
    return model


@pytest.fixture(scope="module", params=GENERATIVE)
def gen(request) -> ContinualVLM:
    return _model(request.param)


def _naive_scores(model: ContinualVLM, images: list[np.ndarray], question: str, labels: list[str], adapter: str, token_types: bool = True) -> torch.Tensor:
    """Each label scored by its own full forward (no KV cache), straight through the transformers model."""
    scorer = model.scorer
    enc = scorer.encode(question, labels)
    pixel_values = model.preprocess(images)
    n, context = pixel_values.shape[0], len(enc.context)
    scores = []
    with torch.no_grad(), model.adapters.active([adapter]):
        for answer in enc.answers:
            ids = torch.cat([enc.context, answer]).unsqueeze(0).expand(n, -1)
            extra = {}
            if enc.context_types is not None and token_types:
                types = torch.cat([enc.context_types, torch.full_like(answer, enc.answer_type)])
                extra["token_type_ids"] = types.unsqueeze(0).expand(n, -1)
            logp = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), **scorer._image_inputs(pixel_values), **extra).logits
            logp = logp.float().log_softmax(-1)
            scores.append(sum(logp[:, context - 1 + j, answer[j]] for j in range(len(answer))))
    return torch.stack(scores, 1)


# -- loading ---------------------------------------------------------------------------------------
def test_built_models_load_into_the_generative_family(gen):
    assert gen.family.name == "image-text-to-text" and gen.family.pipeline_tag == "image-text-to-text"
    assert gen.family is family_for_model_type(gen.base_model.config.model_type)
    assert all(not p.requires_grad for n, p in gen.base_model.named_parameters() if "lora_" not in n)


def test_default_lora_targets_the_language_model_only(gen):
    wrapped = [n for n, m in gen.base_model.named_modules() if hasattr(m, "lora_A")]
    assert wrapped, "no LoRA layer was injected"
    language = "model.text_model." if gen.base_model.config.model_type == "idefics3" else "model.language_model."
    assert all(n.startswith(language) for n in wrapped), wrapped  # never the image tower or the projector
    tower = {id(p) for p in gen.vision_tower.parameters()}
    assert not any(id(p) in tower for p in gen.adapter_parameters("cxr"))


def test_idefics3_language_model_lives_at_text_model():
    model = ContinualVLM(tiny_base("tiny-idefics3"))
    assert hasattr(model.base_model.model, "text_model") and not hasattr(model.base_model.model, "language_model")
    assert model.family.default_lora_targets(model.base_model).startswith(r"^model\.text_model")


def test_unsupported_architecture_lists_the_supported_ones():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UnsupportedBackboneError, match="Supported families: .*clip.*image-text-to-text .*llava.*gemma3"):
        ContinualVLM(model, processor=object())


def test_a_generative_base_needs_its_processor():
    model, processor = tiny_generative("tiny-llava")
    with pytest.raises(UnsupportedBackboneError, match="needs its processor"):
        ContinualVLM(model, tokenizer=processor.tokenizer, image_processor=processor.image_processor)


def test_a_processor_that_needs_torchvision_says_so(monkeypatch):
    family = family_for_model_type("qwen2_vl")
    processor = type("Qwen2VLProcessor", (), {"tokenizer": object(), "image_processor": type("Qwen2VLImageProcessorFast", (), {})()})()
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name == "torchvision":
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(UnsupportedBackboneError, match="needs torchvision"):
        family.check_preprocessing(type("M", (), {"config": type("C", (), {"model_type": "qwen2_vl"})()})(), type(
            "P", (), {"processor": processor, "tokenizer": None, "image_processor": None})())


# -- scoring ---------------------------------------------------------------------------------------
def test_label_scores_equal_a_full_forward_per_label(gen):
    images = _images()
    probs = gen.predict_proba(images, domain="cxr")
    naive = _naive_scores(gen, images, QUESTION, ["no", "yes"], "cxr").softmax(-1)
    assert probs.shape == (4, 2)
    torch.testing.assert_close(probs, naive, atol=1e-5, rtol=0)


def test_the_prefix_is_encoded_once_for_all_labels(gen):
    calls = {"vision": 0, "model": 0}
    handles = [
        gen.vision_tower.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
        gen.base_model.register_forward_hook(lambda *a: calls.__setitem__("model", calls["model"] + 1)),
    ]
    try:
        gen.predict_proba(_images(3), domain="organ")  # 3 labels, multi-token answers
    finally:
        for h in handles:
            h.remove()
    assert calls == {"vision": 1, "model": 2}  # one prefix pass (image + question), one pass for all K answers


def test_gemma3_token_type_ids_are_passed_through():
    model = _model("tiny-gemma3")
    images = _images(2)
    scores = model.scorer.logits(model.preprocess(images), model.get_domain("cxr"), "cxr")
    with_types = _naive_scores(model, images, QUESTION, ["no", "yes"], "cxr")
    without = _naive_scores(model, images, QUESTION, ["no", "yes"], "cxr", token_types=False)
    torch.testing.assert_close(scores, with_types, atol=1e-4, rtol=0)
    assert not torch.allclose(with_types, without, atol=1e-3)  # image tokens would silently get causal attention


def test_paligemma_processor_labels_are_not_used_as_inputs():
    model = _model("tiny-paligemma")
    enc = model.scorer.encode(QUESTION, ["no", "yes"])
    assert enc.answer_type == 1 and int(enc.answers[0][-1]) == model.backbone.tokenizer.eos_token_id
    torch.testing.assert_close(model.predict_proba(_images(2), domain="cxr"), _naive_scores(model, _images(2), QUESTION, ["no", "yes"], "cxr").softmax(-1), atol=1e-5, rtol=0)


def test_mixed_domains_equal_per_domain_calls(gen):
    images = _images(4)
    domains = ["cxr", "organ", "organ", "cxr"]
    mixed = gen.predict_proba(images, domain=domains)
    for i, d in enumerate(domains):
        torch.testing.assert_close(mixed[i], gen.predict_proba(images[i : i + 1], domain=d)[0], atol=1e-5, rtol=0)


def test_per_image_questions_and_length_normalisation():
    model = _model("tiny-llava")
    images = _images(2)
    asked = ["Is the heart enlarged?", "Is there a fracture?"]
    probs = model.predict_proba(images, domain="cxr", questions=asked)
    for i, q in enumerate(asked):
        torch.testing.assert_close(probs[i], _naive_scores(model, images[i : i + 1], q, ["no", "yes"], "cxr").softmax(-1)[0], atol=1e-5, rtol=0)
    model.scorer.length_normalize = True
    try:
        normalised = model.predict_proba(images, domain="organ")
    finally:
        model.scorer.length_normalize = False
    raw = _naive_scores(model, images, "Which organ is shown?", ["head", "chest", "abdomen"], "organ")
    lengths = torch.tensor([len(a) for a in model.scorer.encode("Which organ is shown?", ["head", "chest", "abdomen"]).answers])
    torch.testing.assert_close(normalised, (raw / lengths).softmax(-1), atol=1e-5, rtol=0)


def test_context_and_answer_are_tokenised_together_and_split_where_they_part():
    model = _model("tiny-llava")
    enc = model.scorer.encode(QUESTION, ["no", "yes"])
    tokenizer = model.backbone.tokenizer
    prompt = model.scorer.render(QUESTION)
    assert prompt.startswith("USER: <image>") and prompt.endswith("ASSISTANT:")  # the chat template was applied
    assert tokenizer.decode(enc.answers[1], skip_special_tokens=True).strip() == "yes"
    assert int(enc.answers[1][-1]) == tokenizer.eos_token_id


# -- generation ------------------------------------------------------------------------------------
def test_mixed_generation_equals_per_domain_generation(gen):
    images = _images(4)
    domains = ["cxr", "organ", "cxr", "organ"]
    mixed = gen.generate(images, domain=domains, max_new_tokens=6)
    single = {d: gen.generate(images, domain=d, max_new_tokens=6) for d in set(domains)}
    assert mixed == [single[d][i] for i, d in enumerate(domains)]
    assert all(isinstance(text, str) for text in mixed)


def test_generate_with_questions_and_the_base():
    model = _model("tiny-llava")
    out = model.generate(_images(2), questions="What is shown?", max_new_tokens=4)
    assert len(out) == 2
    with pytest.raises(DomainError, match="give the questions"):
        model.generate(_images(2))
    with pytest.raises(DomainError, match="2 images but 3 questions"):
        model.generate(_images(2), questions=["a", "b", "c"])


def test_a_dual_encoder_cannot_generate():
    model = build_tiny_vlm("clip")
    with pytest.raises(UnsupportedBackboneError, match="does not generate text"):
        model.generate(_images(1), questions="what?")
    with pytest.raises(DomainError, match="task 'vqa' needs a generative base"):
        model.add_domain("open", task="vqa")


# -- training --------------------------------------------------------------------------------------
def test_causal_lm_loss_covers_the_answer_tokens_only():
    model = _model("tiny-llava")
    pixel_values = model.preprocess(_images(2))
    batch = Batch(pixel_values, torch.tensor([1, 0]), ["cxr", "cxr"])
    model.set_trainable(["cxr"])
    loss, report = build_objective("causal_lm")(model, batch, "cxr")
    loss.backward()
    assert all(p.grad is not None for p in model.adapter_parameters("cxr"))
    model.set_trainable([])
    # the same loss by hand: cross-entropy on the answer tokens of "yes" and "no", nothing else
    enc = model.scorer.encode(QUESTION, ["yes", "no"])
    total, count = 0.0, 0
    with torch.no_grad(), model.adapters.active(["cxr"]):
        for row, answer in enumerate(enc.answers):
            ids = torch.cat([enc.context, answer]).unsqueeze(0)
            logits = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), **model.scorer._image_inputs(pixel_values[row : row + 1])).logits[0].float()
            start = len(enc.context)
            total += torch.nn.functional.cross_entropy(logits[start - 1 : -1], answer, reduction="sum").item()
            count += len(answer)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert 0.0 <= report["acc"] <= 1.0


def test_free_text_answers_train_and_a_too_long_answer_is_refused():
    model = _model("tiny-llava")
    model.add_domain("open", task="vqa", adapter=_lora(model))
    pixel_values = model.preprocess(_images(2))
    batch = Batch(pixel_values, torch.tensor([-1, -1]), ["open", "open"], ["What organ?", "Which side?"], ["the liver", "left"])
    loss, _ = build_objective("causal_lm")(model, batch, "open")
    assert torch.isfinite(loss)
    long = Batch(pixel_values[:1], torch.tensor([-1]), ["open"], ["Describe"], ["x" * 600])
    with pytest.raises(DomainError, match="longer than the model's maximum length"):
        build_objective("causal_lm")(model, long, "open")


def test_vqa_records_need_an_answer_and_a_question():
    images = np.zeros((2, 8, 8), dtype=np.uint8)
    with pytest.raises(DataError, match="sample 1 has no answer"):
        VQADataset(images, [-1, -1], ["q1", "q2"], ["a", ""])
    with pytest.raises(DataError, match="sample 0 has no question"):
        VQADataset(images, [-1, -1], [None, "q2"], ["a", "b"])


def test_prompt_adapters_are_refused_on_a_generative_base():
    model = ContinualVLM(tiny_base("tiny-llava"))
    with pytest.raises(AdapterError, match="prompt adapters .* not supported on the 'image-text-to-text' family"):
        model.add_domain("cxr", ["no", "yes"], "Pneumonia? {}", adapter=PromptConfig())
    assert "cxr" not in model.domains and model.adapter_names() == []


# -- stage files, plain peft, base ------------------------------------------------------------------
def test_save_load_round_trip_plain_peft_and_a_frozen_base(tmp_path):
    model = _model("tiny-gemma3")
    before = base_state_checksum(model)
    images = _images(3)
    probs = model.predict_proba(images, domain="cxr")
    answers = model.generate(images, domain="organ", max_new_tokens=4)
    model.save_pretrained(tmp_path / "save")
    files = sorted(p.name for p in (tmp_path / "save" / "base").iterdir())
    assert "chat_template.jinja" in files and "processor_config.json" in files  # the processor travels with the base
    restored = ContinualVLM.from_pretrained(tmp_path / "save")
    assert torch.equal(restored.predict_proba(images, domain="cxr"), probs)
    assert restored.generate(images, domain="organ", max_new_tokens=4) == answers
    assert base_state_checksum(model) == before == base_state_checksum(restored)
    # plain transformers + peft read the same stage folder and give the same logits
    from transformers import AutoModelForImageTextToText

    plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tmp_path / "save" / "base"), tmp_path / "save" / "cxr")
    enc = model.scorer.encode(QUESTION, ["yes"])
    ids = torch.cat([enc.context, enc.answers[0]]).unsqueeze(0)
    extra = {"token_type_ids": torch.cat([enc.context_types, torch.zeros_like(enc.answers[0])]).unsqueeze(0)}
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), **model.scorer._image_inputs(model.preprocess(images[:1])), **extra)
    with torch.no_grad(), model.adapters.active(["cxr"]):
        ours = model.base_model(**inputs).logits
    with torch.no_grad():
        theirs = plain(**inputs).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_stage_of_one_family_is_refused_by_the_other(tmp_path):
    generative = _model("tiny-llava")
    generative.save_pretrained(tmp_path / "gen")
    clip = build_tiny_vlm("clip", with_domains=False)
    with unchanged(clip), pytest.raises(BaseMismatchError, match="saved on a generative base .* this model is a dual-encoder"):
        clip.load_adapter(tmp_path / "gen", name="cxr")
    assert clip.adapter_names() == []
    build_tiny_vlm("clip").save_pretrained(tmp_path / "clip")
    with unchanged(generative), pytest.raises(BaseMismatchError, match="saved on a dual-encoder base .* this model is a generative"):
        generative.load_adapter(tmp_path / "clip", name="chest")
    assert generative.adapter_names() == ["cxr", "organ"]


def test_model_card_carries_the_image_text_to_text_tag(tmp_path):
    from medadapt.hub.card import render_card
    from medadapt.saves.manifest import read_manifest

    model = _model("tiny-llava")
    model.save_pretrained(tmp_path / "save")
    card = render_card(read_manifest(tmp_path / "save"), "org/gen-stages")
    assert card.data.pipeline_tag == "image-text-to-text"
    assert "AutoModelForImageTextToText" in card.text and "generative" in card.text


def test_auto_routing_reads_the_vision_tower():
    model = _model("tiny-llava")
    rng = np.random.RandomState(0)
    dark = [rng.randint(0, 60, (32, 32, 3), dtype=np.uint8) for _ in range(12)]
    bright = [rng.randint(190, 255, (32, 32, 3), dtype=np.uint8) for _ in range(12)]
    model.fit_router({"cxr": dark, "organ": bright}, threshold=0.99, fallback=None)
    preds = model.predict_proba(dark[:2] + bright[:2], domain="auto")
    assert [p.domain for p in preds] == ["cxr", "cxr", "organ", "organ"]
    assert preds[0].labels == ["no", "yes"] and preds[2].probs.shape == (3,)


# -- large bases --------------------------------------------------------------------------------------
def test_model_kwargs_reach_from_pretrained_and_qlora_needs_bitsandbytes(tmp_path):
    import importlib.util

    from medadapt.errors import MissingExtraError
    from medadapt.quantization import quantization_config

    model, processor = tiny_generative("tiny-llava")
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    loaded = ContinualVLM.from_base(str(tmp_path / "base"), model_kwargs={"attn_implementation": "eager"})
    assert loaded.base_model.config._attn_implementation == "eager" and loaded.family.name == "image-text-to-text"
    assert loaded.backbone.fingerprints == ContinualVLM(model, processor=processor).backbone.fingerprints
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(MissingExtraError, match="pip install bitsandbytes"):
            ContinualVLM.from_base(str(tmp_path / "base"), quantization="4bit")
    else:  # pragma: no cover - machines with bitsandbytes (and a GPU)
        assert quantization_config("4bit").load_in_4bit
    with pytest.raises(UnsupportedBackboneError, match="quantization must be one of"):
        quantization_config("3bit")


def test_one_question_through_different_adapters_per_row(gen):
    """Rows sharing a question but not an adapter (e.g. routed rows and the shared fallback): one prefix pass
    and one answer pass with per-row adapters, equal to each adapter's own call."""
    images = _images(3)
    pixel_values = gen.preprocess(images)
    mixed = gen.probs_mixed(pixel_values, ["organ", "organ", "organ"], ["organ", None, "cxr"])
    for i, adapter in enumerate(["organ", "base", "cxr"]):
        own = gen.predict_proba(images[i : i + 1], domain="organ", adapter=adapter)[0]
        torch.testing.assert_close(mixed[i], own, atol=1e-5, rtol=0)
