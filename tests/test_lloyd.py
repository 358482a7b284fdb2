"""The cosine k-means algorithm (lcseg_steps.clustering.lloyd: k-means++, the assignment
step, the Lloyd loop) against sklearn, a pure-Python loop and a loop that re-scores every
row, through every row source; its rules for zero rows, empty clusters, cancelling members,
the tolerance and the seeds."""

import math
import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from lcseg_steps.clustering.kmeans import (
    kmeans,
    kmeans_groups,
    kmeans_plusplus,
    kmeans_ranges,
    kmeans_stream,
    l2_normalize,
)
from lcseg_steps.clustering.lloyd import seeded_uniforms
from tests.cosine_rows import CPU, NAMESPACES, blocks_of, sphere_blobs, unit

# ---------------------------------------------------------------------------------------
# pure-Python references


def objective_of(Xn, labels, k):
    """Mean cosine of unit rows to the renormalised mean of their cluster (zero rows: 0)."""
    sims = np.zeros(len(Xn))
    for j in range(k):
        m = labels == j
        if m.any():
            c = unit(Xn[m].sum(axis=0))
            sims[m] = Xn[m] @ c
    return sims.mean()


def _py_unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 1e-12 else [0.0] * len(v)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def py_kmeanspp(rows, k, seed):
    X = [_py_unit(r) for r in rows]
    valid = [i for i, x in enumerate(X) if any(x)]
    u = seeded_uniforms(seed, [0], k)[0]
    chosen = [valid[int(math.floor(u[0] * len(valid)))]]
    for j in range(1, k):
        d2 = [
            0.0
            if (i in chosen or i not in valid)
            else min(2 - 2 * _dot(X[i], X[c]) for c in chosen)
            for i in range(len(X))
        ]
        r, acc = u[j] * sum(d2), 0.0
        for i, d in enumerate(d2):
            acc += d
            if acc > r:
                chosen.append(i)
                break
    return [X[i] for i in chosen]


def py_kmeans(rows, C0, max_iter, tol):
    """Lloyd's loop point by point, following the rules in the module docstring."""
    X = [_py_unit(r) for r in rows]
    valid = [any(x) for x in X]
    C = [_py_unit(c) for c in C0]
    k, J_prev = len(C), 0.0
    for t in range(max_iter + 1):
        labels, sims = [], []
        for x in X:
            best, bj = None, 0
            for j, c in enumerate(C):
                s = _dot(x, c)
                if best is None or s > best:
                    best, bj = s, j
            labels.append(bj)
            sims.append(best)
        J = sum(sims) / len(X)
        counts = [sum(1 for i in range(len(X)) if valid[i] and labels[i] == j) for j in range(k)]
        empty = [j for j in range(k) if counts[j] == 0]
        if t == max_iter or (t > 0 and not empty and J - J_prev <= tol * abs(J_prev)):
            return labels, C, J, t
        newC = []
        for j in range(k):
            s = [0.0] * len(X[0])
            for i in range(len(X)):
                if valid[i] and labels[i] == j:
                    s = [a + b for a, b in zip(s, X[i], strict=True)]
            newC.append(_py_unit(s) if math.sqrt(_dot(s, s)) > 1e-12 else C[j])
        worst = sorted((sims[i], i) for i in range(len(X)) if valid[i])
        for e, (_, i) in zip(empty, worst, strict=False):
            newC[e] = X[i]
        C, J_prev = newC, J


def full_lloyd(Xn, C0, max_iter, tol):
    """Reference Lloyd recomputing every label every pass (float64; no empty clusters)."""
    C, J_prev = unit(C0), 0.0
    for t in range(max_iter + 1):
        S = Xn @ C.T
        labels = np.argmax(S, axis=1)
        J = S[np.arange(len(Xn)), labels].mean()
        if t == max_iter or (t > 0 and J - J_prev <= tol * abs(J_prev)):
            return labels, C, J, t
        C = unit(np.stack([Xn[labels == j].sum(axis=0) for j in range(len(C))]))
        J_prev = J


# ---------------------------------------------------------------------------------------
# the algorithm against independent references


def test_first_step_matches_sklearn():
    """On unit rows argmin euclid == argmax cosine; sklearn's means renormalised == ours."""
    rng = np.random.default_rng(1)
    Xn = l2_normalize(rng.standard_normal((300, 8)))
    C0 = Xn[[3, 50, 120, 240]]
    ref_labels = pairwise_distances_argmin(Xn, C0)
    r0 = kmeans(Xn, 4, init=C0, max_iter=0, **CPU)
    np.testing.assert_array_equal(r0.labels, ref_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = KMeans(n_clusters=4, init=C0, n_init=1, algorithm="lloyd", max_iter=1).fit(Xn)
    r1 = kmeans(Xn, 4, init=C0, max_iter=1, tol=0.0, **CPU)
    np.testing.assert_allclose(r1.centroids, unit(sk.cluster_centers_), atol=2e-6)


def test_converged_blobs_match_sklearn():
    rng = np.random.default_rng(2)
    centres = unit(rng.standard_normal((4, 16)))
    Xn, truth = sphere_blobs(rng, 100, centres, noise=0.08)
    C0 = Xn[[0, 100, 200, 300]] + 0.3 * rng.standard_normal((4, 16)).astype(np.float32)
    C0 = l2_normalize(C0)
    sk = KMeans(n_clusters=4, init=C0, n_init=1, algorithm="lloyd", max_iter=100, tol=0).fit(Xn)
    ours = kmeans(Xn, 4, init=C0, max_iter=100, tol=0.0, **CPU)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    np.testing.assert_array_equal(ours.labels, truth)
    ref = objective_of(Xn.astype(np.float64), sk.labels_, 4)
    assert abs(ours.objective - ref) <= 1e-4 * abs(ref)
    assert abs(ours.objective - objective_of(Xn.astype(np.float64), ours.labels, 4)) < 1e-6


@pytest.mark.parametrize("ns", list(NAMESPACES))
@pytest.mark.parametrize("with_zero_row", [False, True])
def test_matches_pure_python_loop(with_zero_row, ns):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((15, 3)).astype(np.float32)
    if with_zero_row:
        X[4] = 0
    C0 = py_kmeanspp(X.tolist(), 3, seed=7)
    np.testing.assert_allclose(kmeans_plusplus(NAMESPACES[ns](X), 3, seed=7), C0, atol=1e-6)
    labels, C, J, n_iter = py_kmeans(X.tolist(), C0, max_iter=20, tol=0.0)
    ours = kmeans(NAMESPACES[ns](X), 3, seed=7, max_iter=20, tol=0.0)
    assert isinstance(ours.labels, np.ndarray) and isinstance(ours.centroids, np.ndarray)
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_allclose(ours.centroids, C, atol=1e-6)
    assert ours.n_iter == n_iter and abs(ours.objective - J) < 1e-6


def test_empty_cluster_repair_matches_pure_python_loop():
    rng = np.random.default_rng(4)
    X = unit(np.array([1.0, 0, 0, 0]) + 0.3 * rng.standard_normal((20, 4))).astype(np.float32)
    C0 = np.array([X[0], X[1], [-1.0, 0, 0, 0]], dtype=np.float32)  # the last is far from all
    assert np.bincount(kmeans(X, 3, init=C0, max_iter=0, **CPU).labels, minlength=3)[2] == 0
    labels, C, J, n_iter = py_kmeans(X.tolist(), C0, max_iter=1, tol=0.0)
    ours = kmeans(X, 3, init=C0, max_iter=1, tol=0.0, **CPU)
    sims0 = np.max(X @ C0.T, axis=1)
    np.testing.assert_allclose(ours.centroids[2], X[np.argmin(sims0)], atol=1e-6)
    np.testing.assert_allclose(ours.centroids, C, atol=1e-6)
    np.testing.assert_array_equal(ours.labels, labels)


@pytest.mark.parametrize("ns", list(NAMESPACES))
@pytest.mark.parametrize("zero_row", [False, True])
def test_offsets_two_clusters_with_an_empty_one_match_pure_python_loop(zero_row, ns):
    """A cluster emptied by the init must be repaired by the general rules (worst-fitting
    row), whichever problem of a block it happens in."""
    rng = np.random.default_rng(21)
    X = unit(np.array([1.0, 0, 0, 0]) + 0.3 * rng.standard_normal((20, 4))).astype(np.float32)
    if zero_row:
        X[7] = 0
    far = np.array([X[0], [-1.0, 0, 0, 0]], dtype=np.float32)  # nothing is near -e1
    Xb = np.concatenate([X, X[::-1]])
    off = np.array([0, 20, 40])
    r = kmeans_ranges(
        NAMESPACES[ns](Xb), 2, offsets=off, init=np.stack([far, far]), tol=0.0, max_iter=10
    )
    for i, rows in enumerate((X, X[::-1])):
        labels, C_ref, J_ref, n_ref = py_kmeans(rows.tolist(), far, max_iter=10, tol=0.0)
        assert np.bincount(labels, minlength=2).min() > 0
        np.testing.assert_array_equal(r.labels[off[i] : off[i + 1]], labels)
        np.testing.assert_allclose(r.centroids[i], C_ref, atol=1e-6)
        assert r.n_iter[i] == n_ref and abs(r.objective[i] - J_ref) < 1e-6


def test_empty_clusters_end_non_empty_in_every_source():
    rng = np.random.default_rng(5)
    X = unit(np.array([1.0, 0, 0, 0, 0]) + 0.4 * rng.standard_normal((60, 5))).astype(np.float32)
    C0 = np.array([X[0], [-1.0, 0, 0, 0, 0], [0, 0, 0, 0, -1.0]], dtype=np.float32)
    r = kmeans(X, 3, init=C0, max_iter=10, **CPU)
    assert np.all(np.bincount(r.labels, minlength=3) > 0)
    s = kmeans_stream(blocks_of(X, 7), 3, init=C0, max_iter=10, **CPU)
    assert np.all(np.bincount(s.labels, minlength=3) > 0)
    off = np.array([0, 30, 60])
    for ns in NAMESPACES.values():
        L = kmeans_ranges(ns(X), 3, offsets=off, init=np.stack([C0, C0]), max_iter=10).labels
        for i in range(2):
            assert np.all(np.bincount(L[off[i] : off[i + 1]], minlength=3) > 0)
    g = kmeans_groups(X, 3, groups=np.repeat([4, 9], 30), init={4: C0, 9: C0}, max_iter=10, **CPU)
    for lab in (g.labels[:30], g.labels[30:]):
        assert np.all(np.bincount(lab, minlength=3) > 0)


def test_zero_rows_give_no_nan_and_count_in_the_objective():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((80, 6)).astype(np.float16)
    X[[0, 17, 79]] = 0
    r = kmeans(X, 3, **CPU)
    assert np.isfinite(r.centroids).all() and np.isfinite(r.objective)
    Xn = l2_normalize(X)
    sims = (Xn @ r.centroids.T)[np.arange(80), r.labels]
    assert np.all(r.labels[[0, 17, 79]] == 0) and np.all(sims[[0, 17, 79]] == 0)
    assert abs(r.objective - sims.astype(np.float64).mean()) < 1e-6
    s = kmeans_stream(blocks_of(X, 16), 3, **CPU)
    assert np.isfinite(s.centroids).all()
    for ns in NAMESPACES.values():
        b = kmeans_ranges(ns(X), 3, offsets=np.array([0, 40, 80]))
        assert np.isfinite(b.centroids).all() and np.isfinite(b.objective).all()
        assert np.all(b.labels[[0, 17, 79]] == 0)


def test_objective_is_monotone():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((1500, 24)).astype(np.float32)
    r = kmeans(X, 8, max_iter=40, tol=0.0, **CPU)
    assert len(r.history) == r.n_iter + 1 and r.n_iter > 3
    assert np.all(np.diff(r.history) >= -1e-6)
    s = kmeans_stream(blocks_of(X, 256), 8, max_iter=15, tol=0.0, **CPU)
    assert np.all(np.diff(s.history) >= -1e-6)


def test_tol_is_relative_to_the_previous_objective():
    rng = np.random.default_rng(16)
    X = rng.standard_normal((800, 16)).astype(np.float32)
    h = np.array(kmeans(X, 6, max_iter=25, tol=0.0, seed=2, **CPU).history)
    rel = np.diff(h) / np.abs(h[:-1])
    assert np.all(h > 0) and len(rel) >= 6
    # halfway between the median improvement and the next larger one, so no pass sits
    # exactly at the tolerance (where rounding of the two equivalent tests could differ)
    srt = np.unique(rel)
    mid = len(srt) // 2
    tol = float((srt[mid] + srt[mid + 1]) / 2)
    expected = 1 + int(np.flatnonzero(rel <= tol)[0])
    r = kmeans(X, 6, max_iter=25, tol=tol, seed=2, **CPU)
    assert r.n_iter == expected
    np.testing.assert_allclose(r.history, h[: expected + 1], rtol=1e-12)


def test_seed_determinism():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((200, 10)).astype(np.float32)
    a, b = kmeans(X, 5, seed=3, **CPU), kmeans(X, 5, seed=3, **CPU)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.labels, b.labels)
    inits = [kmeans_plusplus(X, 5, seed=s) for s in range(5)]
    assert any(not np.array_equal(inits[0], other) for other in inits[1:])
    assert not np.array_equal(kmeans_plusplus(X, 5, 3), kmeans_plusplus(X, 5, 3, stream=1))


@pytest.mark.parametrize("ns", list(NAMESPACES))
def test_a_cluster_whose_members_cancel_keeps_its_centroid(ns):
    """Two opposite rows tie between the centroids, go to cluster 0 and sum to zero: its
    centroid stays (no NaN) in every namespace and source."""
    X = np.array([[1, 0], [-1, 0], [0, 1], [0, 1]], dtype=np.float32)
    C0 = np.array([[0, -1], [0, 1]], dtype=np.float32)
    r = kmeans(NAMESPACES[ns](X), 2, init=C0, max_iter=5)
    b = kmeans_ranges(NAMESPACES[ns](np.concatenate([X, X])), 2, offsets=[0, 4, 8], init=[C0, C0])
    s = kmeans_stream(blocks_of(NAMESPACES[ns](X), 3), 2, init=C0)
    for got, C in ((r, r.centroids), (s, s.centroids), (b, b.centroids[1])):
        np.testing.assert_array_equal(got.labels[:4], [0, 0, 1, 1])
        np.testing.assert_array_equal(C, C0)


@pytest.mark.parametrize("ns", list(NAMESPACES))
def test_one_cluster_is_the_normalised_mean_in_every_source(ns):
    rng = np.random.default_rng(23)
    X = rng.standard_normal((200, 6)).astype(np.float32) + 1.0
    X[7] = 0
    Xn = unit(X)
    mean = unit(Xn.sum(axis=0))
    want_J = float((Xn @ mean).mean())
    r = kmeans(NAMESPACES[ns](X), 1, max_iter=5)
    s = kmeans_stream(blocks_of(NAMESPACES[ns](X), 30), 1)
    b = kmeans_ranges(NAMESPACES[ns](np.concatenate([X, X])), 1, offsets=[0, 200, 400], max_iter=5)
    for got, C, J in ((r, r.centroids, r.objective), (s, s.centroids, s.objective)):
        assert not np.any(got.labels)
        np.testing.assert_allclose(C[0], mean, atol=1e-6)
        assert abs(J - want_J) < 1e-6
    np.testing.assert_allclose(b.centroids[:, 0], [mean, mean], atol=1e-6)
    assert not np.any(b.labels)


@pytest.mark.parametrize("k", [2, 5])
def test_every_source_equals_full_recompute(k):
    """Later passes move only the rows that changed cluster between member sums (NumPy) or
    recompute them whole: every source must match a loop that re-scores every row."""
    rng = np.random.default_rng(17)
    centres = unit(rng.standard_normal((k, 24)))
    Xn, _ = sphere_blobs(rng, 400, centres, noise=0.35)  # overlapping: many rows move
    X = (Xn * rng.uniform(0.5, 3.0, (len(Xn), 1))).astype(np.float32)  # not unit norm
    C0 = unit(centres + 0.5 * rng.standard_normal(centres.shape))
    ref_lab, ref_C, ref_J, ref_it = full_lloyd(unit(X), C0, 25, 0.0)
    assert ref_it > 3
    r = kmeans(X, k, init=C0, max_iter=25, tol=0.0, **CPU)
    s = kmeans_stream(blocks_of(X, 90), k, init=C0, max_iter=25, tol=0.0, cache_bytes=0)
    for got in (r, s):
        np.testing.assert_array_equal(got.labels, ref_lab)
        np.testing.assert_allclose(got.centroids, ref_C, atol=1e-5)
        assert got.n_iter == ref_it and abs(got.objective - ref_J) < 1e-6
    # offsets: this problem among easy ones (one at a time on NumPy, padded together
    # elsewhere)
    easy, _ = sphere_blobs(rng, 60, centres, noise=0.02)
    E0 = unit(centres + 0.05 * rng.standard_normal(centres.shape))  # no cluster empties
    Xb = np.concatenate([easy, X, easy])
    off = np.array([0, len(easy), len(easy) + len(X), len(Xb)])
    e_lab, e_C, e_J, e_it = full_lloyd(unit(easy), E0, 25, 0.0)
    for ns in NAMESPACES.values():
        b = kmeans_ranges(ns(Xb), k, offsets=off, init=np.stack([E0, C0, E0]), max_iter=25, tol=0.0)
        np.testing.assert_array_equal(b.labels[off[1] : off[2]], ref_lab)
        assert b.n_iter[1] == ref_it
        for i in (0, 2):
            np.testing.assert_array_equal(b.labels[off[i] : off[i + 1]], e_lab)
            assert b.n_iter[i] == e_it and abs(b.objective[i] - e_J) < 1e-6
