"""The backends of the cosine k-means (lcseg_steps.clustering.backend): the namespace of a
device, rows shipped to it, the stream cache sized from its memory, NumPy's compiled kernels
(and a clear error without numba), and worker threads that change no bit."""

import sys

import array_api_compat
import numpy as np
import pytest

from lcseg_steps.clustering.backend import array_namespace
from lcseg_steps.clustering.kmeans import (
    kmeans,
    kmeans_groups,
    kmeans_ranges,
    kmeans_stream,
)
from tests.cosine_rows import CPU, blocks_of, counted_blocks


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


def test_without_numba_numpy_runs_fail_naming_it(monkeypatch):
    import lcseg_steps.clustering.backend as km

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    km._kernels.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="needs numba"):
            kmeans(np.eye(4, dtype=np.float32), 2, **CPU)
    finally:
        km._kernels.cache_clear()


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
    reads, lazy = counted_blocks(arr, 100)

    free["bytes"] = 12 * block  # half of it: 6 blocks
    kw = {"seed": 1, "max_iter": 30, "tol": 0.0}
    for device, cache_bytes, cached in (("cuda", None, 6), ("cpu", None, 3), ("cuda", 0, 0)):
        reads[:] = [0] * 10
        got = kmeans_stream(lazy, 4, device=device, cache_bytes=cache_bytes, **kw)
        assert got.n_iter > 3
        assert reads == [2] * cached + [got.n_iter + 2] * (10 - cached)
