"""How many classes: the eigengap of the normalised graph Laplacian.

``labels.n_classes: auto`` (stage ``assign``) and ``clustering.n_categories: auto`` (stage
``fit_category``) choose the count from the data alone. The graph is the one spectral
clustering builds, :func:`lcseg_steps.clustering.class_clustering.cosine_knn_affinity` ``A``; with
``D = diag(A 1)`` its normalised Laplacian ``L_sym = I - D^-1/2 A D^-1/2`` has eigenvalues
``0 = λ1 <= λ2 <= ... <= 2``. A graph of ``c`` well-separated groups has ``c`` eigenvalues
near 0 and a jump after them, so the count is the ``k`` in ``[kmin, kmax]`` maximising
``λ_{k+1} - λ_k`` (von Luxburg 2007, section 8.3). It fails when the groups overlap: the
eigenvalues then rise smoothly, no gap stands out, and the largest one is as good as
arbitrary (see docs/method.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lcseg_steps.clustering.class_clustering import (
    _check_descriptors,
    cosine_knn_affinity,
    sample_rows,
)

# Components up to this many nodes are solved densely (numpy eigvalsh); above, ARPACK.
DENSE_MAX = 2000
CRITERION = "eigengap of the normalised Laplacian of the cosine kNN graph"


def check_range(k_range: Sequence[int], what: str = "auto_range") -> tuple[int, int]:
    """``[kmin, kmax]`` -> ``(kmin, kmax)``, ``1 <= kmin <= kmax`` (a ValueError otherwise)."""
    if len(k_range) != 2:
        raise ValueError(f"{what} must be [min, max], got {list(k_range)}")
    kmin, kmax = (int(k) for k in k_range)
    if not 1 <= kmin <= kmax:
        raise ValueError(f"{what} must be [min, max] with 1 <= min <= max, got {list(k_range)}")
    return kmin, kmax


def auto_record(k_range: Sequence[int], chosen: int) -> dict:
    """What a store records of an ``auto`` count: the criterion, the range and the choice."""
    return {"criterion": CRITERION, "range": [int(k) for k in k_range], "chosen": chosen}


def _component_eigenvalues(m, n_eig: int, dense_max: int, rng) -> np.ndarray:
    """The ``n_eig`` smallest eigenvalues of ``I - m`` for one connected component's
    ``m = D^-1/2 A D^-1/2`` (scipy sparse ``(s, s)``), ascending; all ``s`` if fewer."""
    s = m.shape[0]
    if s <= max(dense_max, n_eig + 1):
        mu = np.linalg.eigvalsh(m.toarray())[::-1]
    else:
        from scipy.sparse.linalg import eigsh

        # the largest of m are the smallest of L_sym, and Lanczos finds the extreme end of
        # the spectrum fastest; within one connected component the top eigenvalue (1) is
        # simple, so Lanczos misses no copy of it (a disconnected graph is split first)
        v0 = rng.uniform(-1.0, 1.0, s)
        mu = eigsh(m, k=n_eig, which="LA", v0=v0, return_eigenvectors=False)[::-1]
    return 1.0 - mu[:n_eig]


def laplacian_eigenvalues(
    affinity, n_eig: int, dense_max: int = DENSE_MAX, seed: int = 0
) -> np.ndarray:
    """The ``n_eig`` smallest eigenvalues of ``L_sym = I - D^-1/2 A D^-1/2``, ascending.

    Args:
        affinity: ``(n, n)`` symmetric non-negative scipy sparse ``A`` with positive degrees.
        n_eig: how many, ``1 <= n_eig <= n``.
        dense_max: connected components up to this size are solved densely.
        seed: ARPACK's start vector (the result does not depend on it beyond round-off).

    Returns:
        ``(n_eig,)`` float64, ascending, clipped to ``[0, 2]``.

    The spectrum of a graph is the union of its connected components' spectra: each is
    solved on its own, so that the exact multiplicity of the eigenvalue 0 (one per
    component) is found even where ARPACK would return one copy of it.
    """
    from scipy.sparse import csr_matrix, diags
    from scipy.sparse.csgraph import connected_components

    a = csr_matrix(affinity, dtype=np.float64)
    n = a.shape[0]
    if not 1 <= n_eig <= n:
        raise ValueError(f"n_eig must lie in [1, {n}], got {n_eig}")
    deg = np.asarray(a.sum(axis=1)).ravel()
    if (deg <= 0).any():
        raise ValueError("the affinity has a node without edges (degree 0)")
    d = diags(1.0 / np.sqrt(deg))
    m = (d @ a @ d).tocsr()
    rng = np.random.default_rng(seed)
    if n <= dense_max:  # dense eigvalsh finds every multiplicity: no need to split
        return np.clip(_component_eigenvalues(m, n_eig, dense_max, rng), 0.0, 2.0)
    n_comp, comp = connected_components(a, directed=False)
    order = np.argsort(comp, kind="stable")  # each component's nodes, one after another
    sizes = np.bincount(comp, minlength=n_comp)
    ends = np.cumsum(sizes)
    parts = []
    for start, end in zip(ends - sizes, ends, strict=True):
        rows = order[start:end]
        sub = m[rows][:, rows]
        parts.append(_component_eigenvalues(sub, min(n_eig, len(rows)), dense_max, rng))
    lam = np.sort(np.concatenate(parts))[:n_eig]
    return np.clip(lam, 0.0, 2.0)


def eigengap_count(
    descriptors: np.ndarray,
    n_neighbors: int,
    k_range: Sequence[int],
    seed: int,
    fit_sample: int | None = None,
    dense_max: int = DENSE_MAX,
) -> tuple[int, np.ndarray]:
    """The number of classes in ``descriptors`` by the eigengap of the cosine kNN graph.

    Args:
        descriptors: ``(n, D)`` float, compared by cosine (rows are L2-normalised here;
            NaN, inf and all-zero rows are errors, as for the clustering).
        n_neighbors: kNN graph degree (:func:`cosine_knn_affinity`), clipped to ``m - 1``
            for ``m`` rows in the graph.
        k_range: ``[kmin, kmax]``, ``1 <= kmin <= kmax``; ``kmax`` is clipped to ``m - 1``
            (``λ_{k+1}`` must exist).
        seed: with more than ``fit_sample`` rows, the seeded sample is the one
            :func:`lcseg_steps.clustering.class_clustering.fit_classes` draws with the same
            seed and ``fit_sample`` (``numpy.random.default_rng(seed)``, ``fit_sample`` rows
            without replacement, in their order); also ARPACK's start vector.
        fit_sample: at most this many rows make the graph; None: all.
        dense_max: connected components up to this size are solved densely.

    Returns:
        ``(k, eigenvalues)``: ``k`` in ``[kmin, min(kmax, m - 1)]`` maximising
        ``λ_{k+1} - λ_k`` (the smallest such ``k`` on a tie) and ``eigenvalues``
        ``(min(kmax, m - 1) + 1,)`` float64, ``λ1 <= λ2 <= ...`` of ``L_sym``.

    Raises:
        ValueError: a bad range, too few rows (``m <= kmin``), bad descriptors.
    """
    kmin, kmax = check_range(k_range)
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    x = _check_descriptors(descriptors, 1)
    n = x.shape[0]
    if fit_sample is not None and n > fit_sample:
        x = x[sample_rows(n, fit_sample, seed)]
    m = x.shape[0]
    if m <= kmin:
        raise ValueError(
            f"only {m} rows to choose a count in [{kmin}, {kmax}] by the eigengap: it needs "
            f"more than {kmin}"
        )
    kmax = min(kmax, m - 1)
    affinity = cosine_knn_affinity(x, min(n_neighbors, m - 1))
    lam = laplacian_eigenvalues(affinity, kmax + 1, dense_max, seed)
    gaps = lam[kmin:] - lam[kmin - 1 : -1]  # gaps[i] = λ_{kmin+i+1} - λ_{kmin+i}
    return kmin + int(np.argmax(gaps)), lam
