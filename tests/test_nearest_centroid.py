"""The one nearest-centroid rule (``lcseg_steps.clustering.kmeans.nearest_centroid``) against a
brute-force loop, on random rows with planted exact ties, and the Lloyd loop's own
scorings (generic, k = 2 sign, compiled sweep) against it."""

import numpy as np
import pytest

from lcseg_steps.clustering.class_clustering import class_prototypes, fit_classes
from lcseg_steps.clustering.kmeans import kmeans, l2_normalize, nearest_centroid
from lcseg_steps.clustering.lloyd import _label_and_sum, _prepare


def brute(X, C):
    """Per row the first centroid of strictly highest float64 dot product; all-zero
    centroids never win."""
    out = []
    for x in np.asarray(X, dtype=np.float64):
        best, best_s = 0, None
        for j, c in enumerate(np.asarray(C, dtype=np.float64)):
            if not c.any():
                continue
            s = float(x @ c)
            if best_s is None or s > best_s:
                best, best_s = j, s
        out.append(best)
    return np.array(out, dtype=np.int64)


def planted(seed=0, n=300, D=8, k=6):
    """Unit rows and centroids with exact ties: centroids 0..3 are basis vectors, 4 repeats
    1 (every row ties 1 and 4), and a third of the rows weigh two basis vectors equally."""
    rng = np.random.default_rng(seed)
    C = np.zeros((k, D), dtype=np.float32)
    C[:4, :4] = np.eye(4)
    C[4] = C[1]
    C[5] = l2_normalize(rng.standard_normal(D))
    X = rng.standard_normal((n, D)).astype(np.float32)
    tie = rng.random(n) < 1 / 3
    a = rng.integers(0, 4, n)
    b = (a + rng.integers(1, 4, n)) % 4
    X[tie] = 0
    X[tie, a[tie]] = X[tie, b[tie]] = 1.0
    return l2_normalize(X), C, tie, np.minimum(a, b)


def test_exact_ties_go_to_the_lowest_index():
    X, C, tie, low = planted()
    got = nearest_centroid(X, C)
    np.testing.assert_array_equal(got, brute(X, C))
    np.testing.assert_array_equal(got[tie], low[tie])  # two equal basis weights: the lower
    assert not (got == 4).any()  # 4 always ties 1, which comes first
    assert got.dtype == np.int64


def test_blocks_dtypes_and_empty_centroids():
    X, C, _, _ = planted(seed=1)
    C[0] = 0  # an empty class: never wins, even for a row that only scores 0 elsewhere
    ref = brute(X, C)
    for block in (None, 1, 7, 1000):
        np.testing.assert_array_equal(nearest_centroid(X, C, block=block), ref)
        X64 = X.astype(np.float64)
        np.testing.assert_array_equal(nearest_centroid(X64, C.astype(np.float64)), ref)
    assert nearest_centroid(X[:0], C).shape == (0,)


def test_groups_label_among_the_own_groups_centroids():
    X, C, _, _ = planted(seed=2)
    rng = np.random.default_rng(2)
    CG = np.stack([C, C[::-1], np.roll(C, 2, axis=0)])  # (3, k, D), ties in every group
    g = rng.integers(0, 3, len(X))
    ref = np.array([brute(x[None], CG[gi])[0] for x, gi in zip(X, g, strict=True)])
    for block in (None, 13):
        np.testing.assert_array_equal(nearest_centroid(X, CG, groups=g, block=block), ref)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
@pytest.mark.parametrize("sweep", [False, True])
def test_the_lloyd_loop_scores_by_the_same_rule(k, sweep):
    """``_label_and_sum`` (argmax of (X @ C.T) * inv; for k = 2 the sign of x . (c1 - c0)) and the
    compiled sweep label as nearest_centroid does, exact ties included."""
    Xu, C, tie, _ = planted(seed=3)
    C = C[:k]  # basis vectors (k = 2: rows weighing both equally are exact ties), then 4 = 1
    raw = Xu * np.random.default_rng(3).uniform(0.5, 2.0, (len(Xu), 1)).astype(np.float32)
    raw[5] = 0  # a zero row: label 0
    X, inv, _ = _prepare(raw[None], np)
    prev = None
    if sweep:  # everything in cluster 0, as after a pass: the sweep moves the rest
        lab0 = np.zeros((1, len(raw)), dtype=np.int64)
        sums = np.zeros((1, k, raw.shape[1]))
        sums[0, 0] = (X[0] * inv[0][:, None]).astype(np.float64).sum(axis=0)
        counts = np.zeros((1, k), dtype=np.int64)
        counts[0, 0] = int((inv[0] > 0).sum())
        prev = (lab0, sums, counts)
    lab, _, _ = _label_and_sum(X, inv, C[None], np, prev, np.ones(1, dtype=bool))
    want = nearest_centroid(l2_normalize(raw), C)
    np.testing.assert_array_equal(lab[0], want)
    assert lab[0][5] == 0
    assert tie.sum() > 50  # the ties were there to break


def test_kmeans_labels_are_the_nearest_returned_centroid():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((400, 10)).astype(np.float32)
    fit = kmeans(X, 5, seed=1, device="cpu")
    np.testing.assert_array_equal(fit.labels, nearest_centroid(l2_normalize(X), fit.centroids))


def test_class_clustering_assigns_the_unfitted_regions_by_the_rule():
    X, C, _, _ = planted(seed=5, n=200)
    fit = fit_classes(
        X.astype(np.float64), 4, class_clusterer="agglomerative", seed=0, fit_sample=50
    )
    rest = np.setdiff1d(np.arange(len(X)), fit.fitted)
    xn = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    # the fit's own float64 prototypes (the store keeps them as float32)
    proto = class_prototypes(xn[fit.fitted], fit.labels[fit.fitted], 4)
    np.testing.assert_array_equal(fit.labels[rest], brute(xn[rest], proto))
