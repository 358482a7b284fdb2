"""Tests of lcseg_steps.clustering.class_count (``n_classes: auto``, ``n_categories: auto``):
planted counts are found, the choice and eigenvalues equal a brute-force eigengap, the sparse
(ARPACK) path equals the dense one, and where the criterion fails (overlapping classes)."""

from __future__ import annotations

import numpy as np
import pytest

from lcseg_steps.clustering.class_count import check_range, eigengap_count, laplacian_eigenvalues


def _planted(n_classes, per=30, dim=32, noise=0.05, seed=0):
    """``(n_classes * per, dim)`` float32 rows around random unit directions (random
    positive scales: only the direction matters), shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_classes), per)
    x = centres[truth] + noise * rng.normal(size=(len(truth), dim))
    x *= rng.uniform(0.5, 20.0, size=(len(truth), 1))
    return x[rng.permutation(len(truth))].astype(np.float32)


def _brute_force(x, n_neighbors, kmin, kmax):
    """The eigengap written out: cosine kNN affinity by loops, the dense L_sym, eigvalsh."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    unit = [row / np.sqrt(sum(v * v for v in row)) for row in x]
    sim = np.array([[float(np.dot(unit[i], unit[j])) for j in range(n)] for i in range(n)])
    a = np.zeros((n, n))
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -sim[i, j])
        for j in others[:n_neighbors]:
            a[i, j] = max(sim[i, j], 1e-6)
    a = (a + a.T) / 2
    deg = a.sum(axis=1)
    lap = np.eye(n)
    for i in range(n):
        for j in range(n):
            lap[i, j] -= a[i, j] / np.sqrt(deg[i] * deg[j])
    lam = np.linalg.eigvalsh(lap)[: kmax + 1]
    gaps = [lam[k] - lam[k - 1] for k in range(kmin, kmax + 1)]  # λ_{k+1} - λ_k
    return kmin + int(np.argmax(gaps)), lam


@pytest.mark.parametrize("n_classes", [3, 8, 20])
@pytest.mark.parametrize("data_seed", [0, 1])
def test_finds_planted_separated_classes(n_classes, data_seed):
    x = _planted(n_classes, seed=data_seed)
    k, lam = eigengap_count(x, 10, (2, 50), seed=0)
    assert k == n_classes
    assert lam.shape == (51,) and np.all(np.diff(lam) >= -1e-12)
    # one eigenvalue near 0 per class, then the jump
    assert lam[n_classes - 1] < 1e-8 < 0.3 < lam[n_classes]


@pytest.mark.parametrize("noise, n_neighbors, k_range", [(0.3, 5, (1, 12)), (0.8, 4, (2, 9))])
def test_equals_a_brute_force_eigengap(noise, n_neighbors, k_range):
    x = _planted(4, per=12, dim=8, noise=noise, seed=3)
    k, lam = eigengap_count(x, n_neighbors, k_range, seed=0)
    k_ref, lam_ref = _brute_force(x, n_neighbors, *k_range)
    assert k == k_ref
    np.testing.assert_allclose(lam, lam_ref, atol=1e-9)


@pytest.mark.parametrize("noise", [0.05, 0.3])
def test_sparse_path_equals_dense(noise):
    # dense_max below the component sizes: every component goes through ARPACK (and, at
    # noise 0.05, a disconnected graph whose 0 has multiplicity 6)
    x = _planted(6, per=40, noise=noise, seed=2)
    k_dense, lam_dense = eigengap_count(x, 10, (2, 15), seed=0)
    k_sparse, lam_sparse = eigengap_count(x, 10, (2, 15), seed=0, dense_max=10)
    assert k_sparse == k_dense == 6
    np.testing.assert_allclose(lam_sparse, lam_dense, atol=1e-8)


def test_fails_on_overlapping_classes():
    """The documented limitation: with classes that overlap the eigenvalues rise smoothly;
    no gap stands out and the count is not found."""
    x = _planted(8, noise=0.5, seed=0)
    k, lam = eigengap_count(x, 10, (2, 50), seed=0)
    gaps = np.diff(lam)[1:]
    assert k != 8 and gaps.max() < 0.1
    k_clear, lam_clear = eigengap_count(_planted(8, seed=0), 10, (2, 50), seed=0)
    assert k_clear == 8 and np.diff(lam_clear)[1:].max() > 0.3


def test_sample_is_the_seeded_fit_sample_and_range_is_clipped():
    x = _planted(3, per=40, seed=5)
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(len(x), size=50, replace=False))
    k, lam = eigengap_count(x, 10, (2, 80), seed=7, fit_sample=50)
    k_ref, lam_ref = eigengap_count(x[rows], 10, (2, 80), seed=7)
    assert k == k_ref == 3
    assert lam.shape == (50,)  # kmax clipped to 49 = rows - 1
    np.testing.assert_array_equal(lam, lam_ref)
    k_all, _ = eigengap_count(x, 10, (2, 80), seed=7, fit_sample=len(x))
    assert k_all == 3


def test_bad_input():
    x = _planted(3)
    for bad in [(0, 5), (5, 4), (3,)]:
        with pytest.raises(ValueError, match="auto_range"):
            eigengap_count(x, 10, bad, seed=0)
    with pytest.raises(ValueError, match="only 3 rows"):
        eigengap_count(x[:3], 10, (3, 10), seed=0)
    with pytest.raises(ValueError, match="n_neighbors"):
        eigengap_count(x, 0, (2, 10), seed=0)
    with pytest.raises(ValueError, match="NaN"):
        eigengap_count(np.full((6, 4), np.nan, dtype=np.float32), 2, (1, 3), seed=0)
    assert check_range([2, 50]) == (2, 50)


def test_laplacian_eigenvalues_of_a_known_graph():
    from scipy.sparse import csr_matrix

    # two disjoint triangles: L_sym of a triangle has eigenvalues 0, 1.5, 1.5
    tri = np.ones((3, 3)) - np.eye(3)
    a = np.zeros((6, 6))
    a[:3, :3] = a[3:, 3:] = tri
    for dense_max in (100, 1):
        lam = laplacian_eigenvalues(csr_matrix(a), 6, dense_max=dense_max)
        np.testing.assert_allclose(lam, [0, 0, 1.5, 1.5, 1.5, 1.5], atol=1e-12)
