"""Metric functions against cases computed by hand (YouTube-8M definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.metrics import (
    accuracy_at_k,
    average_precision,
    evaluate_all,
    gap,
    hit_at_1,
    mean_ap,
    perr,
    recall_at_k,
)

# Two videos, three classes. Video 0 is labelled {0, 2}, video 1 {1}.
S = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5]])
Y = np.array([[1, 0, 1], [0, 1, 0]])


def test_gap_by_hand() -> None:
    # top-2 pooled: .9(+) .8(-) .7(-) .6(+); 3 positives in all (video 0's class 2 is outside its top 2)
    # GAP = (1/1 + 2/4) / 3
    assert gap(S, Y, k=2) == pytest.approx(0.5)
    # top-3 adds .5(-) and .1(+): (1 + 2/4 + 3/6) / 3
    assert gap(S, Y, k=3) == pytest.approx(2 / 3)
    assert gap(S, Y, k=20) == pytest.approx(2 / 3)  # k larger than C keeps every class


def test_gap_counts_positives_outside_top_k() -> None:
    s = np.array([[0.9, 0.8, 0.7, 0.1]])
    y = np.array([[1, 1, 1, 0]])
    assert gap(s, y, k=2) == pytest.approx(2 / 3)  # perfect ranking, but 1 of 3 positives never retrieved
    assert gap(s, y, k=3) == pytest.approx(1.0)


def test_hit_perr_map_by_hand() -> None:
    assert hit_at_1(S, Y) == pytest.approx(0.5)  # video 0 top = class 0 (+), video 1 top = class 0 (-)
    # PERR: video 0 top-2 = {0 (+), 1 (-)} -> 1/2; video 1 top-1 = {0 (-)} -> 0
    assert perr(S, Y) == pytest.approx(0.25)
    # AP per class: c0 [.9+, .7-] -> 1; c1 [.8-, .6+] -> 1/2; c2 [.5-, .1+] -> 1/2
    assert mean_ap(S, Y) == pytest.approx(2 / 3)


def test_accuracy_and_recall_by_hand() -> None:
    assert accuracy_at_k(S, Y, 1) == pytest.approx(0.5)
    assert accuracy_at_k(S, Y, 2) == pytest.approx(1.0)  # video 1's class 1 is second
    assert recall_at_k(S, Y, 1) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(S, Y, 2) == pytest.approx((1 / 2 + 1) / 2)
    assert recall_at_k(S, Y, 3) == pytest.approx(1.0)


def test_average_precision_by_hand() -> None:
    # ranking: + - + -  -> (1/1 + 2/3) / 2
    assert average_precision([4, 3, 2, 1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([4, 3, 2, 1], [0, 0, 0, 0]) == 0.0


def test_perfect_and_inverted_scores() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((50, 10)) < 0.2).astype(int)
    y[np.arange(50), rng.integers(0, 10, 50)] = 1  # every video has a label
    perfect = y + 0.01 * rng.random(y.shape)
    m = evaluate_all(perfect, y)
    for key in ("gap@20", "hit@1", "perr", "mAP", "top1_acc", "top5_acc", "recall@20"):
        assert m[key] == pytest.approx(1.0), key
    worst = evaluate_all(-perfect, y)
    assert worst["hit@1"] == 0.0 and worst["perr"] == 0.0
    assert worst["gap@20"] < 0.5


def test_unlabelled_videos_and_ties() -> None:
    s = np.array([[0.5, 0.5], [0.5, 0.5]])
    y = np.array([[0, 1], [0, 0]])
    # ties break towards the lower class id: video 0's top is class 0 (-); video 1 has no label (a miss)
    assert hit_at_1(s, y) == 0.0
    assert perr(s, y) == 0.0  # only video 0 counts: its top-1 is class 0
    assert recall_at_k(s, y, 2) == 1.0
    # pooled in stable order: v0c0(-) v0c1(+) v1c0(-) v1c1(-) -> the one positive at rank 2
    assert gap(s, y) == pytest.approx(0.5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="must both be"):
        gap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gap(np.array([[np.nan, 1.0]]), np.array([[1, 0]]))
