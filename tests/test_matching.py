"""Tests of lcseg_steps.evaluation.matching: each matching against brute force (every
injective map, IoU by plain counting) and against scipy's assignment on hand-built cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lcseg_steps.evaluation.matching import (
    hungarian_match,
    iou_hungarian_match,
    iou_majority_match,
    iou_matrix,
    majority_match,
    pixel_hungarian_rows,
)


def _brute_force_best(conf):
    """Best total agreement over all injective maps between predicted ids and gt classes."""
    n_gt, n_pred = conf.shape
    best = -1
    if n_pred <= n_gt:
        for rows in itertools.permutations(range(n_gt), n_pred):
            best = max(best, sum(conf[r, c] for c, r in enumerate(rows)))
    else:
        for cols in itertools.permutations(range(n_pred), n_gt):
            best = max(best, sum(conf[r, c] for r, c in enumerate(cols)))
    return best


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_hungarian_equals_brute_force(shape):
    rng = np.random.default_rng(3)
    for _ in range(20):
        conf = rng.integers(0, 100, size=shape)
        mapping = hungarian_match(conf)
        assert mapping.shape == (shape[1],) and mapping.dtype == np.int64
        matched = mapping[mapping >= 0]
        assert len(set(matched.tolist())) == len(matched)  # one-to-one
        assert len(matched) == min(shape)
        total = sum(conf[mapping[c], c] for c in range(shape[1]) if mapping[c] >= 0)
        assert total == _brute_force_best(conf)


def test_majority_match_known_case():
    conf = np.array(
        [
            [10, 0, 5, 0],
            [2, 8, 9, 0],
            [0, 1, 1, 0],
        ]
    )
    np.testing.assert_array_equal(majority_match(conf), [0, 1, 1, -1])


def _iou(conf, g, k):
    """IoU of class ``g`` and predicted id ``k`` by plain counting (0 when both are empty)."""
    inter = conf[g][k]
    union = sum(conf[g]) + sum(row[k] for row in conf) - inter
    return inter / union if union else 0.0


def test_iou_matrix_equals_counting():
    rng = np.random.default_rng(7)
    conf = rng.integers(0, 50, size=(4, 6))
    conf[:, 2] = 0  # an id never predicted
    want = [[_iou(conf.tolist(), g, k) for g in range(4)] for k in range(6)]
    np.testing.assert_allclose(iou_matrix(conf), want, rtol=0, atol=1e-15)


def test_iou_hungarian_equals_brute_force():
    rng = np.random.default_rng(8)
    for _ in range(20):
        conf = rng.integers(0, 100, size=(4, 4))
        mapping = iou_hungarian_match(conf)
        assert sorted(mapping.tolist()) == [0, 1, 2, 3]  # a permutation
        best = max(
            sum(_iou(conf.tolist(), g, k) for k, g in enumerate(m))
            for m in itertools.permutations(range(4))
        )
        got = sum(_iou(conf.tolist(), g, k) for k, g in enumerate(mapping.tolist()))
        assert got == pytest.approx(best, abs=1e-12)


def test_iou_hungarian_needs_a_square_confusion():
    with pytest.raises(ValueError, match="as many ids as classes"):
        iou_hungarian_match(np.ones((3, 4), np.int64))


def test_iou_majority_takes_the_class_of_highest_iou_ties_to_the_lower():
    rng = np.random.default_rng(9)
    conf = rng.integers(0, 30, size=(5, 7))
    conf[:, 3] = 0  # every IoU 0: class 0
    want = [max(range(5), key=lambda g, k=k: (_iou(conf.tolist(), g, k), -g)) for k in range(7)]
    assert iou_majority_match(conf).tolist() == want


def test_pixel_hungarian_rows_equals_brute_force():
    rng = np.random.default_rng(10)
    for _ in range(20):
        conf = rng.integers(0, 100, size=(4, 4))
        mapping = pixel_hungarian_rows(conf)
        assert sorted(mapping.tolist()) == [0, 1, 2, 3]
        total = sum(conf[g, k] for k, g in enumerate(mapping.tolist()))
        assert total == _brute_force_best(conf)
