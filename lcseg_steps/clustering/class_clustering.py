"""Clustering of unit descriptors into classes: the object regions' CLS descriptors of the
stage ``assign``, the images' CLS tokens of the stage ``fit_category`` (pseudo-categories).

Each cluster is one class; rows are compared by cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcseg_steps.clustering.kmeans import kmeans, nearest_centroid

METHODS = ("spectral", "kmeans", "agglomerative")


def _check_descriptors(descriptors: np.ndarray, n_classes: int) -> np.ndarray:
    x = np.asarray(descriptors)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"descriptors must be (n_regions, D) with D >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"descriptors must be floating point, got dtype {x.dtype}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    n = x.shape[0]
    if n < n_classes:
        raise ValueError(
            f"only {n} object regions to split into {n_classes} classes; lower n_classes "
            f"or add images (or relax the mask stages so more regions survive)"
        )
    x = x.astype(np.float64)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"{int((~finite).sum())} descriptors contain NaN/inf (first at row "
            f"{int(np.flatnonzero(~finite)[0])})"
        )
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        raise ValueError(
            f"{int(zero.sum())} descriptors are all-zero, cosine similarity is undefined "
            f"(first at row {int(np.flatnonzero(zero)[0])})"
        )
    x /= norms[:, None]  # in place: x is astype's copy (no second float64 copy)
    return x


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """The seeded sample of ``size`` of ``n`` rows that spectral and agglomerative fits
    cluster (and the eigengap of ``auto`` counts on): ``(size,)`` int64 ascending, drawn
    without replacement by ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def cosine_knn_affinity(x: np.ndarray, n_neighbors: int):
    """Symmetric cosine-similarity kNN affinity on unit vectors, scipy CSR ``(n, n)`` float64.

    Each point links to its ``n_neighbors`` nearest points by cosine distance (itself
    excluded) with weight = cosine similarity, floored at ``1e-6`` so that a neighbour
    with non-positive similarity keeps a negligible edge instead of a negative one; then
    ``A = (A + A.T) / 2``. Similarity weights rather than 0/1 connectivity: with few
    regions ``n_neighbors`` is clipped to ``n - 1``, the graph becomes complete, and
    connectivity weights would carry no information at all.

    Args:
        x: ``(n, D)`` float, L2-normalised rows.
        n_neighbors: graph degree, ``1 <= n_neighbors < n``.
    """
    from sklearn.neighbors import kneighbors_graph

    a = kneighbors_graph(x, n_neighbors, mode="distance", metric="cosine", include_self=False)
    a.data = np.maximum(1.0 - a.data, 1e-6)
    return (0.5 * (a + a.T)).tocsr()


@dataclass
class ClassFit:
    """The result of :func:`fit_classes`.

    ``labels``: ``(n_regions,)`` int64 class of every region. ``prototypes``:
    ``(n_classes, D)`` float32, the L2-normalised mean descriptor (unit rows) of each
    class among the fitted regions; all-zero for a class the clusterer left empty.
    ``fitted``: ``(m,)`` int64 ascending rows the clusterer saw (all rows when
    ``m == n_regions``); every other row took the class of its nearest prototype
    (:func:`lcseg_steps.clustering.kmeans.nearest_centroid`).
    """

    labels: np.ndarray
    prototypes: np.ndarray
    fitted: np.ndarray


def _cluster(
    x: np.ndarray,
    n_classes: int,
    method: str,
    n_neighbors: int,
    seed: int,
    spectral_labelling: str,
    n_init: int,
) -> np.ndarray:
    """Labels of unit rows ``x`` (``n >= n_classes >= 1``) by one clusterer, on all rows."""
    n = x.shape[0]
    if n_classes == 1:
        return np.zeros(n, dtype=np.int64)
    if n == n_classes and method != "kmeans":
        # One region per class is the only partition into n_classes non-empty classes;
        # the spectral embedding cannot even be computed (ARPACK needs k < n).
        return np.arange(n, dtype=np.int64)

    if method == "kmeans":
        x32 = x.astype(np.float32)
        # 50 passes: fixed here (the schema's clustering.max_iter is the levels' setting)
        runs = (kmeans(x32, n_classes, max_iter=50, seed=seed + i) for i in range(n_init))
        # max() keeps the first of equal objectives, so the result is seed-deterministic.
        return max(runs, key=lambda r: r.objective).labels  # NumPy int64

    if method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        # Ward on unit rows: ||a - b||^2 = 2 - 2 cos(a, b), so it merges by cosine.
        model = AgglomerativeClustering(n_clusters=n_classes, linkage="ward")
        return model.fit_predict(x).astype(np.int64)

    from sklearn.cluster import SpectralClustering

    affinity = cosine_knn_affinity(x, min(n_neighbors, n - 1))
    model = SpectralClustering(
        n_clusters=n_classes,
        affinity="precomputed",
        assign_labels=spectral_labelling,  # sklearn's name
        random_state=seed,
    )
    return model.fit_predict(affinity).astype(np.int64)


def class_prototypes(x: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, D)`` float64: the normalised mean of the unit rows ``x`` of each class
    (all-zero for an empty class)."""
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, labels, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def fit_classes(
    descriptors: np.ndarray,
    n_classes: int,
    *,
    class_clusterer: str = "spectral",
    n_neighbors: int = 10,
    seed: int = 0,
    spectral_labelling: str = "cluster_qr",
    n_init: int = 10,
    fit_sample: int | None = None,
) -> ClassFit:
    """Cluster region descriptors into ``n_classes`` classes; see :func:`cluster_classes`.

    With ``fit_sample`` set and more regions than that, ``spectral`` and
    ``agglomerative`` cluster a seeded random sample of ``fit_sample`` regions (rows drawn
    without replacement by ``numpy.random.default_rng(seed)``, kept in their order) and
    give every other region the class of its nearest prototype by cosine. ``kmeans`` always
    fits all regions (its cost is linear in their number). With at most ``fit_sample``
    regions every region is fitted and the labels equal a fit without a sample.
    """
    if class_clusterer not in METHODS:
        raise ValueError(f"unknown class clusterer {class_clusterer!r}; expected one of {METHODS}")
    if class_clusterer == "spectral" and n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    if class_clusterer == "kmeans" and n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if fit_sample is not None and fit_sample < n_classes:
        raise ValueError(
            f"labels.fit_sample={fit_sample} is below labels.n_classes={n_classes}: the "
            "sample cannot hold a region of every class; raise labels.fit_sample"
        )
    x = _check_descriptors(descriptors, n_classes)
    n = x.shape[0]
    if fit_sample is None or n <= fit_sample or class_clusterer == "kmeans":
        fitted = np.arange(n, dtype=np.int64)
    else:
        fitted = sample_rows(n, fit_sample, seed)
    xs = x if len(fitted) == n else x[fitted]
    fit_labels = _cluster(
        xs, n_classes, class_clusterer, n_neighbors, seed, spectral_labelling, n_init
    )
    prototypes = class_prototypes(xs, fit_labels, n_classes)
    if len(fitted) == n:
        labels = fit_labels
    else:
        labels = nearest_centroid(x, prototypes, block=65536)
        labels[fitted] = fit_labels
    return ClassFit(labels, prototypes.astype(np.float32), fitted)


def class_per_region(descriptors: np.ndarray, n_classes: int) -> ClassFit:
    """``(n, D)`` descriptors with ``n < n_classes`` (possibly 0) -> every region its own
    class ``0 .. n - 1``; prototypes ``(n_classes, D)`` are the unit rows, then zeros."""
    x = np.asarray(descriptors)
    n = x.shape[0]
    labels = np.arange(n, dtype=np.int64)
    if n:
        x = _check_descriptors(x, n)  # unit rows; the same errors as a real fit
        prototypes = class_prototypes(x, labels, n_classes)
    else:
        prototypes = np.zeros((n_classes, x.shape[1] if x.ndim == 2 else 0))
    return ClassFit(labels, prototypes.astype(np.float32), labels.copy())


def cluster_classes(
    descriptors: np.ndarray,
    n_classes: int,
    *,
    class_clusterer: str = "spectral",
    n_neighbors: int = 10,
    seed: int = 0,
    spectral_labelling: str = "cluster_qr",
    n_init: int = 10,
    fit_sample: int | None = None,
) -> np.ndarray:
    """Cluster region descriptors into ``n_classes`` classes.

    Args:
        descriptors: ``(n_regions, D)`` float, one CLS token per object region; compared
            by cosine (rows are L2-normalised here).
        n_classes: number of classes (clusters) to form.
        class_clusterer: ``"spectral"`` (sklearn ``SpectralClustering`` on the cosine kNN graph of
            ``cosine_knn_affinity``, ``affinity="precomputed"``), ``"kmeans"``
            (``lcseg_steps.clustering.kmeans.kmeans``) or ``"agglomerative"`` (sklearn
            ``AgglomerativeClustering``, Ward linkage on the unit rows, i.e. by cosine).
            With as many regions as classes, each region is its own class.
        n_neighbors: kNN graph degree for spectral, clipped to ``n_regions - 1``.
        seed: random state; the same seed gives identical labels.
        spectral_labelling: how spectral clustering labels its embedding (sklearn's
            ``assign_labels``): ``"cluster_qr"`` (deterministic, no extra parameters) or
            ``"kmeans"``.
        n_init: kmeans restarts (seeds ``seed .. seed + n_init - 1``); the run with the
            highest objective (mean cosine to centroid) wins. One k-means++ run lands in
            a local optimum on a sizeable fraction of even well-separated data.
        fit_sample: None fits all regions; else spectral and agglomerative fit a seeded
            sample of this many regions and assign the rest to the nearest class
            prototype (see :func:`fit_classes`).

    Returns:
        ``(n_regions,)`` int64 labels in ``[0, n_classes)``.

    Raises:
        ValueError: fewer regions than classes, bad shape/dtype, NaN or all-zero rows,
        unknown clusterer, ``fit_sample < n_classes``.
    """
    return fit_classes(
        descriptors,
        n_classes,
        class_clusterer=class_clusterer,
        n_neighbors=n_neighbors,
        seed=seed,
        spectral_labelling=spectral_labelling,
        n_init=n_init,
        fit_sample=fit_sample,
    ).labels
