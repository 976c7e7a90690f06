"""VQA / report metrics: strict closed accuracy (and the two known evaluation-script traps),
exact match, token F1, recall ("open accuracy"), corpus BLEU-1 against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from medadapt.vqa_metrics import (
    MAIN_METRIC,
    bleu1,
    closed_accuracy,
    exact_match,
    normalize_answer,
    score_vqa,
    token_f1,
    token_recall,
    tokenize_answer,
)


def test_normalize_lowercases_strips_collapses_and_drops_trailing_punctuation():
    assert normalize_answer("  Yes. ") == "yes"
    assert normalize_answer("Right   Lower\tLobe") == "right lower lobe"
    assert normalize_answer("Posterior-Anterior") == "posterior-anterior"
    assert normalize_answer(" superficial to the patient's skin") == "superficial to the patient's skin"
    assert normalize_answer(4) == "4"  # VQA-RAD stores a few answers as ints
    assert normalize_answer("") == ""
    assert tokenize_answer("The C5-C6 level.") == ["c5c6", "level"]  # SQuAD: punctuation and articles removed
    with pytest.raises(ValueError, match="must be a string"):
        normalize_answer(None)


def test_closed_accuracy_does_not_count_no_inside_normal():
    # a substring test ("no" in "normal") would score this 1.0
    assert closed_accuracy(["normal"], ["no"]) == 0.0
    assert closed_accuracy(["yes, there is"], ["yes"]) == 0.0
    assert closed_accuracy(["No."], ["no"]) == 1.0


def test_closed_accuracy_keeps_non_yes_no_predictions_in_the_denominator():
    preds = ["yes", "no", "maybe", "there is an effusion"]
    refs = ["yes", "yes", "no", "yes"]
    # one right out of four; dropping the two answers that are not yes/no would give 1/2
    assert closed_accuracy(preds, refs) == pytest.approx(0.25)


def test_exact_match_on_open_answers():
    preds = ["Left lung", "right lower lobe", "mri"]
    refs = ["left lung", "left lower lobe", "MRI "]
    assert exact_match(preds, refs) == pytest.approx(2 / 3)


def test_token_f1_and_recall_hand_computed():
    # common tokens {lower, lobe}: precision 2/3, recall 2/3, F1 2/3
    assert token_f1(["right lower lobe"], ["left lower lobe"]) == pytest.approx(2 / 3)
    assert token_recall(["right lower lobe"], ["left lower lobe"]) == pytest.approx(2 / 3)
    # a longer prediction holding the whole reference ("the" is dropped): recall 1, precision 2/3, F1 0.8
    assert token_recall(["the left lung base"], ["left lung"]) == 1.0
    assert token_f1(["the left lung base"], ["left lung"]) == pytest.approx(0.8)
    assert token_f1(["the left lung"], ["left lung"]) == 1.0  # as SQuAD's normalisation gives
    # multiplicity: the reference needs "left" twice
    assert token_recall(["left"], ["left left"]) == pytest.approx(0.5)
    # mean over questions; disjoint tokens score 0, two empty answers match
    assert token_f1(["x", "b", ""], ["x", "c", ""]) == pytest.approx(2 / 3)
    assert token_recall([""], ["left"]) == 0.0


def test_bleu1_matches_hand_computed_sentence_with_brevity_penalty():
    # clipped unigrams: "cat" min(3, 1) + "mat" 1 = 2 of 4 predicted; c=4 < r=5 -> BP = exp(1 - 5/4)
    expected = 0.5 * math.exp(-0.25)
    assert expected == pytest.approx(0.3894003915)
    assert bleu1(["cat cat cat mat"], ["cat is on big mat"]) == pytest.approx(expected)
    # no penalty when the prediction is longer than the reference ("the" is not a token)
    assert bleu1(["the cat sat on the mat today"], ["the cat is on the mat"]) == pytest.approx(3 / 5)
    assert bleu1([""], ["no acute findings"]) == 0.0
    assert bleu1(["no acute findings"], ["No acute findings."]) == 1.0


def test_bleu1_is_corpus_level_not_a_mean_of_sentences():
    preds = ["v w c d e", "x"]
    refs = ["v w", "x y z"]
    # totals: clipped 2 + 1 = 3, predicted 6, reference 5 -> BP 1, BLEU-1 = 3/6
    assert bleu1(preds, refs) == pytest.approx(0.5)
    sentence_mean = (bleu1(preds[:1], refs[:1]) + bleu1(preds[1:], refs[1:])) / 2
    assert sentence_mean == pytest.approx((2 / 5 + math.exp(1 - 3)) / 2)
    assert sentence_mean != pytest.approx(0.5)


def test_score_vqa_splits_by_answer_type():
    preds = ["yes", "normal", "maybe", "left lower lobe", "ct scan"]
    refs = ["yes", "no", "no", "left lobe", "mri"]
    types = ["CLOSED", "CLOSED ", "closed", "OPEN", "OPEN"]
    scores = score_vqa(preds, refs, types)
    assert set(scores) == {"closed", "open", "overall"}
    closed, open_, overall = scores["closed"], scores["open"], scores["overall"]
    assert closed["n"] == 3 and open_["n"] == 2 and overall["n"] == 5
    assert closed["accuracy"] == pytest.approx(1 / 3)
    assert closed["main"] == closed[MAIN_METRIC["closed"]] == closed["accuracy"]
    assert open_["accuracy"] == 0.0
    assert open_["recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert open_["token_f1"] == pytest.approx((0.8 + 0.0) / 2)  # P 2/3, R 1 -> F1 0.8
    assert open_["main"] == open_["recall"]
    assert overall["accuracy"] == pytest.approx(1 / 5)
    json.dumps(scores)  # plain numbers only


@pytest.mark.parametrize(
    "args, match",
    [
        ((["yes"], ["yes", "no"], ["CLOSED"] * 2), "1 predictions for 2 references"),
        (([], [], []), "empty"),
        (("yes", "yes", "CLOSED"), "not a single string"),
        ((["yes"], ["yes"], ["CLOSED", "OPEN"]), "2 answer types for 1 references"),
        ((["yes"], ["yes"], [" "]), "answer type must be a non-empty string"),
        ((["yes"], ["yes"], ["overall"]), "reserved"),
        (([None], ["yes"], ["CLOSED"]), "must be a string"),
    ],
)
def test_bad_input_names_the_problem(args, match):
    with pytest.raises(ValueError, match=match):
        score_vqa(*args)
