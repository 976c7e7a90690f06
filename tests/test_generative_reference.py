"""The generative family's public answers against references built from plain transformers + peft.

Nothing from medadapt sits between the reference and the model: the saved base is read with
``AutoProcessor`` / ``AutoModelForImageTextToText``, the domain's saved stage folder with
``PeftModel.from_pretrained``, and the prompt is the processor's own chat template. The label
score is the documented one: log-probability of the label's tokens plus EOS after the rendered
question (``" "`` + label, tokenised with the prompt and split where they part).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from medadapt import ContinualVLM
from medadapt.tiny import tiny_base

QUESTION = "Is there pneumonia?"
LABELS = ["no", "yes"]
NEW_TOKENS = 6


def _images(n: int = 3) -> list[Image.Image]:
    return [Image.fromarray(np.random.RandomState(i).randint(0, 255, (40, 36, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LLaVA ContinualVLM with one non-identity domain LoRA, and its save on disk."""
    model = ContinualVLM(tiny_base("tiny-llava"))
    torch.manual_seed(0)
    targets = model.family.default_lora_targets(model.base_model)
    model.add_domain("cxr", LABELS, f"{QUESTION} {{}}", adapter=LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    folder = tmp_path_factory.mktemp("gen-ref") / "save"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def plain(saved):
    """(processor, peft model, prompt) read from the save by plain transformers + peft only."""
    _, folder = saved
    processor = AutoProcessor.from_pretrained(folder / "base")
    peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(folder / "base"), folder / "cxr").eval()
    assert processor.chat_template, "tiny-llava's processor carries a chat template"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor, peft_model, prompt


def _reference_probs(processor, peft_model, prompt: str, images: list[Image.Image]) -> torch.Tensor:
    """Softmax over labels of log p(label tokens + EOS | image, prompt), one full forward per label."""
    eos = processor.tokenizer.eos_token_id
    rows = []
    with torch.no_grad():
        for image in images:
            context = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
            scores = []
            for label in LABELS:
                full = processor(text=[prompt + " " + label], images=[image], return_tensors="pt")
                ids = torch.cat([full["input_ids"][0], torch.tensor([eos])])
                assert torch.equal(ids[: len(context)], context)  # the answer extends the prompt's tokens
                logits = peft_model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], pixel_values=full["pixel_values"]).logits
                logp = logits[0].float().log_softmax(-1)
                scores.append(sum(logp[j - 1, ids[j]] for j in range(len(context), len(ids))))
            rows.append(torch.stack(scores).softmax(0))
    return torch.stack(rows)


def _reference_answers(processor, peft_model, prompt: str, images: list[Image.Image], adapter: bool) -> list[str]:
    """Greedy answers from plain ``generate``, with the domain's LoRA or with peft's adapter disabled."""
    answers = []
    with torch.no_grad():
        for image in images:
            inputs = processor(text=[prompt], images=[image], return_tensors="pt")
            if adapter:
                out = peft_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            else:
                with peft_model.disable_adapter():
                    out = peft_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            new = out[0, inputs["input_ids"].shape[1]:]
            answers.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers


def test_predict_proba_equals_plain_peft_and_differs_from_the_base(saved, plain):
    model, _ = saved
    images = _images()
    reference = _reference_probs(*plain, images)
    torch.testing.assert_close(model.predict_proba(images, domain="cxr"), reference, atol=1e-5, rtol=0)
    base = model.predict_proba(images, domain="cxr", adapter="base")
    assert (base - reference).abs().max() > 1e-3  # the domain's adapter changes the public answer


def test_generate_equals_plain_peft_generate_and_differs_from_the_base(saved, plain):
    model, _ = saved
    images = _images()
    with_adapter = _reference_answers(*plain, images, adapter=True)
    frozen_base = _reference_answers(*plain, images, adapter=False)
    assert with_adapter != frozen_base  # the reference itself tells the adapter from the base
    assert model.generate(images, domain="cxr", max_new_tokens=NEW_TOKENS) == with_adapter
    assert model.generate(images, questions=QUESTION, max_new_tokens=NEW_TOKENS) == frozen_base


def test_causal_lm_loss_equals_the_plain_transformers_loss_on_the_answer_tokens(saved, plain):
    from medadapt.training.objectives import Batch, build_objective

    model, _ = saved
    processor, peft_model, prompt = plain
    images = _images(2)
    answers = [LABELS[1], LABELS[0]]
    batch = Batch(model.preprocess(images), torch.tensor([1, 0]), ["cxr", "cxr"])
    loss, _ = build_objective("causal_lm")(model, batch, "cxr")
    # by hand: cross-entropy summed over each answer's tokens (+ EOS) after its prompt, averaged over all of them
    eos, total, count = processor.tokenizer.eos_token_id, 0.0, 0
    with torch.no_grad():
        for image, answer in zip(images, answers):
            context = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
            full = processor(text=[prompt + " " + answer], images=[image], return_tensors="pt")
            ids = torch.cat([full["input_ids"][0], torch.tensor([eos])])
            logits = peft_model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], pixel_values=full["pixel_values"]).logits[0].float()
            start = len(context)
            total += torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[start:], reduction="sum").item()
            count += len(ids) - start
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
