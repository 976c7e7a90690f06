"""Metrics for visual question answering and report generation (pure Python + numpy, offline).

All metrics compare *normalised* strings (:func:`normalize_answer`: lower case, surrounding
whitespace stripped, inner whitespace collapsed, trailing sentence punctuation dropped).

* Closed-ended questions: :func:`closed_accuracy`, strict equality of the normalised answers.
  It deliberately avoids two mistakes of widely copied VQA-RAD/SLAKE evaluation scripts: a
  substring test (which counts the prediction ``"normal"`` as correct for the answer ``"no"``),
  and leaving predictions that are neither "yes" nor "no" out of the denominator.
* Open-ended questions: :func:`exact_match`, :func:`token_f1` (SQuAD-style bag-of-tokens F1) and
  :func:`token_recall`, the share of reference tokens found in the prediction, which is what
  LLaVA-Med style papers report as "open accuracy".
* Reports: :func:`bleu1`, corpus BLEU-1 (clipped unigram precision times the brevity penalty).

:func:`score_vqa` groups predictions by answer type and returns every metric per group plus the
group's main metric (``accuracy`` for closed, ``recall`` for open). Bad input (different lengths,
an empty set, non-string answers) raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
import re
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
    "tokenize_answer",
    "token_f1",
    "token_recall",
]

#: The metric reported as a group's headline number by :func:`score_vqa`.
MAIN_METRIC = {"closed": "accuracy", "open": "recall"}

_SPACES = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?"
_TOKEN = re.compile(r"\w+")


def normalize_answer(text: object) -> str:
    """Lower case, strip, collapse inner whitespace and drop trailing ``.,;:!?``.

    Numbers are accepted (VQA-RAD stores a few answers as ints: ``4`` -> ``"4"``); ``None`` and
    other types raise ``ValueError``.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise MetricError(f"an answer must be a string (or a number), got {type(text).__name__}: {text!r}")
    s = _SPACES.sub(" ", str(text).lower()).strip()
    return s.rstrip(_TRAILING_PUNCT).rstrip()


def tokenize_answer(text: object) -> list[str]:
    """The word tokens (``\\w+`` runs) of the normalised answer: ``"C5-C6 level."`` -> ``["c5", "c6", "level"]``."""
    return _TOKEN.findall(normalize_answer(text))


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
    """Share of predictions equal to their reference after :func:`normalize_answer`."""
    preds, refs = _pairs(predictions, references)
    return float(np.mean([normalize_answer(p) == normalize_answer(r) for p, r in zip(preds, refs)]))


def closed_accuracy(predictions: Sequence[object], references: Sequence[object]) -> float:
    """Strict accuracy for closed-ended (e.g. yes/no) questions.

    A prediction is correct only when it equals the reference after normalisation: ``"normal"``
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
    """Mean bag-of-tokens F1 between each prediction and its reference (SQuAD style, tokens counted with multiplicity)."""
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
