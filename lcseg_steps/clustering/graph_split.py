"""Graph bipartitions of one image's patches: the image-level alternatives to k-means.

Two methods, written from their papers' descriptions (no code taken from their repos):

- ``spectral`` (Deep Spectral Methods, Melas-Kyriazi et al. 2022): affinity
  ``W = max(0, cos(f_i, f_j))`` of the image's patch features (DSM's optional KNN colour
  affinity is left out), normalised Laplacian ``L = D^-1/2 (D - W) D^-1/2``, the
  eigenvector ``v`` of its second-smallest eigenvalue (the Fiedler vector), split by its
  **sign** (``v > 0`` against ``v <= 0``).
- ``ncut`` (normalised cut as TokenCut, Wang et al. 2022, and MaskCut use it):
  ``W_ij = 1`` if ``cos(f_i, f_j) >= tau`` else ``eps`` (``tau = 0.2``, ``eps = 1e-5``),
  the generalised eigenproblem ``(D - W) y = lambda D y``, its second-smallest
  eigenvector ``y`` split by its **mean** (``y > mean(y)`` against the rest). TokenCut's
  own foreground is the side holding the entry of largest ``|y|``.

In both ``D = diag(W 1)`` and the diagonal of ``W`` is kept (``cos(f_i, f_i) = 1``).
Both eigenproblems are solved as one symmetric problem: with ``M = D^-1/2 W D^-1/2``,
``L = I - M``, so the second-smallest eigenvalue of ``L`` is ``1 -`` the second-largest of
``M``, and ``y = D^-1/2 v`` solves the generalised problem (scaled to ``y^T D y = 1``, as
``scipy.linalg.eigh(D - W, D)`` does). The trivial eigenvector ``u ~ D^1/2 1`` of ``M``
(eigenvalue 1) is deflated to eigenvalue -1 first and only the largest eigenpair of the
result is computed (dense LAPACK ``evr``), so the Fiedler vector is always orthogonal to
``u`` (``y^T D 1 = 0``, Shi and Malik's constraint) and changes sign: on a graph with two
disconnected parts (eigenvalue 0 twice) it is the split into those parts, where a plain
eigensolver may return any vector of the two-dimensional eigenspace.

An eigenvector's sign is arbitrary; here it is fixed so that its entry of largest
absolute value (the first such) is positive, which makes the labels deterministic and
puts that entry in label 1 in both methods. Labels are ``(n,)`` in {0, 1}; label 1 is
``v > 0`` (spectral) or ``y > mean(y)`` (ncut).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

METHODS = ("spectral", "ncut")
NCUT_TAU = 0.2
NCUT_EPS = 1e-5
_TINY = 1e-12  # floor of a degree (a zero feature row has no positive affinity)


@dataclass(frozen=True)
class Bipartition:
    """One image's split: ``labels`` ``(n,)`` int8 in {0, 1}; ``vector`` ``(n,)`` float64,
    the eigenvector that was thresholded (``v`` for spectral, ``y`` for ncut);
    ``eigenvalue`` its eigenvalue (second-smallest, in [0, 2]); ``fg_label`` the method's
    own foreground label (the side holding the entry of largest ``|vector|``)."""

    labels: np.ndarray
    vector: np.ndarray
    eigenvalue: float
    fg_label: int


def cosine_matrix(X: np.ndarray) -> np.ndarray:
    """``(n, D)`` features -> ``(n, n)`` float64 cosine similarities (zero rows give 0)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(norms > 0, norms, 1.0)
    return Xn @ Xn.T


def dsm_affinity(X: np.ndarray) -> np.ndarray:
    """``(n, D)`` -> ``(n, n)`` ``max(0, cos)`` (Deep Spectral Methods' feature affinity)."""
    return np.maximum(cosine_matrix(X), 0.0)


def ncut_affinity(X: np.ndarray, tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> np.ndarray:
    """``(n, D)`` -> ``(n, n)``: 1 where ``cos >= tau``, else ``eps`` (TokenCut's graph)."""
    return np.where(cosine_matrix(X) >= tau, 1.0, eps)


def fiedler(W: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Second-smallest eigenpair of the normalised Laplacian of affinity ``W`` ``(n, n)``.

    Returns ``(lambda, v, y)``: ``v`` ``(n,)`` unit eigenvector of ``D^-1/2 (D - W) D^-1/2``,
    ``y = D^-1/2 v`` ``(n,)`` the matching eigenvector of ``(D - W) y = lambda D y``
    (``y^T D y = 1``); each sign fixed as in the module docstring. Needs ``n >= 2``.
    """
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[0]
    if W.shape != (n, n) or n < 2:
        raise ValueError(f"affinity must be square with at least 2 rows, got {W.shape}")
    d = np.maximum(W.sum(axis=1), _TINY)
    s = 1.0 / np.sqrt(d)
    u = np.sqrt(d) / np.linalg.norm(np.sqrt(d))  # M's known top eigenvector (eigenvalue 1)
    M = W * s[:, None] * s[None, :] - 2.0 * np.outer(u, u)  # deflated: u -> -1
    mu, vecs = scipy.linalg.eigh(M, subset_by_index=[n - 1, n - 1], driver="evr")
    v = vecs[:, 0]  # the second-largest of M is the second-smallest of L = I - M
    lam = float(1.0 - mu[0])
    v = v * (1.0 if v[np.argmax(np.abs(v))] >= 0 else -1.0)
    y = s * v
    y = y * (1.0 if y[np.argmax(np.abs(y))] >= 0 else -1.0)
    return lam, v, y


def _split(vector: np.ndarray, threshold: float, lam: float) -> Bipartition:
    labels = (vector > threshold).astype(np.int8)
    return Bipartition(labels, vector, lam, int(labels[np.argmax(np.abs(vector))]))


def spectral_bipartition(X: np.ndarray) -> Bipartition:
    """Deep Spectral Methods' split of ``(n, D)`` patch features: sign of the Fiedler
    vector of ``max(0, cos)``'s normalised Laplacian (``n >= 2``)."""
    lam, v, _ = fiedler(dsm_affinity(X))
    return _split(v, 0.0, lam)


def ncut_bipartition(X: np.ndarray, tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> Bipartition:
    """TokenCut's normalised cut of ``(n, D)`` patch features: the second-smallest
    generalised eigenvector of the thresholded cosine graph, split at its mean
    (``n >= 2``); ``fg_label`` is TokenCut's foreground (the side of the largest ``|y|``)."""
    lam, _, y = fiedler(ncut_affinity(X, tau, eps))
    return _split(y, float(y.mean()), lam)


def bipartition(X: np.ndarray, method: str, **kw) -> Bipartition:
    """One image's split by ``method`` in :data:`METHODS` (``kw``: ncut's ``tau``, ``eps``)."""
    if method == "spectral":
        return spectral_bipartition(X)
    if method == "ncut":
        return ncut_bipartition(X, **kw)
    raise ValueError(f"graph bipartition method must be one of {METHODS}, got {method!r}")


def bipartition_images(
    X: np.ndarray, offsets: np.ndarray, method: str, **kw
) -> dict[str, np.ndarray]:
    """Split every image of a ragged shard (``X`` ``(N, D)``, ``offsets`` ``(n + 1,)``).

    Returns ``labels`` ``(N,)`` int16 in {0, 1}, ``eigenvalue`` ``(n,)`` float64 and
    ``fg_label`` ``(n,)`` int16 (the method's own foreground); an image with fewer than
    2 patches keeps label 0, eigenvalue NaN and fg_label -1.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    labels = np.zeros(np.asarray(X).shape[0], dtype=np.int16)
    eigenvalue = np.full(n, np.nan)
    fg_label = np.full(n, -1, dtype=np.int16)
    for i in range(n):
        lo, hi = offsets[i], offsets[i + 1]
        if hi - lo < 2:
            continue
        b = bipartition(np.asarray(X[lo:hi]), method, **kw)
        labels[lo:hi] = b.labels
        eigenvalue[i] = b.eigenvalue
        fg_label[i] = b.fg_label
    return {"labels": labels, "eigenvalue": eigenvalue, "fg_label": fg_label}
