"""Scene mode's levels (lcseg_steps/clustering/scene.py) against references computed
apart from it: the segment shares and majority by counting in plain Python, the class
probabilities by a float64 softmax, the consistent scores by the formula, and planted
features whose classes and segments are recovered."""

from collections import Counter

import numpy as np
import pytest

from lcseg_steps.clustering.scene import (
    check_n_classes,
    class_probabilities,
    dataset_labels,
    scene_levels,
    scene_scores,
    segment_majority,
    segment_shares,
)


def _brute_majority(labels, segments):
    """Each row's segment majority by counting (ties to the lowest class)."""
    out = []
    for s in segments:
        c = Counter(int(lab) for lab, t in zip(labels, segments, strict=True) if t == s)
        best = max(c.values())
        out.append(min(k for k, v in c.items() if v == best))
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_segment_majority_and_shares_match_counting(seed):
    rng = np.random.default_rng(seed)
    n, C = 60, 5
    labels = rng.integers(0, C, n)
    segments = rng.choice([3, 7, 11, 40], n)  # any ids, not 0..k-1
    assert np.array_equal(segment_majority(labels, segments, C), _brute_majority(labels, segments))
    shares = segment_shares(labels, segments, C)
    for i in range(n):
        members = labels[segments == segments[i]]
        expect = np.bincount(members, minlength=C) / len(members)
        np.testing.assert_allclose(shares[i], expect, rtol=1e-6)


def test_a_tie_goes_to_the_lowest_class():
    assert segment_majority(np.array([2, 1, 1, 2]), np.zeros(4, int), 3).tolist() == [1] * 4


def test_class_probabilities_are_a_softmax_of_cosines():
    rng = np.random.default_rng(0)
    X, Cen = rng.normal(size=(20, 8)), rng.normal(size=(4, 8))
    cos = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (
        Cen / np.linalg.norm(Cen, axis=1, keepdims=True)
    ).T
    e = np.exp(cos / 0.2)
    np.testing.assert_allclose(class_probabilities(X, Cen, 0.2), e / e.sum(1, keepdims=True), 1e-5)
    assert np.array_equal(dataset_labels(X, Cen), np.argmax(cos, axis=1))
    # a zero row: uniform, never NaN
    p = class_probabilities(np.zeros((1, 8)), Cen, 0.2)
    np.testing.assert_allclose(p, 0.25)


def test_scores_mix_the_patch_and_its_segment():
    P = np.array([[0.7, 0.3], [0.2, 0.8]], np.float32)
    S = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(scene_scores(P, S, 0.25), 0.75 * P + 0.25 * S)
    np.testing.assert_allclose(scene_scores(P, S, 0.0), P)
    with pytest.raises(ValueError, match="segment_weight"):
        scene_scores(P, S, 1.5)


def _planted(rng, n_images=4, C=3, D=16, grid=(6, 6), noise=0.3):
    """Images whose left half is one class and right half another, features = class
    prototype + noise; returns X, offsets, the true class per row and the prototypes."""
    protos = np.eye(C, D) * 3.0
    xs, truth = [], []
    for i in range(n_images):
        a, b = i % C, (i + 1) % C
        cls = np.repeat([[a] * (grid[1] // 2) + [b] * (grid[1] - grid[1] // 2)], grid[0], 0)
        cls = cls.ravel()
        truth.append(cls)
        xs.append(protos[cls] + noise * rng.normal(size=(cls.size, D)))
    off = np.arange(n_images + 1) * grid[0] * grid[1]
    return np.concatenate(xs).astype(np.float32), off, np.concatenate(truth), protos


def test_planted_classes_and_segments_are_recovered():
    rng = np.random.default_rng(1)
    X, off, truth, protos = _planted(rng)
    kw = dict(max_iter=30, tol=1e-6, seed=0, device="cpu", temperature=0.1)
    out = scene_levels(X, off, protos, k_image=2, segment_weight=1.0, **kw)
    assert np.array_equal(out["dataset_label"], truth)
    assert np.array_equal(out["label"], truth)  # each half one segment, its class
    assert out["scores"].shape == (len(X), 3)
    np.testing.assert_allclose(out["scores"].sum(1), 1.0, rtol=1e-5)
    # weight 0: the dataset level alone, no image level (one segment per image)
    base = scene_levels(X, off, protos, k_image=2, segment_weight=0.0, **kw)
    assert np.array_equal(base["label"], base["dataset_label"])
    assert not base["segment"].any()


def test_a_segment_overrules_a_stray_patch():
    rng = np.random.default_rng(2)
    X, off, truth, protos = _planted(rng, noise=0.05)
    X[5] = protos[2] * 1.0 + X[5] * 0.2  # one patch of image 0's right half looks like class 2
    kw = dict(max_iter=30, tol=1e-6, seed=0, device="cpu", temperature=0.1)
    alone = scene_levels(X, off, protos, k_image=2, segment_weight=0.0, **kw)
    both = scene_levels(X, off, protos, k_image=2, segment_weight=1.0, **kw)
    assert alone["label"][5] == 2
    assert both["label"][5] == truth[5] == both["segment_class"][5]


def test_the_class_count_is_checked():
    assert check_n_classes(27) == 27
    for bad in ("auto", 1, 256, True):
        with pytest.raises(ValueError, match="labels"):
            check_n_classes(bad)
