"""Stage ``fit_category``: pseudo-categories from the images' CLS tokens, then cosine
k-means per category and the clusters voted foreground, every ``features/{shard}.zarr``
and ``image_level/{shard}.zarr`` -> ``category_level.zarr``. The algorithm lives in
``lcseg_steps.clustering.categories``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering.categories import (
    choose_n_categories,
    fit_category_level,
    pseudo_categories,
    row_categories,
)
from lcseg_steps.clustering.class_count import auto_record
from lcseg_steps.runner.settings import is_auto
from lcseg_steps.stores.layout import feature_shards, patch_layout, read_fg, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

Log = Callable[[str], None]


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
    row_cats = row_categories(cats, [s["offsets"][:] for _, s, _ in shards])
    level = fit_category_level(
        [lambda a=arr: np.asarray(a[:]) for _, _, arr in shards],
        row_cats,
        [lambda il=il: read_fg(il) for il in image_levels],
        n_categories,
        k_category,
        fg_vote=fg_vote,
        category_fit_sample=category_fit_sample,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
        log=log,
    )
    fg = level.fg_clusters
    log(f"fit_category: fg clusters per category {[np.flatnonzero(f).tolist() for f in fg]}")
    return write_store(
        out,
        {
            "image_ids": image_ids,
            "category": cats,
            "centroids": level.centroids,
            "fg_clusters": level.fg_clusters,
            "fg_fraction": level.fg_fraction,
            "counts": level.counts,
            "objective": level.fit.objective,
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
