"""The category level's algorithm (the stage ``fit_category``): pseudo-categories of the
images from their CLS tokens, their count by the eigengap (``n_categories: auto``), and
per category ``k`` cosine centroids of the patches and the clusters voted foreground.

The per-category fit and vote are :mod:`lcseg_steps.clustering.levels`'s
(``sample_rows_by_group``, ``fit_groups``, ``vote_counts``, ``foreground_clusters``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lcseg_steps.clustering import levels as lv
from lcseg_steps.clustering.backend import import_torch_cast_if_worth
from lcseg_steps.clustering.class_clustering import cluster_classes
from lcseg_steps.clustering.class_count import check_range, eigengap_count
from lcseg_steps.clustering.kmeans import GroupedKMeansResult, l2_normalize, nearest_centroid

Log = Callable[[str], None]

# the images' cosine kNN graph: its degree (spectral pseudo-categories and the eigengap of
# n_categories auto) and the most images the eigengap's graph holds (a seeded sample)
CATEGORY_NEIGHBORS = 10
CATEGORY_AUTO_SAMPLE = 20000


def pseudo_categories(
    cls: np.ndarray, n_categories: int, category_clusterer: str, seed: int
) -> np.ndarray:
    """Images -> pseudo-category by clustering their CLS tokens ``(n, D)`` -> ``(n,)`` int64."""
    if n_categories > len(cls):
        raise ValueError(
            f"clustering.n_categories={n_categories} but the run has only {len(cls)} images"
        )
    if n_categories == 1:
        return np.zeros(len(cls), dtype=np.int64)
    return cluster_classes(
        np.asarray(cls, dtype=np.float32),
        n_categories,
        class_clusterer=category_clusterer,
        seed=seed,
        n_neighbors=CATEGORY_NEIGHBORS,
    )


def choose_n_categories(
    cls: np.ndarray, auto_range: Sequence[int], seed: int, log: Log
) -> tuple[int, np.ndarray]:
    """``clustering.n_categories: auto``: the count by the eigengap of the images' cosine
    kNN graph of CLS tokens ``(n, D)`` (:func:`lcseg_steps.clustering.class_count.eigengap_count`,
    ``CATEGORY_NEIGHBORS`` neighbours, at most ``CATEGORY_AUTO_SAMPLE`` images) ->
    ``(count, eigenvalues)``."""
    kmin, kmax = check_range(auto_range, "clustering.auto_range")
    if len(cls) <= kmin:
        raise ValueError(
            f"clustering.n_categories is auto but the run has only {len(cls)} images: the "
            f"eigengap needs more than clustering.auto_range's min {kmin}"
        )
    k, lam = eigengap_count(
        np.asarray(cls, dtype=np.float32),
        CATEGORY_NEIGHBORS,
        (kmin, kmax),
        seed,
        fit_sample=CATEGORY_AUTO_SAMPLE,
    )
    log(
        f"fit_category: n_categories auto -> {k} (eigengap {lam[k] - lam[k - 1]:.4f}, in "
        f"[{kmin}, {len(lam) - 1}]; eigenvalues {np.round(lam, 4).tolist()})"
    )
    return k, lam


def row_categories(categories: np.ndarray, offsets: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each image's pseudo-category spread over its patch rows: ``categories`` ``(n,)`` of
    the images of every shard in order, ``offsets`` each shard's ``(images + 1,)`` ->
    per shard ``(rows,)`` int64."""
    row_cats, start = [], 0
    for off in offsets:
        sizes = np.diff(np.asarray(off))
        row_cats.append(np.repeat(categories[start : start + len(sizes)], sizes))
        start += len(sizes)
    return row_cats


@dataclass
class CategoryLevel:
    """A fitted category level: ``centroids`` ``(n_categories, k, D)`` float32,
    ``fg_clusters`` bool and ``fg_fraction`` float64 ``(n_categories, k)``, ``counts``
    ``(n_categories, k, 2)`` int64 ([patches, image-level foreground patches] per cluster)
    and the k-means ``fit`` (its ``objective`` per category)."""

    centroids: np.ndarray
    fg_clusters: np.ndarray
    fg_fraction: np.ndarray
    counts: np.ndarray
    fit: GroupedKMeansResult


def fit_category_level(
    rows: Sequence[Callable[[], np.ndarray]],
    row_cats: Sequence[np.ndarray],
    image_fg: Sequence[Callable[[], np.ndarray]],
    n_categories: int,
    k: int,
    *,
    fg_vote: float,
    category_fit_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    threads: int = 1,
    log: Log = print,
) -> CategoryLevel:
    """Per pseudo-category ``k`` cosine centroids of its patches and the clusters voted
    foreground, one shard at a time.

    Per shard: ``rows()`` loads its ``(n, D)`` patch rows, ``row_cats`` ``(n,)`` their
    category (:func:`row_categories`), ``image_fg()`` loads the image level's ``(n,)``
    foreground. The fit sees a seeded sample of about ``category_fit_sample`` rows per category
    (:func:`lcseg_steps.clustering.levels.sample_rows_by_group`); every row then votes
    for its nearest centroid of its category, and a cluster whose share of foreground
    votes exceeds ``fg_vote`` is foreground.
    """
    group_sizes = np.bincount(np.concatenate(row_cats), minlength=n_categories)
    X, g = lv.sample_rows_by_group(
        zip(rows, row_cats, strict=True), group_sizes, category_fit_sample, seed
    )
    log(f"fit_category: fitting k={k} per category on {len(X)} sampled patches")
    import_torch_cast_if_worth(X.size)
    C, fit = lv.fit_groups(
        X,
        g,
        n_categories,
        k,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
    )
    counts = np.zeros((n_categories * k, 2), dtype=np.int64)
    for load, rc, fg in zip(rows, row_cats, image_fg, strict=True):
        lab = nearest_centroid(l2_normalize(load()), C, groups=rc)
        counts += lv.vote_counts(rc * k + lab, fg(), n_categories * k)
    counts = counts.reshape(n_categories, k, 2)
    fg_clusters, frac = lv.foreground_clusters(counts, fg_vote)
    return CategoryLevel(C, fg_clusters, frac, counts, fit)
