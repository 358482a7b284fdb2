"""The drivers of the cosine k-means (lcseg_steps.clustering.kmeans): every row source
(plain, ranges, groups, stream) against the in-memory one, in every namespace (NumPy,
array_api_strict, torch); the streamed sample and block reads; bad input; defaults equal to
the schema's."""

import inspect

import numpy as np
import pytest

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
from tests.cosine_rows import CPU, NAMESPACES, blocks_of, counted_blocks, ragged
from tests.schema_defaults import schema_defaults


def test_l2_normalize_keeps_zero_rows_zero():
    X = np.array([[3, 4, 0], [0, 0, 0], [1e-20, 0, 0], [-2, 0, 0]], dtype=np.float16)
    Y = l2_normalize(X)
    assert Y.dtype == np.float32 and not np.isnan(Y).any()
    np.testing.assert_allclose(Y[0], [0.6, 0.8, 0], atol=1e-6)
    assert np.all(Y[1] == 0) and np.all(Y[2] == 0)  # float16 underflows 1e-20 to 0
    np.testing.assert_allclose(np.linalg.norm(Y[[0, 3]], axis=1), 1, atol=1e-6)
    tiny = l2_normalize(np.array([[1e-13, 0.0]], dtype=np.float32))
    assert np.all(tiny == 0)  # norm <= eps counts as a zero row, not a 1e-1 vector


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


def test_lazy_blocks_are_read_only_when_not_cached(tmp_path):
    """store.RowBlock blocks give the result of eager blocks; a block whose float32 rows
    are cached is read once (first pass), the others once per pass."""
    from lcseg_steps.stores.layout import open_store, write_store

    rng = np.random.default_rng(23)
    X = rng.standard_normal((1000, 16)).astype(np.float16)
    arr = open_store(write_store(tmp_path / "x.zarr", {"k": X}, chunk_rows=100))["k"]
    reads, lazy = counted_blocks(arr, 100)

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


def test_defaults_are_the_schemas():
    """A default of a driver that the schema also sets (``clustering.max_iter``, ``tol``,
    ``init_sample``) is the schema's: a call without it behaves as the default config."""
    clustering = schema_defaults("clustering")
    for fit in (kmeans, kmeans_ranges, kmeans_groups, kmeans_stream):
        params = inspect.signature(fit).parameters
        shared = [key for key in ("max_iter", "tol", "init_sample") if key in params]
        assert shared and all(params[key].default == clustering[key] for key in shared), fit
