"""The graph bipartitions (spectral, ncut) against dense scipy eigensolves of matrices
built here by loops, and on planted two-group features."""

import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.clustering.graph_split import (
    NCUT_EPS,
    NCUT_TAU,
    bipartition,
    bipartition_images,
    ncut_bipartition,
    spectral_bipartition,
)


def ref_cos(X):
    n = len(X)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a, b = X[i].astype(float), X[j].astype(float)
            out[i, j] = a @ b / (np.sqrt(a @ a) * np.sqrt(b @ b))
    return out


def ref_dsm(X):
    """Second eigenpair of the dense normalised Laplacian of max(0, cos)."""
    W = np.maximum(ref_cos(X), 0)
    d = W.sum(axis=1)
    L = np.diag(d**-0.5) @ (np.diag(d) - W) @ np.diag(d**-0.5)
    w, V = scipy.linalg.eigh(L)
    return w, V[:, 1]


def ref_ncut(X, tau=NCUT_TAU, eps=NCUT_EPS):
    """Second eigenpair of the dense generalised problem (D - W) y = lambda D y."""
    C = ref_cos(X)
    W = np.array([[1.0 if C[i, j] >= tau else eps for j in range(len(X))] for i in range(len(X))])
    D = np.diag(W.sum(axis=1))
    w, V = scipy.linalg.eigh(D - W, D)
    return w, V[:, 1]


def aligned(ref, got):
    """``ref`` with the sign that matches ``got``."""
    return ref if ref @ got >= 0 else -ref


def planted(rng, sizes, dirs, noise=0.15, dim=16):
    X = np.concatenate(
        [d + noise * rng.standard_normal((s, dim)) for s, d in zip(sizes, dirs, strict=True)]
    )
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return X, truth


@pytest.mark.parametrize("n", [6, 9, 17])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectral_eigenvector_matches_dense_eigh(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)) + 1.0  # mostly positive cosines
    w, v_ref = ref_dsm(X)
    assert w[1] > 1e-6 and w[2] - w[1] > 1e-6  # connected, a well-defined 2nd eigenvector
    b = spectral_bipartition(X)
    np.testing.assert_allclose(b.eigenvalue, w[1], atol=1e-10)
    np.testing.assert_allclose(b.vector, aligned(v_ref, b.vector), atol=1e-8)
    np.testing.assert_array_equal(b.labels, (b.vector > 0).astype(np.int8))
    # the sign rule: the entry of largest magnitude is positive and in label 1
    assert b.vector[np.argmax(np.abs(b.vector))] > 0 and b.fg_label == 1


@pytest.mark.parametrize("n", [6, 9, 17])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ncut_eigenvector_matches_dense_generalised_eigh(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)) + 0.3  # no isolated patch (a repeated eigenvalue)
    w, y_ref = ref_ncut(X)
    assert w[1] > 1e-6 and w[2] - w[1] > 1e-6
    b = ncut_bipartition(X)
    np.testing.assert_allclose(b.eigenvalue, w[1], atol=1e-10)
    y = aligned(y_ref, b.vector)
    np.testing.assert_allclose(b.vector, y, atol=1e-8)
    # split at the mean; TokenCut's foreground holds the largest |y| entry (checked where
    # no entry sits at the mean and the largest |y| is unique: small graphs with symmetries
    # have exact ties, which the eigensolver's sign then decides)
    part = y > y.mean()
    top = np.sort(np.abs(y))[-2:]
    if np.abs(y - y.mean()).min() > 1e-9 and top[1] - top[0] > 1e-9:
        fg_ref = part if part[np.argmax(np.abs(y))] else ~part
        np.testing.assert_array_equal(b.labels, part.astype(np.int8))
        np.testing.assert_array_equal(b.labels == b.fg_label, fg_ref)


def test_ncut_threshold_and_eps_are_used():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((11, 5))
    for tau, eps in [(0.0, 1e-3), (0.5, 1e-5)]:
        w, y_ref = ref_ncut(X, tau, eps)
        b = ncut_bipartition(X, tau=tau, eps=eps)
        np.testing.assert_allclose(b.eigenvalue, w[1], atol=1e-10)
        np.testing.assert_allclose(b.vector, aligned(y_ref, b.vector), atol=1e-8)


@pytest.mark.parametrize("method", ["spectral", "ncut"])
@pytest.mark.parametrize("anti", [False, True])
def test_planted_two_groups_are_recovered(method, anti):
    """Two groups (orthogonal directions, or opposite ones: then the spectral graph falls
    apart into two components and the eigenvalue 0 is double)."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal(16)
    a /= np.linalg.norm(a)
    b = -a if anti else rng.standard_normal(16)
    b = b - (b @ a) * a if not anti else b
    b /= np.linalg.norm(b)
    for sizes in [(30, 10), (12, 25), (3, 40)]:
        X, truth = planted(rng, sizes, [a, b])
        if method == "spectral" and min(sizes) < 5:
            # DSM's sign split at this imbalance: the large group's entries sit just below
            # 0 and a few cross it (a property of the sign threshold, not of the solve)
            continue
        got = bipartition(X, method)
        assert adjusted_rand_score(truth, got.labels) == 1.0, (method, sizes)
        if anti and method == "spectral":
            assert abs(got.eigenvalue) < 1e-8


def test_bipartition_images_ragged():
    rng = np.random.default_rng(6)
    sizes = [20, 1, 0, 2, 33]
    parts = [planted(rng, (s // 2, s - s // 2), np.eye(16)[:2])[0] for s in sizes]
    X = np.concatenate(parts).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for method in ("spectral", "ncut"):
        res = bipartition_images(X, offsets, method)
        assert res["labels"].dtype == np.int16 and res["labels"].shape == (len(X),)
        for i, s in enumerate(sizes):
            lo, hi = offsets[i], offsets[i + 1]
            if s < 2:
                assert res["fg_label"][i] == -1 and np.isnan(res["eigenvalue"][i])
                assert not res["labels"][lo:hi].any()
                continue
            one = bipartition(X[lo:hi], method)
            np.testing.assert_array_equal(res["labels"][lo:hi], one.labels)
            assert res["eigenvalue"][i] == one.eigenvalue and res["fg_label"][i] == one.fg_label


def test_unknown_method_and_tiny_input_are_errors():
    with pytest.raises(ValueError, match="spectral"):
        bipartition(np.ones((3, 2)), "kmeans")
    with pytest.raises(ValueError, match="at least 2"):
        spectral_bipartition(np.ones((1, 2)))
