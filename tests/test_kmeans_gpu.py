"""The k-means engine on a CUDA device (CuPy) against NumPy, for every row source: same
data and init, labels equal on >= 99.9% of rows, objective within 1e-5 relative."""

import numpy as np
import pytest

from lcseg_steps.clustering.kmeans import (
    kmeans,
    kmeans_groups,
    kmeans_plusplus,
    kmeans_ranges,
    kmeans_stream,
)

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


def _has_device() -> bool:
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not _has_device():
    pytest.skip("no CUDA device visible", allow_module_level=True)


def blobs(rng, n, D, k, noise=0.6):
    centres = rng.standard_normal((k, D))
    X = centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, D))
    return X.astype(np.float16)


def agree(a, b):
    assert a.shape == b.shape
    assert np.mean(a == b) >= 0.999, np.mean(a == b)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


@pytest.mark.parametrize("k", [2, 5])
def test_single_problem(k):
    X = blobs(np.random.default_rng(0), 20000, 64, k)
    init = kmeans_plusplus(X, k, seed=1)
    ref = kmeans(X, k, init=init, max_iter=20, device="cpu")
    got = kmeans(X, k, init=init, max_iter=20, device="cuda")
    assert isinstance(got.labels, np.ndarray) and isinstance(got.centroids, np.ndarray)
    agree(got.labels, ref.labels)
    close(got.objective, ref.objective)
    # a CuPy input runs in its own namespace (device=None)
    agree(kmeans(cupy.asarray(X), k, init=init, max_iter=20).labels, ref.labels)


@pytest.mark.parametrize("k", [2, 3])
def test_offsets(k):
    rng = np.random.default_rng(1)
    sizes = rng.integers(200, 400, 300)
    off = np.concatenate([[0], np.cumsum(sizes)])
    X = np.concatenate([blobs(rng, int(s), 48, k) for s in sizes])
    init = np.stack([kmeans_plusplus(X[off[i] : off[i + 1]], k, 0, stream=i) for i in range(300)])
    ref = kmeans_ranges(X, k, offsets=off, init=init, max_iter=10, device="cpu")
    got = kmeans_ranges(X, k, offsets=off, init=init, max_iter=10, device="cuda")
    agree(got.labels, ref.labels)
    close(got.objective, ref.objective)
    pp = kmeans_ranges(X, k, offsets=off, max_iter=10, seed=3, device="cpu")  # k-means++ inside
    agree(kmeans_ranges(X, k, offsets=off, max_iter=10, seed=3, device="cuda").labels, pp.labels)


def test_groups():
    rng = np.random.default_rng(2)
    X = blobs(rng, 30000, 32, 4)
    groups = rng.integers(0, 5, len(X)) * 3
    ref = kmeans_groups(X, 4, groups=groups, max_iter=15, seed=2, device="cpu")
    got = kmeans_groups(X, 4, groups=groups, max_iter=15, seed=2, device="cuda")
    np.testing.assert_array_equal(got.group_values, ref.group_values)
    agree(got.labels, ref.labels)
    close(got.objective, ref.objective)


def test_stream():
    X = blobs(np.random.default_rng(3), 50000, 64, 3)

    def blocks():
        return (X[i : i + 4096] for i in range(0, len(X), 4096))

    kw = {"init_sample": 5000, "max_iter": 15, "seed": 4}
    ref = kmeans_stream(blocks, 3, device="cpu", cache_bytes=8 * 4096 * 64 * 4, **kw)
    got = kmeans_stream(blocks, 3, device="cuda", cache_bytes=8 * 4096 * 64 * 4, **kw)
    agree(got.labels, ref.labels)
    close(got.objective, ref.objective)
