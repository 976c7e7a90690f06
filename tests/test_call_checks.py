"""Bad arguments to ``predict_proba`` and ``generate`` on tiny generative models get clear medadapt errors,
and ``generate`` never runs past the model's context (medadapt.call_checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt import ContinualVLM
from medadapt.errors import DomainError, InputError, MedAdaptError
from medadapt.tiny import tiny_base

QUESTION = "Is there pneumonia?"


def _images(n: int = 2) -> list[np.ndarray]:
    return [np.random.RandomState(i).randint(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(n)]


def _model(name: str) -> ContinualVLM:
    torch.manual_seed(0)
    model = ContinualVLM(tiny_base(name))
    model.add_domain("cxr", ["no", "yes"], f"{QUESTION} {{}}")
    model.add_domain("open", prompt="What is shown? {}", task="vqa")
    return model


@pytest.fixture(scope="module")
def llava() -> ContinualVLM:
    return _model("tiny-llava")


@pytest.fixture(scope="module")
def gemma() -> ContinualVLM:
    return _model("tiny-gemma3")


@pytest.mark.parametrize("value", [0, -1, 1.5, "8", True])
def test_max_new_tokens_must_be_a_positive_integer(llava, value):
    with pytest.raises(InputError, match="max_new_tokens must be a positive integer"):
        llava.generate(_images(), domain="cxr", max_new_tokens=value)


def test_huge_max_new_tokens_is_capped_at_the_context(llava, monkeypatch, core_single_thread):
    model = llava.scorer.model
    limit = llava.backbone.text_max_length()
    seen = []
    real = model.generate

    def bounded(*args, **kwargs):
        prompt = kwargs["input_ids"].shape[1]
        seen.append((prompt, kwargs["max_new_tokens"]))
        assert prompt + kwargs["max_new_tokens"] <= limit, "generation would run past the model's context"
        out = real(*args, **kwargs)
        seen.append((prompt, out.shape[1] - prompt))
        return out

    monkeypatch.setattr(model, "generate", bounded)
    answers = llava.generate(_images(1), domain="cxr", max_new_tokens=10**9)
    (prompt, budget), (_, generated) = seen
    assert prompt == len(llava.scorer.encode(QUESTION, []).context) and budget == limit - prompt
    assert len(answers) == 1 and generated <= budget
    llava.generate(_images(1), domain="cxr", max_new_tokens=3)
    assert seen[2][1] == 3  # small values are kept


def test_predict_proba_refuses_a_free_text_domain_alone_or_mixed(llava):
    for domain in ("open", ["cxr", "open"]):
        with pytest.raises(DomainError, match=r"'open' is a free-text domain \(task='vqa'\).*generate"):
            llava.predict_proba(_images(), domain)


@pytest.mark.parametrize("domain", [None, 123, ["cxr", 5]])
def test_predict_proba_domain_must_be_names(llava, domain):
    with pytest.raises(DomainError, match="domain must be a domain name"):
        llava.predict_proba(_images(), domain)


def test_generate_domain_must_be_names(llava):
    with pytest.raises(DomainError, match="domain must be a domain name"):
        llava.generate(_images(), domain=123)


@pytest.mark.parametrize("questions", [5, [QUESTION, 7], {"q": 1}])
def test_questions_of_the_wrong_type_are_refused_by_both_calls(llava, questions):
    with pytest.raises(InputError, match="question"):
        llava.predict_proba(_images(), "cxr", questions=questions)
    with pytest.raises(InputError, match="question"):
        llava.generate(_images(), questions=questions, domain="cxr", max_new_tokens=2)


@pytest.mark.parametrize("which, marker", [("llava", "<image>"), ("gemma", "<start_of_image>")])
def test_image_tokens_in_questions_or_labels_are_refused(request, which, marker):
    model = request.getfixturevalue(which)
    question = f"what {marker} is this?"
    with pytest.raises(InputError, match=f"contains {marker}"):
        model.predict_proba(_images(), "cxr", questions=question)
    with pytest.raises(InputError, match=f"contains {marker}"):
        model.generate(_images(), questions=question, max_new_tokens=2)
    try:
        model.add_domain("marked", ["plain", f"a {marker} b"], "Which? {}")
    except MedAdaptError as exc:  # refused up front is fine too, as long as it is clear
        assert marker in str(exc)
        return
    try:
        with pytest.raises(InputError, match=f"label 'a {marker} b' contains {marker}"):
            model.predict_proba(_images(), "marked")
    finally:
        model.remove_domain("marked")


def test_none_questions_ask_the_domains_own_question_in_both_calls(llava, core_single_thread):
    images = _images()
    own = llava.predict_proba(images, "cxr")
    assert torch.allclose(llava.predict_proba(images, "cxr", questions=[None, None]), own)
    assert not torch.allclose(llava.predict_proba(images, "cxr", questions="None"), own)  # the literal text differs
    mixed = llava.predict_proba(images, "cxr", questions=[None, QUESTION])
    assert torch.allclose(mixed, own)
    answers = llava.generate(images, domain="cxr", max_new_tokens=6)
    assert llava.generate(images, questions=[None, None], domain="cxr", max_new_tokens=6) == answers
    with pytest.raises(InputError, match="question 0 is None and no domain"):
        llava.generate(images, questions=[None, QUESTION], max_new_tokens=2)


def test_a_question_too_long_for_the_context_is_refused_the_same_way_by_both_calls(llava):
    question = "x" * 5000
    with pytest.raises(InputError) as scored:
        llava.predict_proba(_images(), "cxr", questions=question)
    with pytest.raises(InputError) as generated:
        llava.generate(_images(), questions=question, max_new_tokens=2)
    assert str(scored.value) == str(generated.value)
    assert "shorten the question" in str(scored.value) and str(llava.backbone.text_max_length()) in str(scored.value)
