"""The classes of the object regions (the stage ``assign``): their count by the eigengap
(``labels.n_classes: auto``) and the clustering of the region descriptors into that many
classes, with every region its own class when there are fewer regions than classes and
that is allowed.

The clustering itself is :mod:`lcseg_steps.clustering.class_clustering`'s
(``fit_classes``, ``class_per_region``), the eigengap
:mod:`lcseg_steps.clustering.class_count`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lcseg_steps.clustering.class_clustering import ClassFit, class_per_region, fit_classes
from lcseg_steps.clustering.class_count import check_range, eigengap_count

Log = Callable[[str], None]


def choose_n_classes(
    X: np.ndarray,
    auto_range: Sequence[int],
    n_neighbors: int,
    fit_sample: int | None,
    seed: int,
    empty_ok: bool,
    log: Log,
) -> tuple[int, np.ndarray]:
    """``labels.n_classes: auto``: the count by the eigengap of the regions' cosine kNN
    graph (:func:`lcseg_steps.clustering.class_count.eigengap_count`, on the seeded ``fit_sample``
    rows the spectral fit clusters) -> ``(count, eigenvalues)``. Too few regions is an
    error, unless ``empty_ok``: then the range's min, with no eigenvalues."""
    kmin, kmax = check_range(auto_range, "labels.auto_range")
    if len(X) <= kmin:
        if empty_ok:
            log(f"assign: only {len(X)} region(s): n_classes auto takes auto_range's min {kmin}")
            return kmin, np.zeros(0)
        raise ValueError(
            f"labels.n_classes is auto but the masks gave only {len(X)} object regions: the "
            f"eigengap needs more than labels.auto_range's min {kmin}; lower it, set "
            "labels.n_classes, lower objects.min_region_area or add images"
        )
    k, lam = eigengap_count(X, n_neighbors, (kmin, kmax), seed, fit_sample=fit_sample)
    gaps = np.diff(lam)
    log(
        f"assign: n_classes auto -> {k} (eigengap {gaps[k - 1]:.4f}, in [{kmin}, "
        f"{len(lam) - 1}]; eigenvalues {np.round(lam, 4).tolist()})"
    )
    return k, lam


def fit_region_classes(
    X: np.ndarray,
    n_classes: int,
    *,
    class_clusterer: str,
    n_neighbors: int,
    fit_sample: int | None,
    seed: int,
    empty_ok: bool = False,
    log: Log = print,
) -> ClassFit:
    """All region descriptors ``X`` ``(n, D)`` -> one class per region (``class_clusterer``:
    spectral, kmeans or agglomerative; :func:`lcseg_steps.clustering.class_clustering.fit_classes`).

    Fewer regions than ``n_classes`` is an error, unless ``empty_ok``: then every region
    is its own class (:func:`lcseg_steps.clustering.class_clustering.class_per_region`).
    """
    if len(X) < n_classes and not empty_ok:
        raise ValueError(
            f"labels.n_classes={n_classes} but the masks gave only {len(X)} object regions; "
            "lower labels.n_classes, lower objects.min_region_area or add images"
        )
    if len(X) < n_classes:
        log(f"assign: only {len(X)} region(s) for {n_classes} classes: one class per region")
        fit = class_per_region(X, n_classes)
    else:
        fit = fit_classes(
            X,
            n_classes,
            class_clusterer=class_clusterer,
            n_neighbors=n_neighbors,
            seed=seed,
            fit_sample=fit_sample,
        )
    if len(fit.fitted) < len(fit.labels):
        log(
            f"assign: fitted a seeded sample of {len(fit.fitted)} regions, the other "
            f"{len(fit.labels) - len(fit.fitted)} went to the nearest class prototype"
        )
    return fit
