"""Tests for medadapt.evaluation with hand-computed expected values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medadapt.evaluation import (
    accuracy,
    auroc,
    average_accuracy,
    backward_transfer,
    continual_summary,
    forgetting,
    forward_transfer,
    plot_accuracy_matrix,
)

# R[i, j] = accuracy on domain j after stage i
R3 = np.array(
    [
        [0.9, 0.2, 0.3],
        [0.7, 0.8, 0.4],
        [0.6, 0.7, 0.9],
    ]
)


def test_continual_metrics_hand_computed() -> None:
    # ACC = (0.6 + 0.7 + 0.9) / 3
    assert average_accuracy(R3) == pytest.approx(2.2 / 3)
    # BWT = ((0.6 - 0.9) + (0.7 - 0.8)) / 2 = -0.2
    assert backward_transfer(R3) == pytest.approx(-0.2)
    # forgetting: j=0: max(0.9, 0.7) - 0.6 = 0.3; j=1: max(0.2, 0.8) - 0.7 = 0.1 -> 0.2
    assert forgetting(R3) == pytest.approx(0.2)
    # FWT: (R[0,1] - 0.25) + (R[1,2] - 0.3) = -0.05 + 0.1 -> mean 0.025
    assert forward_transfer(R3, [0.5, 0.25, 0.3]) == pytest.approx(0.025)
    s = continual_summary(R3)
    assert s == pytest.approx({"average_accuracy": 2.2 / 3, "backward_transfer": -0.2, "forgetting": 0.2})


def test_forgetting_uses_all_earlier_rows_and_ignores_nan_upper() -> None:
    R = R3.copy()
    R[0, 1] = 0.85  # better before training on domain 1 than right after it
    # j=0: 0.9 - 0.6 = 0.3; j=1: max(0.85, 0.8) - 0.7 = 0.15 -> 0.225
    assert forgetting(R) == pytest.approx(0.225)
    Rn = R3.copy()
    Rn[0, 1] = Rn[0, 2] = Rn[1, 2] = np.nan  # not evaluated before training
    assert forgetting(Rn) == pytest.approx(0.2)
    assert backward_transfer(Rn) == pytest.approx(-0.2)
    assert average_accuracy(Rn) == pytest.approx(2.2 / 3)
    with pytest.raises(ValueError, match="R\\[j-1, j\\]"):
        forward_transfer(Rn, [0.5, 0.5, 0.5])


def test_single_stage_and_rectangular() -> None:
    assert backward_transfer([[0.7]]) == 0.0
    assert forgetting([[0.7]]) == 0.0
    assert forward_transfer([[0.7]], [0.5]) == 0.0
    assert average_accuracy([[0.7]]) == pytest.approx(0.7)
    # T=2 stages, D=3 domains (last never trained)
    R = np.array([[0.8, 0.1, 0.5], [0.6, 0.9, 0.4]])
    assert average_accuracy(R) == pytest.approx((0.6 + 0.9 + 0.4) / 3)
    assert backward_transfer(R) == pytest.approx(-0.2)


def test_matrix_validation_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        average_accuracy([0.5, 0.6])
    with pytest.raises(ValueError, match="fewer domain columns"):
        backward_transfer(np.zeros((3, 2)))
    bad = R3.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"R\[2, 0\]"):
        forgetting(bad)
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R3, [0.5])


def test_accuracy() -> None:
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(0.75)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy([0, 1, 1], scores) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="items"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_auroc_binary_with_ties() -> None:
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.4, 0.8, 0.35, 0.4]
    # positives {0.4, 0.8, 0.4}, negatives {0.1, 0.4, 0.35}:
    # each 0.4 beats 0.1 and 0.35 and ties 0.4 -> 2.5; 0.8 beats all -> 3; (2.5+2.5+3)/9
    assert auroc(y, s) == pytest.approx(8 / 9)
    two_col = np.stack([1 - np.asarray(s), s], axis=1)
    assert auroc(y, two_col) == pytest.approx(8 / 9)
    assert auroc([0, 1], [0.3, 0.3]) == pytest.approx(0.5)
    assert auroc([1, 0], [0.9, 0.1]) == pytest.approx(1.0)
    assert auroc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)


def test_auroc_multiclass_macro_ovr() -> None:
    y = [0, 1, 2, 2]
    p = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.2, 0.5, 0.4],
            [0.1, 0.3, 0.6],
            [0.3, 0.6, 0.4],
        ]
    )
    # class 0: 0.6 vs {0.2, 0.1, 0.3} -> 1
    # class 1: 0.5 vs {0.3, 0.3, 0.6} -> 2/3
    # class 2: {0.6, 0.4} vs {0.1, 0.4} -> (2 + 1.5) / 4 = 0.875
    expected = (1 + 2 / 3 + 0.875) / 3
    assert auroc(y, p) == pytest.approx(expected)
    sk = pytest.importorskip("sklearn.metrics")
    per_class = [sk.roc_auc_score(np.asarray(y) == c, p[:, c]) for c in range(3)]
    assert auroc(y, p) == pytest.approx(np.mean(per_class))


def test_auroc_single_class_is_nan_with_warning() -> None:
    with pytest.warns(RuntimeWarning, match="single class"):
        v = auroc([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(v)
    with pytest.raises(ValueError, match="binary AUROC"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="outside"):
        auroc([0, 3], np.full((2, 3), 1 / 3))


def test_plot_accuracy_matrix(tmp_path) -> None:
    out = plot_accuracy_matrix(R3, ["a", "b", "c"], tmp_path / "sub" / "R.png", title="demo")
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["R.png"]  # no temp file left behind
    Rn = R3.copy()
    Rn[0, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_accuracy_matrix(Rn, ["a", "b", "c"], out)
    with pytest.raises(ValueError, match="domain names"):
        plot_accuracy_matrix(R3, ["a", "b"], tmp_path / "x.png")
