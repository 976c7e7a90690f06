"""Metrics for visual question answering and report generation (pure Python + numpy, offline).

Answers are compared after the official SQuAD normalisation (:func:`squad_normalize`, the
``normalize_answer`` of the SQuAD v1.1/v2.0 evaluation scripts): lower case, every ASCII punctuation
character removed (``"C5-C6"`` -> ``"c5c6"``, as SQuAD does), the articles *a*, *an*, *the* removed,
whitespace collapsed. So ``token_f1(["the left lung"], ["left lung"])`` is 1.0, as in SQuAD, and the
numbers are comparable with papers that score VQA with SQuAD's script. :func:`normalize_answer` is the
lighter normalisation used to *store* answers (VQA-RAD labels keep their hyphens and articles).

* Closed-ended questions: :func:`closed_accuracy`, strict equality of the normalised answers.
  It deliberately avoids two mistakes of widely copied VQA-RAD/SLAKE evaluation scripts: a
  substring test (which counts the prediction ``"normal"`` as correct for the answer ``"no"``),
  and leaving predictions that are neither "yes" nor "no" out of the denominator.
* Open-ended questions: :func:`exact_match` (SQuAD's exact match), :func:`token_f1` (SQuAD's
  bag-of-tokens F1; as in the SQuAD v2.0 script, an empty answer scores 1 against an empty reference
  and 0 otherwise) and :func:`token_recall`, the share of reference tokens found in the prediction,
  which is what LLaVA-Med style papers report as "open accuracy".
* Reports: :func:`bleu1`, corpus BLEU-1 (clipped unigram precision times the brevity penalty, as
  ``nltk.translate.bleu_score.corpus_bleu(..., weights=(1,))`` on the same tokens).

:func:`score_vqa` groups predictions by answer type and returns every metric per group plus the
group's main metric (``accuracy`` for closed, ``recall`` for open). Bad input (different lengths,
an empty set, non-string answers) raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

from .errors import MetricError

__all__ = [
    "MAIN_METRIC",
    "bleu1",
    "closed_accuracy",
    "exact_match",
    "normalize_answer",
    "score_vqa",
    "squad_normalize",
    "tokenize_answer",
    "token_f1",
    "token_recall",
]

#: The metric reported as a group's headline number by :func:`score_vqa`.
MAIN_METRIC = {"closed": "accuracy", "open": "recall"}

_SPACES = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?"
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def _text(text: object) -> str:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise MetricError(f"an answer must be a string (or a number), got {type(text).__name__}: {text!r}")
    return str(text)


def normalize_answer(text: object) -> str:
    """Lower case, strip, collapse inner whitespace and drop trailing ``.,;:!?`` (how answers are stored).

    Numbers are accepted (VQA-RAD stores a few answers as ints: ``4`` -> ``"4"``); ``None`` and
    other types raise ``ValueError``. The metrics compare :func:`squad_normalize` forms instead.
    """
    s = _SPACES.sub(" ", _text(text).lower()).strip()
    return s.rstrip(_TRAILING_PUNCT).rstrip()


def squad_normalize(text: object) -> str:
    """SQuAD's answer normalisation: lower case, punctuation removed, articles removed, whitespace collapsed."""
    s = "".join(ch for ch in _text(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def tokenize_answer(text: object) -> list[str]:
    """The tokens the metrics count: :func:`squad_normalize`'s words (``"The C5-C6 level."`` -> ``["c5c6", "level"]``)."""
    return squad_normalize(text).split()


def _pairs(predictions: Sequence[object], references: Sequence[object]) -> tuple[list[str], list[str]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise MetricError("predictions and references must be sequences of answers, not a single string")
    preds, refs = list(predictions), list(references)
    if len(preds) != len(refs):
        raise MetricError(f"got {len(preds)} predictions for {len(refs)} references; give one prediction per reference")
    if not refs:
        raise MetricError("cannot score an empty set of answers")
    return preds, refs


def exact_match(predictions: Sequence[object], references: Sequence[object]) -> float:
    """Share of predictions equal to their reference after :func:`squad_normalize` (SQuAD's exact match)."""
    preds, refs = _pairs(predictions, references)
    return float(np.mean([squad_normalize(p) == squad_normalize(r) for p, r in zip(preds, refs)]))


def closed_accuracy(predictions: Sequence[object], references: Sequence[object]) -> float:
    """Strict accuracy for closed-ended (e.g. yes/no) questions.

    A prediction is correct only when it equals the reference after :func:`squad_normalize`: ``"normal"``
    is *not* a correct ``"no"``, ``"yes, there is"`` is not a correct ``"yes"``, and every
    question counts in the denominator, whatever the model answered.
    """
    return exact_match(predictions, references)


def _f1_recall(prediction: object, reference: object) -> tuple[float, float]:
    pred, ref = Counter(tokenize_answer(prediction)), Counter(tokenize_answer(reference))
    if not pred or not ref:  # an empty answer only matches an empty answer
        same = float(not pred and not ref)
        return same, same
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0, 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall), recall


def token_f1(predictions: Sequence[object], references: Sequence[object]) -> float:
    """Mean bag-of-tokens F1 between each prediction and its reference (SQuAD's F1, tokens counted with multiplicity)."""
    preds, refs = _pairs(predictions, references)
    return float(np.mean([_f1_recall(p, r)[0] for p, r in zip(preds, refs)]))


def token_recall(predictions: Sequence[object], references: Sequence[object]) -> float:
    """Mean share of reference tokens present in the prediction ("open accuracy" in LLaVA-Med style papers).

    Tokens are counted with multiplicity (a reference "left left" needs "left" twice). Note that
    recall rewards long answers: a prediction listing many words scores high; report it with
    :func:`token_f1` or :func:`exact_match`.
    """
    preds, refs = _pairs(predictions, references)
    return float(np.mean([_f1_recall(p, r)[1] for p, r in zip(preds, refs)]))


def bleu1(predictions: Sequence[object], references: Sequence[object]) -> float:
    """Corpus BLEU-1: clipped unigram precision over all predictions times the brevity penalty.

    ``BP = 1`` when the predictions are longer in total than the references, else
    ``exp(1 - ref_len / pred_len)`` (0 when nothing was predicted). Score one report by passing
    one-element lists.
    """
    preds, refs = _pairs(predictions, references)
    clipped = pred_len = ref_len = 0
    for p, r in zip(preds, refs):
        pc, rc = Counter(tokenize_answer(p)), Counter(tokenize_answer(r))
        clipped += sum((pc & rc).values())
        pred_len += sum(pc.values())
        ref_len += sum(rc.values())
    if pred_len == 0:
        return 0.0
    brevity = 1.0 if pred_len > ref_len else math.exp(1.0 - ref_len / pred_len)
    return brevity * clipped / pred_len


def _group_metrics(preds: list[object], refs: list[object]) -> dict[str, float]:
    return {
        "n": len(refs),
        "accuracy": exact_match(preds, refs),
        "token_f1": token_f1(preds, refs),
        "recall": token_recall(preds, refs),
        "bleu1": bleu1(preds, refs),
    }


def score_vqa(
    predictions: Sequence[object], references: Sequence[object], answer_types: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Metrics per answer type, plus ``"overall"``.

    ``answer_types`` holds one type per question (e.g. VQA-RAD's ``"CLOSED"``/``"OPEN"``; case and
    surrounding spaces are ignored). Returns ``{type: {"n", "accuracy", "token_f1", "recall",
    "bleu1", "main"}}`` with lower-case type keys, where ``accuracy`` is strict exact match
    (:func:`closed_accuracy`) and ``main`` is the group's headline metric (:data:`MAIN_METRIC`:
    accuracy for closed, recall for open, accuracy otherwise). Plain floats and ints, ready for
    ``json.dump``.
    """
    preds, refs = _pairs(predictions, references)
    if isinstance(answer_types, str):
        raise MetricError("answer_types must be a sequence with one type per question, not a single string")
    types = list(answer_types)
    if len(types) != len(refs):
        raise MetricError(f"got {len(types)} answer types for {len(refs)} references; give one per question")
    keys = []
    for t in types:
        if not isinstance(t, str) or not t.strip():
            raise MetricError(f"an answer type must be a non-empty string such as 'CLOSED' or 'OPEN', got {t!r}")
        keys.append(t.strip().lower())
    if "overall" in keys:
        raise MetricError("'overall' is reserved for the metrics over all questions; rename that answer type")
    out: dict[str, dict[str, float]] = {}
    for key in sorted(set(keys)):
        idx = [i for i, k in enumerate(keys) if k == key]
        group = _group_metrics([preds[i] for i in idx], [refs[i] for i in idx])
        group["main"] = group[MAIN_METRIC.get(key, "accuracy")]
        out[key] = group
    overall = _group_metrics(preds, refs)
    overall["main"] = overall["accuracy"]
    out["overall"] = overall
    return out
