"""Stage ``assign``: cluster the descriptors of all object regions into classes,
``objects/{shard}.zarr`` (every shard) -> ``classes.zarr``.

Each cluster is one predicted class; ``evaluate`` later matches clusters to gt classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.store import open_store, write_store

if TYPE_CHECKING:
    from lcseg_steps.stage import Job

METHODS = ("spectral", "kmeans")


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
    return x / norms[:, None]


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


def assign_classes(
    descriptors: np.ndarray,
    n_classes: int,
    *,
    method: str = "spectral",
    n_neighbors: int = 10,
    seed: int = 0,
    assign_labels: str = "cluster_qr",
    n_init: int = 10,
) -> np.ndarray:
    """Cluster region descriptors into ``n_classes`` classes.

    Args:
        descriptors: ``(n_regions, D)`` float, one CLS token per object region; compared
            by cosine (rows are L2-normalised here).
        n_classes: number of classes (clusters) to form.
        method: ``"spectral"`` (sklearn ``SpectralClustering`` on the cosine kNN graph of
            ``cosine_knn_affinity``, ``affinity="precomputed"``) or ``"kmeans"``
            (``lcseg_steps.kmeans.kmeans``).
        n_neighbors: kNN graph degree for spectral, clipped to ``n_regions - 1``.
        seed: random state; the same seed gives identical labels.
        assign_labels: spectral-embedding labelling, ``"cluster_qr"`` (deterministic,
            no extra parameters) or ``"kmeans"``.
        n_init: kmeans restarts (seeds ``seed .. seed + n_init - 1``); the run with the
            highest objective (mean cosine to centroid) wins. One k-means++ run lands in
            a local optimum on a sizeable fraction of even well-separated data.

    Returns:
        ``(n_regions,)`` int64 labels in ``[0, n_classes)``.

    Raises:
        ValueError: fewer regions than classes, bad shape/dtype, NaN or all-zero rows,
        unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown class assignment method {method!r}; expected one of {METHODS}")
    x = _check_descriptors(descriptors, n_classes)
    n = x.shape[0]
    if n_classes == 1:
        return np.zeros(n, dtype=np.int64)
    if n == n_classes and method == "spectral":
        # One region per class is the only partition into n_classes non-empty classes;
        # the spectral embedding cannot even be computed (ARPACK needs k < n).
        return np.arange(n, dtype=np.int64)

    if method == "kmeans":
        from lcseg_steps.kmeans import kmeans

        if n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {n_init}")
        x32 = x.astype(np.float32)
        runs = (kmeans(x32, n_classes, seed=seed + i) for i in range(n_init))
        # max() keeps the first of equal objectives, so the result is seed-deterministic.
        return max(runs, key=lambda r: r.objective).labels  # NumPy int64

    from sklearn.cluster import SpectralClustering

    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    affinity = cosine_knn_affinity(x, min(n_neighbors, n - 1))
    model = SpectralClustering(
        n_clusters=n_classes,
        affinity="precomputed",
        assign_labels=assign_labels,
        random_state=seed,
    )
    return model.fit_predict(affinity).astype(np.int64)


def run_assign(
    objects: Sequence[str | Path],
    shards: Sequence[str],
    out: str | Path,
    *,
    n_classes: int,
    class_clusterer: str,
    n_neighbors: int,
    seed: int,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """All region descriptors -> one class per region (spectral clustering by default)."""
    descs = [np.asarray(open_store(p)["descriptors"][:]) for p in objects]
    counts = [len(d) for d in descs]
    X = np.concatenate(descs)
    log(
        f"assign: {len(X)} regions from {len(objects)} shard(s) -> {n_classes} classes "
        f"({class_clusterer})"
    )
    if len(X) < n_classes:
        raise ValueError(
            f"labels.n_classes={n_classes} but the masks gave only {len(X)} object regions; "
            "lower labels.n_classes, lower objects.min_region_area or add images"
        )
    labels = assign_classes(
        X, n_classes, method=class_clusterer, n_neighbors=n_neighbors, seed=seed
    )
    log(f"assign: class sizes {np.bincount(labels, minlength=n_classes).tolist()}")
    return write_store(
        out,
        {
            "labels": labels,
            "region_offsets": np.concatenate([[0], np.cumsum(counts)]),
            "shards": np.asarray(list(shards), dtype=object),
        },
        attrs,
    )


def run(job: Job) -> Path:
    """The rule ``assign`` (settings: the ``labels`` config block and the seed)."""
    return run_assign(
        job.input.objects,
        job.params.shards,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
    )
