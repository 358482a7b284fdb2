"""Cosine k-means: the engine against sklearn and a pure-Python loop, every row source
(plain, offsets, groups, stream) against the in-memory one, and every namespace (NumPy,
array_api_strict, torch) against NumPy."""

import math
import sys
import warnings

import array_api_compat
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from lcseg_steps.clustering.backend import array_namespace
from lcseg_steps.clustering.kmeans import (
    GroupedKMeansResult,
    _init_sample,
    kmeans,
    kmeans_groups,
    kmeans_plusplus,
    kmeans_ranges,
    kmeans_stream,
    l2_normalize,
)
from lcseg_steps.clustering.lloyd import seeded_uniforms

CPU = {"device": "cpu"}


def as_strict(a):
    import array_api_strict

    return array_api_strict.asarray(np.asarray(a, dtype=np.float32))


def as_torch(a):
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())


NAMESPACES = {"numpy": lambda a: a, "strict": as_strict, "torch": as_torch}


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
    n = X.shape[0]
    return lambda: (X[i : min(i + size, n), ...] for i in range(0, n, size))


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
    assert array_api_compat.is_numpy_namespace(array_namespace("cpu"))
    assert array_api_compat.is_numpy_namespace(array_namespace("auto"))
    with pytest.raises(RuntimeError, match="cupy"):
        array_namespace("cuda")
    with pytest.raises(RuntimeError, match="cupy"):
        kmeans(np.eye(3, dtype=np.float32), 2, device="cuda:0")
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


# ---------------------------------------------------------------------------------------
# row sources and namespaces against the in-memory NumPy run


@pytest.mark.parametrize("ns", ["strict", "torch"])
def test_every_source_gives_numpy_labels_in_every_namespace(ns):
    rng = np.random.default_rng(31)
    X = rng.standard_normal((400, 12)).astype(np.float32)
    X[9] = 0
    off = np.array([0, 90, 91 + 90, 300, 400])
    groups = rng.integers(0, 3, 400) * 7
    to = NAMESPACES[ns]
    for fit, kw in (
        (kmeans, {}),
        (kmeans_ranges, {"offsets": off}),
        (kmeans_groups, {"groups": groups}),
    ):
        ref = fit(X, 3, seed=4, max_iter=30, **kw)
        got = fit(to(X), 3, seed=4, max_iter=30, **kw)
        np.testing.assert_array_equal(got.labels, ref.labels)
        np.testing.assert_allclose(got.centroids, ref.centroids, atol=1e-5)
        np.testing.assert_array_equal(got.n_iter, ref.n_iter)
        np.testing.assert_allclose(got.objective, ref.objective, rtol=1e-6)
    Xs = to(X)
    ref = kmeans_stream(blocks_of(X, 64), 3, seed=4, init_sample=200)
    got = kmeans_stream(blocks_of(Xs, 64), 3, seed=4, init_sample=200)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.centroids, ref.centroids, atol=1e-5)


def test_host_rows_move_to_the_device_namespace(monkeypatch):
    """NumPy (or Zarr) rows with ``device="cuda"`` are shipped to the device's namespace,
    as on a GPU; array_api_strict stands in for CuPy and refuses NumPy's device."""
    import array_api_strict

    import lcseg_steps.clustering.backend as km

    real = km.array_namespace
    strict = array_api_compat.array_namespace(array_api_strict.asarray([0.0]))
    monkeypatch.setattr(km, "array_namespace", lambda d: strict if d == "cuda" else real(d))
    rng = np.random.default_rng(32)
    X = rng.standard_normal((300, 8)).astype(np.float32)  # strict has no float16
    off = np.array([0, 100, 300])
    groups = rng.integers(0, 2, 300)
    for fit, kw in (
        (kmeans, {}),
        (kmeans_ranges, {"offsets": off}),
        (kmeans_groups, {"groups": groups}),
    ):
        ref = fit(X, 3, seed=5, max_iter=20, device="cpu", **kw)
        got = fit(X, 3, seed=5, max_iter=20, device="cuda", **kw)
        np.testing.assert_array_equal(got.labels, ref.labels)
    ref = kmeans_stream(blocks_of(X, 64), 3, seed=5, device="cpu")
    got = kmeans_stream(blocks_of(X, 64), 3, seed=5, device="cuda")
    np.testing.assert_array_equal(got.labels, ref.labels)


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
        ref = kmeans(X, 5, max_iter=30, **kw, **CPU)
        lines = []
        s = kmeans_stream(
            blocks_of(X, block),
            5,
            max_iter=30,
            log=lines.append,
            cache_bytes=cache_bytes,
            **kw,
            **CPU,
        )
        np.testing.assert_array_equal(s.labels, ref.labels)
        np.testing.assert_allclose(s.centroids, ref.centroids, atol=1e-5)
        assert s.n_iter == ref.n_iter and len(lines) == s.n_iter + 1
        assert abs(s.objective - ref.objective) < 1e-6
    assert kmeans_stream(blocks_of(X, block), 5, max_iter=2, **CPU).labels.shape == (300,)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float64])
def test_streamed_rows_of_other_dtypes_are_read_as_their_values(dtype, cache_bytes):
    """The NumPy kernels read float16 rows by their bits: rows of any other dtype, cached
    or read again each pass, must cluster as the same values in float32."""
    rng = np.random.default_rng(21)
    X = rng.integers(0, 300, (400, 8)).astype(dtype)
    ref = kmeans(X.astype(np.float32), 3, init=X[:3].astype(np.float64) + 1, max_iter=20, **CPU)
    s = kmeans_stream(
        blocks_of(X, 64),
        3,
        init=X[:3].astype(np.float64) + 1,
        max_iter=20,
        cache_bytes=cache_bytes,
        **CPU,
    )
    assert ref.n_iter > 1  # rows moved between passes
    np.testing.assert_array_equal(s.labels, ref.labels)
    assert s.n_iter == ref.n_iter


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


def test_without_numba_numpy_runs_fail_naming_it(monkeypatch):
    import lcseg_steps.clustering.backend as km

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    km._kernels.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="needs numba"):
            kmeans(np.eye(4, dtype=np.float32), 2, **CPU)
    finally:
        km._kernels.cache_clear()


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


def test_streaming_sample_is_uniform_and_independent_of_blocking():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((500, 8)).astype(np.float16)
    s7 = _init_sample(blocks_of(X, 7), 50, 1, "t")
    s64 = _init_sample(blocks_of(X, 64), 50, 1, "t")
    np.testing.assert_array_equal(s7, s64)
    rows = [int(np.flatnonzero((X.astype(np.float32) == r).all(axis=1))[0]) for r in s7]
    assert len(set(rows)) == 50 and rows == sorted(rows)
    keys = seeded_uniforms(1, np.arange(500), 1, domain=1)[:, 0]  # its own domain
    assert rows == sorted(np.argsort(keys)[:50].tolist())
    assert not np.array_equal(s7, _init_sample(blocks_of(X, 7), 50, 2, "t"))
    np.testing.assert_array_equal(_init_sample(blocks_of(X, 7), 10**6, 1, "t"), X)
    a = kmeans_stream(blocks_of(X, 7), 4, init_sample=50, **CPU)
    b = kmeans_stream(blocks_of(X, 64), 4, init_sample=50, **CPU)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)
    d = kmeans_stream(blocks_of(X, 7), 4, init_sample=50, max_iter=0, seed=1, **CPU)
    np.testing.assert_array_equal(d.centroids, kmeans_plusplus(s7, 4, 1))


def ragged(rng, sizes, D, dtype=np.float16):
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return rng.standard_normal((off[-1], D)).astype(dtype), off


@pytest.mark.parametrize("ns", list(NAMESPACES))
def test_offsets_equal_the_per_problem_loop(ns):
    rng = np.random.default_rng(11)
    X, off = ragged(rng, [12, 30, 7, 25, 9, 30, 4, 18], D=10)
    X[off[1] + 3] = 0  # a zero row inside a padded problem
    init = rng.standard_normal((8, 3, 10)).astype(np.float32)
    r = kmeans_ranges(NAMESPACES[ns](X.astype(np.float32)), 3, offsets=off, init=init, max_iter=10)
    assert r.labels.dtype == np.int64 and r.centroids.shape == (8, 3, 10)
    assert r.centroids.dtype == np.float32 and r.objective.shape == r.n_iter.shape == (8,)
    assert r.group_values.tolist() == list(range(8))
    for i in range(8):
        ref = kmeans(X[off[i] : off[i + 1]], 3, init=init[i], max_iter=10, **CPU)
        np.testing.assert_array_equal(r.labels[off[i] : off[i + 1]], ref.labels)
        np.testing.assert_allclose(r.centroids[i], ref.centroids, atol=1e-5)
        assert r.n_iter[i] == ref.n_iter and abs(r.objective[i] - ref.objective) < 1e-6


@pytest.mark.parametrize("ns", list(NAMESPACES))
def test_offsets_kmeanspp_uses_a_stream_per_problem(ns):
    rng = np.random.default_rng(12)
    X, off = ragged(rng, [20, 5, 40, 13, 40, 8], D=6, dtype=np.float32)
    r0 = kmeans_ranges(NAMESPACES[ns](X), 4, offsets=off, max_iter=0, seed=5)
    assert np.all(r0.n_iter == 0)
    for i in range(6):
        ref = kmeans_plusplus(X[off[i] : off[i + 1]], 4, seed=5, stream=i)
        np.testing.assert_allclose(r0.centroids[i], ref, atol=1e-6)
    # problem i's result does not depend on the other problems around it
    alone = kmeans(X[off[2] : off[3]], 4, init=kmeans_plusplus(X[off[2] : off[3]], 4, 5, 2))
    full = kmeans_ranges(NAMESPACES[ns](X), 4, offsets=off, seed=5)
    np.testing.assert_array_equal(full.labels[off[2] : off[3]], alone.labels)


def test_offsets_with_streams_zero_solve_each_problem_as_if_alone():
    """streams= (apply's image level): all 0 gives each problem the k-means of its rows
    alone (stream 0), as lcseg_steps.apply.model_zarr clusters one image."""
    rng = np.random.default_rng(14)
    X, off = ragged(rng, [20, 5, 40, 13], D=6, dtype=np.float32)
    out = kmeans_ranges(X, 3, offsets=off, seed=5, streams=np.zeros(4, np.int64), **CPU)
    for i in range(4):
        ref = kmeans(X[off[i] : off[i + 1]], 3, seed=5, **CPU)
        np.testing.assert_array_equal(out.labels[off[i] : off[i + 1]], ref.labels)
    default = kmeans_ranges(X, 3, offsets=off, seed=5, **CPU)
    assert not np.array_equal(default.centroids[1:], out.centroids[1:])
    with pytest.raises(ValueError, match="streams must have shape"):
        kmeans_ranges(X, 3, offsets=off, streams=[0, 0])


def test_groups_equal_per_group_fits_with_a_stream_per_group():
    rng = np.random.default_rng(13)
    X = rng.standard_normal((120, 5)).astype(np.float32)
    groups = rng.integers(0, 3, 120) * 10
    out = kmeans_groups(X, 2, groups=groups, seed=1, **CPU)
    assert isinstance(out, GroupedKMeansResult) and out.group_values.tolist() == [0, 10, 20]
    assert out.centroids.shape == (3, 2, 5) and out.labels.shape == (120,)
    for i, g in enumerate(out.group_values):
        init = kmeans_plusplus(X[groups == g], 2, seed=1, stream=-1 - int(g))
        ref = kmeans(X[groups == g], 2, init=init, **CPU)
        np.testing.assert_array_equal(out.labels[groups == g], ref.labels)
        np.testing.assert_allclose(out.centroids[i], ref.centroids, atol=1e-6)
        assert out.n_iter[i] == ref.n_iter
    inits = {g: rng.standard_normal((2, 5)) for g in (0, 10, 20)}
    out = kmeans_groups(X, 2, groups=groups, init=inits, max_iter=0, **CPU)
    ref = kmeans(X[groups == 10], 2, init=inits[10], max_iter=0, **CPU)
    np.testing.assert_array_equal(out.labels[groups == 10], ref.labels)


def test_each_group_gets_its_own_stream():
    """The same rows in two groups start from different k-means++ centres (one stream per
    group value), and a group's start does not depend on the other groups."""
    rng = np.random.default_rng(14)
    X = rng.standard_normal((50, 6)).astype(np.float32)
    two = kmeans_groups(np.concatenate([X, X]), 3, groups=np.repeat([3, 8], 50), max_iter=0, seed=2)
    assert not np.allclose(two.centroids[0], two.centroids[1])
    one = kmeans_groups(X, 3, groups=np.full(50, 8), max_iter=0, seed=2)
    np.testing.assert_array_equal(one.centroids[0], two.centroids[1])


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
        return kmeans_stream(
            blocks_of(X, 97),
            3,
            seed=2,
            max_iter=40,
            tol=0.0,
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
    groups = rng.integers(0, 5, X.shape[0])
    for fit, data, kw in (
        (kmeans_ranges, Xb, {"offsets": off}),
        (kmeans_groups, X, {"groups": groups}),
    ):
        r1 = fit(data, 2, seed=3, **kw, **CPU)
        rn = fit(data, 2, seed=3, threads=threads, **kw, **CPU)
        for f in ("labels", "centroids", "objective", "n_iter"):
            np.testing.assert_array_equal(getattr(r1, f), getattr(rn, f))
    assert (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]) == before


def _counted_blocks(arr, rows: int):
    """Lazy blocks of ``rows`` rows of a Zarr array that count their reads: returns the
    per-block read counts (a list, updated in place) and the ``blocks()`` callable."""
    from lcseg_steps.stores.layout import RowBlock, iter_row_blocks

    reads = [0] * -(-arr.shape[0] // rows)

    class Counted(RowBlock):
        def __array__(self, dtype=None, copy=None):
            reads[self.lo // rows] += 1
            return super().__array__(dtype, copy)

    def lazy():
        return (Counted(b.array, b.lo, b.hi) for b in iter_row_blocks(arr, lazy=True))

    return reads, lazy


def test_lazy_blocks_are_read_only_when_not_cached(tmp_path):
    """store.RowBlock blocks give the result of eager blocks; a block whose float32 rows
    are cached is read once (first pass), the others once per pass."""
    from lcseg_steps.stores.layout import open_store, write_store

    rng = np.random.default_rng(23)
    X = rng.standard_normal((1000, 16)).astype(np.float16)
    arr = open_store(write_store(tmp_path / "x.zarr", {"k": X}, chunk_rows=100))["k"]
    reads, lazy = _counted_blocks(arr, 100)

    kw = {"seed": 1, "max_iter": 30, "tol": 0.0, **CPU}
    cache = 3 * 100 * 16 * 4  # the first three blocks' float32 rows
    eager = kmeans_stream(blocks_of(X, 100), 4, cache_bytes=cache, **kw)
    for threads in (1, 2):
        reads[:] = [0] * 10
        got = kmeans_stream(lazy, 4, cache_bytes=cache, threads=threads, **kw)
        np.testing.assert_array_equal(got.labels, eager.labels)
        np.testing.assert_array_equal(got.centroids, eager.centroids)
        assert got.n_iter == eager.n_iter > 3
        # k-means++ reads every block for its sample, the first pass once more; after that
        # only uncached blocks are read, once a pass
        assert reads[:3] == [2, 2, 2]
        assert reads[3:] == [got.n_iter + 2] * 7


def test_stream_cache_is_sized_from_device_memory(monkeypatch, tmp_path):
    """Without ``cache_bytes``, a device namespace (array_api_strict standing in for CuPy)
    caches float32 blocks up to half of the device's free memory, never less than
    STREAM_CACHE_BYTES; NumPy keeps STREAM_CACHE_BYTES; an explicit ``cache_bytes`` wins."""
    import array_api_strict

    import lcseg_steps.clustering.backend as km
    from lcseg_steps.stores.layout import open_store, write_store

    real = km.array_namespace
    strict = array_api_compat.array_namespace(array_api_strict.asarray([0.0]))
    monkeypatch.setattr(km, "array_namespace", lambda d: strict if d == "cuda" else real(d))
    free = {"bytes": 10 << 30}
    monkeypatch.setattr(km, "_device_free_bytes", lambda xp: free["bytes"])
    assert km._cache_budget(strict, None) == 5 << 30
    assert km._cache_budget(real("cpu"), None) == km.STREAM_CACHE_BYTES
    assert km._cache_budget(strict, 123) == 123
    free["bytes"] = 1 << 20
    assert km._cache_budget(strict, None) == km.STREAM_CACHE_BYTES
    free["bytes"] = None
    assert km._cache_budget(strict, None) == km.STREAM_CACHE_BYTES

    # end to end: blocks of 100 x 16 float32 rows, read once when cached, else every pass
    block = 100 * 16 * 4
    monkeypatch.setattr(km, "STREAM_CACHE_BYTES", 3 * block)
    X = np.random.default_rng(24).standard_normal((1000, 16)).astype(np.float32)
    arr = open_store(write_store(tmp_path / "x.zarr", {"k": X}, chunk_rows=100))["k"]
    reads, lazy = _counted_blocks(arr, 100)

    free["bytes"] = 12 * block  # half of it: 6 blocks
    kw = {"seed": 1, "max_iter": 30, "tol": 0.0}
    for device, cache_bytes, cached in (("cuda", None, 6), ("cpu", None, 3), ("cuda", 0, 0)):
        reads[:] = [0] * 10
        got = kmeans_stream(lazy, 4, device=device, cache_bytes=cache_bytes, **kw)
        assert got.n_iter > 3
        assert reads == [2] * cached + [got.n_iter + 2] * (10 - cached)


def test_a_failing_block_in_a_worker_thread_names_the_block():
    X = np.random.default_rng(22).standard_normal((500, 8)).astype(np.float32)
    X[260, 3] = np.nan
    init = X[:2] + 1  # explicit: the k-means++ sample would see the NaN first
    with pytest.raises(ValueError, match="non-finite values in block 2"):
        kmeans_stream(blocks_of(X, 100), 2, init=init, threads=2, **CPU)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            kmeans_stream(blocks_of(X, 100), 2, threads=bad, **CPU)
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            kmeans_ranges(X, 2, offsets=np.array([0, 500]), threads=bad, **CPU)


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_input_raises_clear_errors():
    X = np.random.default_rng(14).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="k=5 clusters but only 3 points"):
        kmeans(X, 5, **CPU)
    Xz = X.copy()
    Xz[1:] = 0
    with pytest.raises(ValueError, match="only 1 non-zero rows"):
        kmeans(Xz, 2, **CPU)
    with pytest.raises(ValueError, match="only 1 non-zero rows"):
        kmeans(Xz, 2, init=np.ones((2, 4)), **CPU)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(X[0], 2, **CPU)
    with pytest.raises(ValueError, match="shape"):
        kmeans(X, 2, init=np.ones((3, 4)), **CPU)
    with pytest.raises(ValueError, match="non-zero"):
        kmeans(X, 2, init=np.zeros((2, 4)), **CPU)
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        kmeans(Xn, 2, **CPU)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        kmeans(X, 0, **CPU)
    with pytest.raises(ValueError, match="init must be 'k-means\\+\\+' or an array"):
        kmeans(X, 2, init="random", **CPU)
    with pytest.raises(ValueError, match="k=4 clusters but only 3 points"):
        kmeans_stream(blocks_of(X, 2), 4, init=np.ones((4, 4)), **CPU)
    with pytest.raises(ValueError, match="block 1 has D=3"):
        kmeans_stream(lambda: iter([X, X[:, :3]]), 2, **CPU)
    with pytest.raises(ValueError, match="init_sample=1"):
        kmeans_stream(blocks_of(X, 2), 2, init_sample=1, **CPU)
    with pytest.raises(ValueError, match="no rows"):
        kmeans_stream(lambda: iter([]), 2, **CPU)


def test_offsets_and_groups_bad_input_names_the_problem():
    rng = np.random.default_rng(15)
    X, off = ragged(rng, [5, 4, 2, 6], D=3)
    with pytest.raises(ValueError, match="problem 2: k=3 clusters but only 2 points"):
        kmeans_ranges(X, 3, offsets=off, **CPU)
    X[off[1] : off[1] + 3] = 0
    for ns in NAMESPACES.values():
        with pytest.raises(ValueError, match="problem 1: k=2 clusters but only 1 non-zero rows"):
            kmeans_ranges(ns(X.astype(np.float32)), 2, offsets=off)
    with pytest.raises(ValueError, match="end at len"):
        kmeans_ranges(X, 2, offsets=off[:-1], **CPU)
    with pytest.raises(ValueError, match=r"\(n_problems, k, D\)"):
        kmeans_ranges(X, 2, offsets=off, init=np.ones((4, 3, 3)), **CPU)
    with pytest.raises(ValueError, match="group 20"):
        kmeans_groups(X, 2, groups=np.array([0] * 16 + [20]), **CPU)
    with pytest.raises(ValueError, match="no centroids for groups"):
        kmeans_groups(X, 2, groups=np.array([0] * 16 + [20]), init={0: np.ones((2, 3))}, **CPU)
    X[5, 1] = np.inf
    with pytest.raises(ValueError, match="problem 1: non-finite values"):
        kmeans_ranges(X, 1, offsets=off, **CPU)
