"""Cosine k-means: the algorithm against sklearn and a pure-Python loop, and its drivers
(streaming, batched, grouped) against the in-memory one."""

import math
import sys
import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from lcseg_steps.kmeans import (
    KMeansResult,
    _init_sample,
    array_namespace,
    batched_kmeans,
    cosine_kmeans,
    grouped_kmeans,
    kmeans_plusplus,
    l2_normalize,
    seeded_uniforms,
    streaming_kmeans,
)

CPU = {"device": "cpu"}
# batched_kmeans's two ways through a block of problems (CPU uses "each", a GPU
# "together"; both must follow the same rules, so both run here)
SOLVES = ["each", "together"]


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.where(n > 0, a / np.where(n > 0, n, 1), 0)


def sphere_blobs(rng, n_per, centres, noise):
    """Rows around each of ``centres`` on the unit sphere, labels in blob order."""
    rows = [unit(c + noise * rng.standard_normal((n_per, len(c)))) for c in centres]
    return np.concatenate(rows).astype(np.float32), np.repeat(np.arange(len(centres)), n_per)


def objective_of(Xn, labels, k):
    """Mean cosine of unit rows to the renormalised mean of their cluster (zero rows: 0)."""
    sims = np.zeros(len(Xn))
    for j in range(k):
        m = labels == j
        if m.any():
            c = unit(Xn[m].sum(axis=0))
            sims[m] = Xn[m] @ c
    return sims.mean()


def blocks_of(X, size):
    return lambda: (X[i : i + size] for i in range(0, len(X), size))


# ---------------------------------------------------------------------------------------
# pure-Python reference


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


# ---------------------------------------------------------------------------------------
# normalisation and namespace


def test_l2_normalize_keeps_zero_rows_zero():
    X = np.array([[3, 4, 0], [0, 0, 0], [1e-20, 0, 0], [-2, 0, 0]], dtype=np.float16)
    Y = l2_normalize(X)
    assert Y.dtype == np.float32 and not np.isnan(Y).any()
    np.testing.assert_allclose(Y[0], [0.6, 0.8, 0], atol=1e-6)
    assert np.all(Y[1] == 0) and np.all(Y[2] == 0)  # float16 underflows 1e-20 to 0
    np.testing.assert_allclose(np.linalg.norm(Y[[0, 3]], axis=1), 1, atol=1e-6)
    tiny = l2_normalize(np.array([[1e-13, 0.0]], dtype=np.float32))
    assert np.all(tiny == 0)  # norm <= eps counts as a zero row, not a 1e-1 vector


def test_array_namespace_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    assert array_namespace("cpu") is np
    assert array_namespace("auto") is np
    with pytest.raises(RuntimeError, match="cupy"):
        array_namespace("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        array_namespace("tpu")


# ---------------------------------------------------------------------------------------
# the algorithm against independent references


def test_first_step_matches_sklearn():
    """On unit rows argmin euclid == argmax cosine; sklearn's means renormalised == ours."""
    rng = np.random.default_rng(1)
    Xn = l2_normalize(rng.standard_normal((300, 8)))
    C0 = Xn[[3, 50, 120, 240]]
    ref_labels = pairwise_distances_argmin(Xn, C0)
    r0 = cosine_kmeans(Xn, 4, init=C0, max_iter=0, **CPU)
    np.testing.assert_array_equal(r0.labels, ref_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = KMeans(n_clusters=4, init=C0, n_init=1, algorithm="lloyd", max_iter=1).fit(Xn)
    r1 = cosine_kmeans(Xn, 4, init=C0, max_iter=1, tol=0.0, **CPU)
    np.testing.assert_allclose(r1.centroids, unit(sk.cluster_centers_), atol=2e-6)


def test_converged_blobs_match_sklearn():
    rng = np.random.default_rng(2)
    centres = unit(rng.standard_normal((4, 16)))
    Xn, truth = sphere_blobs(rng, 100, centres, noise=0.08)
    C0 = Xn[[0, 100, 200, 300]] + 0.3 * rng.standard_normal((4, 16)).astype(np.float32)
    C0 = l2_normalize(C0)
    sk = KMeans(n_clusters=4, init=C0, n_init=1, algorithm="lloyd", max_iter=100, tol=0).fit(Xn)
    ours = cosine_kmeans(Xn, 4, init=C0, max_iter=100, tol=0.0, **CPU)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    np.testing.assert_array_equal(ours.labels, truth)
    ref = objective_of(Xn.astype(np.float64), sk.labels_, 4)
    assert abs(ours.objective - ref) <= 1e-4 * abs(ref)
    assert abs(ours.objective - objective_of(Xn.astype(np.float64), ours.labels, 4)) < 1e-6


@pytest.mark.parametrize("with_zero_row", [False, True])
def test_matches_pure_python_loop(with_zero_row):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((15, 3)).astype(np.float32)
    if with_zero_row:
        X[4] = 0
    C0 = py_kmeanspp(X.tolist(), 3, seed=7)
    np.testing.assert_allclose(kmeans_plusplus(X, 3, seed=7), C0, atol=1e-6)
    labels, C, J, n_iter = py_kmeans(X.tolist(), C0, max_iter=20, tol=0.0)
    ours = cosine_kmeans(X, 3, seed=7, max_iter=20, tol=0.0, **CPU)
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_allclose(ours.centroids, C, atol=1e-6)
    assert ours.n_iter == n_iter and abs(ours.objective - J) < 1e-6


def test_empty_cluster_repair_matches_pure_python_loop():
    rng = np.random.default_rng(4)
    X = unit(np.array([1.0, 0, 0, 0]) + 0.3 * rng.standard_normal((20, 4))).astype(np.float32)
    C0 = np.array([X[0], X[1], [-1.0, 0, 0, 0]], dtype=np.float32)  # the last is far from all
    assert np.bincount(cosine_kmeans(X, 3, init=C0, max_iter=0, **CPU).labels, minlength=3)[2] == 0
    labels, C, J, n_iter = py_kmeans(X.tolist(), C0, max_iter=1, tol=0.0)
    ours = cosine_kmeans(X, 3, init=C0, max_iter=1, tol=0.0, **CPU)
    sims0 = np.max(X @ C0.T, axis=1)
    np.testing.assert_allclose(ours.centroids[2], X[np.argmin(sims0)], atol=1e-6)
    np.testing.assert_allclose(ours.centroids, C, atol=1e-6)
    np.testing.assert_array_equal(ours.labels, labels)


@pytest.mark.parametrize("solve", SOLVES)
@pytest.mark.parametrize("zero_row", [False, True])
def test_batched_two_clusters_with_an_empty_one_match_pure_python_loop(zero_row, solve):
    """k = 2 has its own CPU loop; a cluster emptied by the init must be repaired as in
    the general rules (worst-fitting row), whichever problem of a block it happens in."""
    rng = np.random.default_rng(21)
    X = unit(np.array([1.0, 0, 0, 0]) + 0.3 * rng.standard_normal((20, 4))).astype(np.float32)
    if zero_row:
        X[7] = 0
    far = np.array([X[0], [-1.0, 0, 0, 0]], dtype=np.float32)  # nothing is near -e1
    Xb = np.concatenate([X, X[::-1]])
    off = np.array([0, 20, 40])
    init = np.stack([far, far])
    L, C, J, it = batched_kmeans(Xb, off, 2, init=init, max_iter=10, tol=0.0, solve=solve, **CPU)
    for i, rows in enumerate((X, X[::-1])):
        labels, C_ref, J_ref, n_ref = py_kmeans(rows.tolist(), far, max_iter=10, tol=0.0)
        assert np.bincount(labels, minlength=2).min() > 0
        np.testing.assert_array_equal(L[off[i] : off[i + 1]], labels)
        np.testing.assert_allclose(C[i], C_ref, atol=1e-6)
        assert it[i] == n_ref and abs(J[i] - J_ref) < 1e-6


def test_empty_clusters_end_non_empty_in_every_driver():
    rng = np.random.default_rng(5)
    X = unit(np.array([1.0, 0, 0, 0, 0]) + 0.4 * rng.standard_normal((60, 5))).astype(np.float32)
    C0 = np.array([X[0], [-1.0, 0, 0, 0, 0], [0, 0, 0, 0, -1.0]], dtype=np.float32)
    r = cosine_kmeans(X, 3, init=C0, max_iter=10, **CPU)
    assert np.all(np.bincount(r.labels, minlength=3) > 0)
    s = streaming_kmeans(blocks_of(X, 7), 3, init=C0, max_iter=10, return_labels=True, **CPU)
    assert np.all(np.bincount(s.labels, minlength=3) > 0)
    off = np.array([0, 30, 60])
    for solve in SOLVES:
        L, *_ = batched_kmeans(X, off, 3, init=np.stack([C0, C0]), max_iter=10, solve=solve, **CPU)
        for i in range(2):
            assert np.all(np.bincount(L[off[i] : off[i + 1]], minlength=3) > 0)


def test_zero_rows_give_no_nan_and_count_in_the_objective():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((80, 6)).astype(np.float16)
    X[[0, 17, 79]] = 0
    r = cosine_kmeans(X, 3, **CPU)
    assert np.isfinite(r.centroids).all() and np.isfinite(r.objective)
    Xn = l2_normalize(X)
    sims = (Xn @ r.centroids.T)[np.arange(80), r.labels]
    assert np.all(r.labels[[0, 17, 79]] == 0) and np.all(sims[[0, 17, 79]] == 0)
    assert abs(r.objective - sims.astype(np.float64).mean()) < 1e-6
    s = streaming_kmeans(blocks_of(X, 16), 3, **CPU)
    assert np.isfinite(s.centroids).all()
    for solve in SOLVES:
        L, C, J, _ = batched_kmeans(X, np.array([0, 40, 80]), 3, solve=solve, **CPU)
        assert np.isfinite(C).all() and np.isfinite(J).all()
        assert np.all(L[[0, 17, 79]] == 0)


def test_objective_is_monotone():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((1500, 24)).astype(np.float32)
    r = cosine_kmeans(X, 8, max_iter=40, tol=0.0, **CPU)
    assert len(r.history) == r.n_iter + 1 and r.n_iter > 3
    assert np.all(np.diff(r.history) >= -1e-6)
    s = streaming_kmeans(blocks_of(X, 256), 8, max_iter=15, tol=0.0, **CPU)
    assert np.all(np.diff(s.history) >= -1e-6)


def test_tol_is_relative_to_the_previous_objective():
    rng = np.random.default_rng(16)
    X = rng.standard_normal((800, 16)).astype(np.float32)
    h = np.array(cosine_kmeans(X, 6, max_iter=25, tol=0.0, seed=2, **CPU).history)
    rel = np.diff(h) / np.abs(h[:-1])
    assert np.all(h > 0) and len(rel) >= 6
    # halfway between the median improvement and the next larger one, so no pass sits
    # exactly at the tolerance (where rounding of the two equivalent tests could differ)
    srt = np.unique(rel)
    mid = len(srt) // 2
    tol = float((srt[mid] + srt[mid + 1]) / 2)
    expected = 1 + int(np.flatnonzero(rel <= tol)[0])
    r = cosine_kmeans(X, 6, max_iter=25, tol=tol, seed=2, **CPU)
    assert r.n_iter == expected
    np.testing.assert_allclose(r.history, h[: expected + 1], rtol=1e-12)


def test_seed_determinism():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((200, 10)).astype(np.float32)
    a, b = cosine_kmeans(X, 5, seed=3, **CPU), cosine_kmeans(X, 5, seed=3, **CPU)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.labels, b.labels)
    inits = [kmeans_plusplus(X, 5, seed=s) for s in range(5)]
    assert any(not np.array_equal(inits[0], other) for other in inits[1:])
    assert not np.array_equal(kmeans_plusplus(X, 5, 3), kmeans_plusplus(X, 5, 3, stream=1))


# ---------------------------------------------------------------------------------------
# drivers against the in-memory one


@pytest.mark.parametrize("cache_bytes", [0, 7 * 12 * 4 * 5, 1 << 30])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_streaming_equals_in_memory(dtype, block, cache_bytes):
    """Uncached, partly cached (the first few blocks of 7) and fully cached float32 rows."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((300, 12)).astype(dtype)
    X[5] = 0
    init = rng.standard_normal((5, 12))
    for kw in ({"init": init}, {"init": "k-means++", "seed": 4}):
        ref = cosine_kmeans(X, 5, max_iter=30, **kw, **CPU)
        lines = []
        s = streaming_kmeans(
            blocks_of(X, block),
            5,
            max_iter=30,
            return_labels=True,
            log=lines.append,
            cache_bytes=cache_bytes,
            **kw,
            **CPU,
        )
        np.testing.assert_array_equal(s.labels, ref.labels)
        np.testing.assert_allclose(s.centroids, ref.centroids, atol=1e-5)
        assert s.n_iter == ref.n_iter and len(lines) == s.n_iter + 1
        assert abs(s.objective - ref.objective) < 1e-6
    assert streaming_kmeans(blocks_of(X, block), 5, max_iter=2, **CPU).labels is None


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


@pytest.mark.parametrize("k", [2, 5])
def test_skipping_decided_rows_equals_full_recompute(k):
    """Later passes re-score only rows near a boundary (gathered, or whole problems / blocks
    when many are): every driver must still match a loop that re-scores every row."""
    rng = np.random.default_rng(17)
    centres = unit(rng.standard_normal((k, 24)))
    Xn, _ = sphere_blobs(rng, 400, centres, noise=0.35)  # overlapping: many rows move
    X = (Xn * rng.uniform(0.5, 3.0, (len(Xn), 1))).astype(np.float32)  # not unit norm
    C0 = unit(centres + 0.5 * rng.standard_normal(centres.shape))
    ref_lab, ref_C, ref_J, ref_it = full_lloyd(unit(X), C0, 25, 0.0)
    assert ref_it > 3
    r = cosine_kmeans(X, k, init=C0, max_iter=25, tol=0.0, **CPU)
    s = streaming_kmeans(
        blocks_of(X, 90),
        k,
        init=C0,
        max_iter=25,
        tol=0.0,
        return_labels=True,
        cache_bytes=0,
        **CPU,
    )
    for got in (r, s):
        np.testing.assert_array_equal(got.labels, ref_lab)
        np.testing.assert_allclose(got.centroids, ref_C, atol=1e-5)
        assert got.n_iter == ref_it and abs(got.objective - ref_J) < 1e-6
    # batched: this problem among easy ones (solved together: few undecided rows,
    # gathered across problems; or each in turn, full passes)
    easy, _ = sphere_blobs(rng, 60, centres, noise=0.02)
    E0 = unit(centres + 0.05 * rng.standard_normal(centres.shape))  # no cluster empties
    Xb = np.concatenate([easy, X, easy])
    off = np.array([0, len(easy), len(easy) + len(X), len(Xb)])
    e_lab, e_C, e_J, e_it = full_lloyd(unit(easy), E0, 25, 0.0)
    for solve in SOLVES:
        L, C, J, it = batched_kmeans(
            Xb,
            off,
            k,
            init=np.stack([E0, C0, E0]),
            max_iter=25,
            tol=0.0,
            block_problems=3,
            solve=solve,
            **CPU,
        )
        np.testing.assert_array_equal(L[off[1] : off[2]], ref_lab)
        assert it[1] == ref_it
        for i in (0, 2):
            np.testing.assert_array_equal(L[off[i] : off[i + 1]], e_lab)
            assert it[i] == e_it and abs(J[i] - e_J) < 1e-6


def test_streaming_sample_is_uniform_and_independent_of_blocking():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((500, 8)).astype(np.float16)
    s7 = _init_sample(blocks_of(X, 7), 50, 1, "t")
    s64 = _init_sample(blocks_of(X, 64), 50, 1, "t")
    np.testing.assert_array_equal(s7, s64)
    rows = [int(np.flatnonzero((X.astype(np.float32) == r).all(axis=1))[0]) for r in s7]
    assert len(set(rows)) == 50 and rows == sorted(rows)
    assert not np.array_equal(s7, _init_sample(blocks_of(X, 7), 50, 2, "t"))
    np.testing.assert_array_equal(_init_sample(blocks_of(X, 7), 10**6, 1, "t"), X)
    a = streaming_kmeans(blocks_of(X, 7), 4, max_points=50, return_labels=True, **CPU)
    b = streaming_kmeans(blocks_of(X, 64), 4, max_points=50, return_labels=True, **CPU)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)


def ragged(rng, sizes, D, dtype=np.float16):
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return rng.standard_normal((off[-1], D)).astype(dtype), off


@pytest.mark.parametrize("solve", SOLVES)
@pytest.mark.parametrize("block_problems", [1, 3, 64])
def test_batched_equals_per_problem_loop(block_problems, solve):
    rng = np.random.default_rng(11)
    X, off = ragged(rng, [12, 30, 7, 25, 9, 30, 4, 18], D=10)
    X[off[1] + 3] = 0  # a zero row inside a padded problem
    init = rng.standard_normal((8, 3, 10)).astype(np.float32)
    L, C, J, it = batched_kmeans(
        X, off, 3, init=init, max_iter=10, block_problems=block_problems, solve=solve, **CPU
    )
    assert L.dtype == np.int64 and C.shape == (8, 3, 10) and C.dtype == np.float32
    for i in range(8):
        ref = cosine_kmeans(X[off[i] : off[i + 1]], 3, init=init[i], max_iter=10, **CPU)
        np.testing.assert_array_equal(L[off[i] : off[i + 1]], ref.labels)
        np.testing.assert_allclose(C[i], ref.centroids, atol=1e-5)
        assert it[i] == ref.n_iter and abs(J[i] - ref.objective) < 1e-6


@pytest.mark.parametrize("solve", SOLVES)
def test_batched_kmeanspp_uses_a_stream_per_problem(solve):
    rng = np.random.default_rng(12)
    X, off = ragged(rng, [20, 5, 40, 13, 40, 8], D=6)
    L0, C0, _, it0 = batched_kmeans(
        X, off, 4, max_iter=0, seed=5, block_problems=2, solve=solve, **CPU
    )
    assert np.all(it0 == 0)
    for i in range(6):
        ref = kmeans_plusplus(X[off[i] : off[i + 1]], 4, seed=5, stream=i)
        np.testing.assert_allclose(C0[i], ref, atol=1e-6)
    runs = [
        batched_kmeans(X, off, 4, seed=5, block_problems=b, solve=solve, **CPU) for b in (1, 4, 64)
    ]
    for other in runs[1:]:
        np.testing.assert_array_equal(other[0], runs[0][0])
        np.testing.assert_allclose(other[1], runs[0][1], atol=1e-6)
        np.testing.assert_array_equal(other[3], runs[0][3])


def test_grouped_equals_per_group_fits():
    rng = np.random.default_rng(13)
    X = rng.standard_normal((120, 5)).astype(np.float32)
    groups = rng.integers(0, 3, 120) * 10
    out = grouped_kmeans(X, groups, 2, seed=1, device="cpu")
    assert list(out) == [0, 10, 20] and all(isinstance(r, KMeansResult) for r in out.values())
    for g, r in out.items():
        ref = cosine_kmeans(X[groups == g], 2, seed=1, **CPU)
        np.testing.assert_array_equal(r.labels, ref.labels)
    inits = {g: rng.standard_normal((2, 5)) for g in (0, 10, 20)}
    out = grouped_kmeans(X, groups, 2, init=inits, max_iter=0, device="cpu")
    ref = cosine_kmeans(X[groups == 10], 2, init=inits[10], max_iter=0, **CPU)
    np.testing.assert_array_equal(out[10].labels, ref.labels)


@pytest.mark.parametrize("threads", [2, 3])
def test_worker_threads_give_the_same_result(threads):
    """Blocks, problems and groups solved by worker threads: results equal to one thread,
    bit for bit (per-block sums are added in block order), and BLAS/torch thread settings
    are back to what they were afterwards."""
    import torch
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(21)
    X = rng.standard_normal((2000, 24)).astype(np.float16)
    X[7] = 0
    before = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])

    def streamed(t):
        return streaming_kmeans(
            blocks_of(X, 97),
            3,
            seed=2,
            max_iter=40,
            tol=0.0,
            return_labels=True,
            cache_bytes=97 * 24 * 4 * 6,
            threads=t,
            **CPU,
        )

    one, many = streamed(1), streamed(threads)
    np.testing.assert_array_equal(one.labels, many.labels)
    np.testing.assert_array_equal(one.centroids, many.centroids)
    assert one.history == many.history and one.n_iter == many.n_iter > 2

    off = np.concatenate([[0], np.cumsum(rng.integers(30, 90, 25))])
    Xb = rng.standard_normal((off[-1], 24)).astype(np.float16)
    for solve in SOLVES:
        b1 = batched_kmeans(Xb, off, 2, seed=3, block_problems=3, solve=solve, **CPU)
        bn = batched_kmeans(
            Xb, off, 2, seed=3, block_problems=3, threads=threads, solve=solve, **CPU
        )
        for a, b in zip(b1, bn, strict=True):
            np.testing.assert_array_equal(a, b)

    groups = rng.integers(0, 5, X.shape[0])
    g1 = grouped_kmeans(X, groups, 2, seed=1, **CPU)
    gn = grouped_kmeans(X, groups, 2, seed=1, threads=threads, **CPU)
    assert list(g1) == list(gn) == [0, 1, 2, 3, 4]
    for g in g1:
        np.testing.assert_array_equal(g1[g].labels, gn[g].labels)
        np.testing.assert_array_equal(g1[g].centroids, gn[g].centroids)
    assert (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]) == before


def test_lazy_blocks_are_read_only_when_not_cached(tmp_path):
    """store.RowBlock blocks give the result of eager blocks; a block whose float32 rows
    are cached is read once (first pass), the others once per pass that needs them."""
    from lcseg_steps.store import RowBlock, iter_row_blocks, open_store, write_store

    rng = np.random.default_rng(23)
    X = rng.standard_normal((1000, 16)).astype(np.float16)
    arr = open_store(write_store(tmp_path / "x.zarr", {"k": X}, chunk_rows=100))["k"]
    reads = [0] * 10

    class Counted(RowBlock):
        def __array__(self, dtype=None, copy=None):
            reads[self.lo // 100] += 1
            return super().__array__(dtype, copy)

    def lazy():
        return (Counted(b.array, b.lo, b.hi) for b in iter_row_blocks(arr, lazy=True))

    kw = {"seed": 1, "max_iter": 30, "tol": 0.0, "return_labels": True, **CPU}
    cache = 3 * 100 * 16 * 4  # the first three blocks' float32 rows
    eager = streaming_kmeans(blocks_of(X, 100), 4, cache_bytes=cache, **kw)
    for threads in (1, 2):
        reads[:] = [0] * 10
        got = streaming_kmeans(lazy, 4, cache_bytes=cache, threads=threads, **kw)
        np.testing.assert_array_equal(got.labels, eager.labels)
        np.testing.assert_array_equal(got.centroids, eager.centroids)
        assert got.n_iter == eager.n_iter > 3
        # k-means++ reads every block for its sample, the first pass once more; after that
        # only uncached blocks are read (when they hold undecided rows)
        assert reads[:3] == [2, 2, 2]
        assert sum(reads[3:]) > 2 * 7


def test_a_failing_block_in_a_worker_thread_names_the_block():
    X = np.random.default_rng(22).standard_normal((500, 8)).astype(np.float32)
    X[260, 3] = np.nan
    init = X[:2] + 1  # explicit: the k-means++ sample would see the NaN first
    with pytest.raises(ValueError, match="non-finite values in block 2"):
        streaming_kmeans(blocks_of(X, 100), 2, init=init, threads=2, **CPU)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            streaming_kmeans(blocks_of(X, 100), 2, threads=bad, **CPU)
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            batched_kmeans(X, np.array([0, 500]), 2, threads=bad, **CPU)


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_input_raises_clear_errors():
    X = np.random.default_rng(14).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="k=5 clusters but only 3 points"):
        cosine_kmeans(X, 5, **CPU)
    Xz = X.copy()
    Xz[1:] = 0
    with pytest.raises(ValueError, match="only 1 non-zero rows"):
        cosine_kmeans(Xz, 2, **CPU)
    with pytest.raises(ValueError, match="2-D"):
        cosine_kmeans(X[0], 2, **CPU)
    with pytest.raises(ValueError, match="shape"):
        cosine_kmeans(X, 2, init=np.ones((3, 4)), **CPU)
    with pytest.raises(ValueError, match="non-zero"):
        cosine_kmeans(X, 2, init=np.zeros((2, 4)), **CPU)
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cosine_kmeans(Xn, 2, **CPU)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        cosine_kmeans(X, 0, **CPU)
    with pytest.raises(ValueError, match="k=4 clusters but only 3 points"):
        streaming_kmeans(blocks_of(X, 2), 4, init=np.ones((4, 4)), **CPU)
    with pytest.raises(ValueError, match="block 1 has D=3"):
        streaming_kmeans(lambda: iter([X, X[:, :3]]), 2, **CPU)
    with pytest.raises(ValueError, match="max_points=1"):
        streaming_kmeans(blocks_of(X, 2), 2, max_points=1, **CPU)


def test_batched_bad_input_names_the_problem():
    rng = np.random.default_rng(15)
    X, off = ragged(rng, [5, 4, 2, 6], D=3)
    with pytest.raises(ValueError, match="problem 2 has 2 rows, fewer than k=3"):
        batched_kmeans(X, off, 3, **CPU)
    X[off[1] : off[1] + 3] = 0
    for solve in SOLVES:
        with pytest.raises(ValueError, match="problem 1 has 1 non-zero rows"):
            batched_kmeans(X, off, 2, solve=solve, **CPU)
    with pytest.raises(ValueError, match="solve must be 'auto', 'each' or 'together'"):
        batched_kmeans(X, off, 1, solve="fast", **CPU)
    with pytest.raises(ValueError, match="end at len"):
        batched_kmeans(X, off[:-1], 2, **CPU)
    with pytest.raises(ValueError, match=r"\(n_problems, k, D\)"):
        batched_kmeans(X, off, 2, init=np.ones((4, 3, 3)), **CPU)
    with pytest.raises(ValueError, match="group 20"):
        grouped_kmeans(X, np.array([0] * 16 + [20]), 2, device="cpu")
