"""Stage ``fit_category``: pseudo-categories from the images' CLS tokens, then cosine
k-means per category and the clusters voted foreground, every ``features/{shard}.zarr``
and ``image_level/{shard}.zarr`` -> ``category_level.zarr``. The algorithm lives in
``lcseg_steps.clustering.levels`` and ``lcseg_steps.clustering.kmeans``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering import levels as lv
from lcseg_steps.clustering.class_clustering import cluster_classes
from lcseg_steps.clustering.class_count import auto_record, check_range, eigengap_count
from lcseg_steps.clustering.kmeans import import_torch_cast_if_worth, l2_normalize, nearest_centroid
from lcseg_steps.runner.settings import is_auto
from lcseg_steps.stores.layout import feature_shards, patch_layout, read_fg, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

Log = Callable[[str], None]

# the images' cosine kNN graph: its degree (spectral pseudo-categories and the eigengap of
# n_categories auto) and the most images the eigengap's graph holds (a seeded sample)
CATEGORY_NEIGHBORS = 10
CATEGORY_AUTO_SAMPLE = 20000


def pseudo_categories(cls: np.ndarray, n_categories: int, method: str, seed: int) -> np.ndarray:
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
        class_clusterer=method,
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


def run_fit_category(
    features: Sequence[str | Path],
    image_levels: Sequence[str | Path],
    out: str | Path,
    *,
    feature: str,
    n_categories: int | str,
    category_clusterer: str,
    k_category: int,
    fg_vote: float,
    category_fit_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    auto_range: Sequence[int] | None = None,
    log: Log = print,
    threads: int = 1,
) -> Path:
    """CLS tokens -> pseudo-categories; per category ``k`` centroids and fg clusters.

    ``n_categories: "auto"`` chooses the count in ``auto_range`` by the eigengap
    (:func:`choose_n_categories`); the store then also holds ``eigenvalues`` (``(m,)``
    float64, ascending) and the attrs ``n_categories_auto`` (``criterion``, ``range``,
    ``chosen``). The attrs' ``n_categories`` is the count used.
    """
    shards = feature_shards(features, feature)
    cls = np.concatenate([np.asarray(s["cls"][:], dtype=np.float32) for _, s, _ in shards])
    image_ids = np.concatenate([patch_layout(s)["image_ids"] for _, s, _ in shards])
    extra, auto_attrs = {}, {}
    if is_auto(n_categories):
        if auto_range is None:
            raise ValueError("clustering.n_categories is auto: give clustering.auto_range")
        n_categories, extra["eigenvalues"] = choose_n_categories(cls, auto_range, seed, log)
        auto_attrs["n_categories_auto"] = auto_record(auto_range, n_categories)
    cats = pseudo_categories(cls, n_categories, category_clusterer, seed)
    log(
        f"fit_category: {len(cls)} images -> {n_categories} pseudo-categories "
        f"(sizes {np.bincount(cats, minlength=n_categories).tolist()})"
    )
    row_cats, start = [], 0
    for _, s, _ in shards:
        sizes = np.diff(np.asarray(s["offsets"][:]))
        row_cats.append(np.repeat(cats[start : start + len(sizes)], sizes))
        start += len(sizes)
    group_sizes = np.bincount(np.concatenate(row_cats), minlength=n_categories)
    X, g = lv.sample_rows_by_group(
        (
            (lambda a=arr: np.asarray(a[:]), rc)
            for (_, _, arr), rc in zip(shards, row_cats, strict=True)
        ),
        group_sizes,
        category_fit_sample,
        seed,
    )
    log(f"fit_category: fitting k={k_category} per category on {len(X)} sampled patches")
    import_torch_cast_if_worth(X.size)
    C, fit = lv.fit_groups(
        X,
        g,
        n_categories,
        k_category,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
    )
    counts = np.zeros((n_categories * k_category, 2), dtype=np.int64)
    for (_, _, arr), rc, il in zip(shards, row_cats, image_levels, strict=True):
        lab = nearest_centroid(l2_normalize(arr[:]), C, groups=rc)
        counts += lv.vote_counts(rc * k_category + lab, read_fg(il), n_categories * k_category)
    counts = counts.reshape(n_categories, k_category, 2)
    fg, frac = lv.foreground_clusters(counts, fg_vote)
    log(f"fit_category: fg clusters per category {[np.flatnonzero(f).tolist() for f in fg]}")
    return write_store(
        out,
        {
            "image_ids": image_ids,
            "category": cats,
            "centroids": C,
            "fg_clusters": fg,
            "fg_fraction": frac,
            "counts": counts,
            "objective": fit.objective,
            **extra,
        },
        {
            **attrs,
            "level": "category",
            "k": k_category,
            "n_categories": n_categories,
            **auto_attrs,
        },
    )


def run(job: Job) -> Path:
    """The rule ``fit_category`` (settings: its ``clustering`` keys and the seed)."""
    return run_fit_category(
        job.input.features,
        job.input.image_level,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
        threads=job.threads,
    )
