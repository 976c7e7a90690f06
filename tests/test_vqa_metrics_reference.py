"""medadapt's VQA metrics against independent implementations on one fixed set of answers.

The reference exact match and F1 below are the logic of SQuAD's official evaluation script
(v2.0 ``evaluate-v2.0.py``: ``normalize_answer``, ``compute_exact``, ``compute_f1``), re-typed here
without importing medadapt; BLEU-1 is checked against nltk's ``corpus_bleu`` when nltk is installed
(the ``test`` extra).
"""

from __future__ import annotations

import collections
import re
import string

import pytest

from medadapt.vqa_metrics import bleu1, exact_match, token_f1, token_recall

PREDICTIONS = [
    "the left lung", "Left lung.", "right lower lobe", "No", "yes, there is", "an MRI", "ct",
    "C5-C6", "", "enlarged heart (cardiomegaly)", "a", "the the the cat", "bilateral pleural effusions",
    "T2-weighted MRI", "  Axial   plane ", "there is a fracture of the left femur",
]
REFERENCES = [
    "left lung", "left lung", "left lower lobe", "no", "yes", "MRI", "CT scan",
    "c5 c6", "", "cardiomegaly", "the", "the cat is on the mat", "pleural effusion",
    "t2 weighted", "axial", "left femur fracture",
]


# -- SQuAD v2.0 official script logic ----------------------------------------------------------------
def squad_normalize_answer(s):
    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_get_tokens(s):
    if not s:
        return []
    return squad_normalize_answer(s).split()


def squad_compute_exact(a_gold, a_pred):
    return int(squad_normalize_answer(a_gold) == squad_normalize_answer(a_pred))


def squad_compute_f1(a_gold, a_pred):
    gold_toks = squad_get_tokens(a_gold)
    pred_toks = squad_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def test_the_fixed_set_exercises_every_normalisation_step():
    assert squad_compute_f1("left lung", "the left lung") == 1.0  # articles
    assert squad_compute_exact("c5c6", "C5-C6") == 1  # punctuation removed, not split
    assert squad_compute_f1("", "") == 1 and squad_compute_f1("the", "a") == 1  # empty after normalisation


def test_exact_match_and_f1_equal_squads_official_logic():
    expected_em = [squad_compute_exact(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    expected_f1 = [squad_compute_f1(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    assert exact_match(PREDICTIONS, REFERENCES) == pytest.approx(sum(expected_em) / len(expected_em), abs=1e-12)
    assert token_f1(PREDICTIONS, REFERENCES) == pytest.approx(sum(expected_f1) / len(expected_f1), abs=1e-12)
    for p, r, em, f1 in zip(PREDICTIONS, REFERENCES, expected_em, expected_f1):  # per answer, for a readable failure
        assert exact_match([p], [r]) == em, (p, r)
        assert token_f1([p], [r]) == pytest.approx(f1, abs=1e-12), (p, r)


def test_token_recall_is_squads_recall():
    for p, r in zip(PREDICTIONS, REFERENCES):
        gold, pred = squad_get_tokens(r), squad_get_tokens(p)
        same = sum((collections.Counter(gold) & collections.Counter(pred)).values())
        expected = float(gold == pred) if not gold or not pred else same / len(gold)
        assert token_recall([p], [r]) == pytest.approx(expected, abs=1e-12), (p, r)


def test_bleu1_equals_nltk_corpus_bleu_on_the_same_tokens():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score", reason="nltk (the test extra) is not installed")
    nonempty = [(p, r) for p, r in zip(PREDICTIONS, REFERENCES) if squad_get_tokens(r)]  # nltk needs a reference
    preds, refs = [p for p, _ in nonempty], [r for _, r in nonempty]
    expected = bleu_score.corpus_bleu([[squad_get_tokens(r)] for r in refs], [squad_get_tokens(p) for p in preds], weights=(1.0,))
    assert bleu1(preds, refs) == pytest.approx(expected, abs=1e-12)
    for p, r in nonempty[:6]:  # sentence level too (one-element corpora)
        if squad_get_tokens(p):
            expected = bleu_score.corpus_bleu([[squad_get_tokens(r)]], [squad_get_tokens(p)], weights=(1.0,))
            assert bleu1([p], [r]) == pytest.approx(expected, abs=1e-12), (p, r)
