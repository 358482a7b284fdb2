"""Stage ``fit_dataset``: dataset-level cosine k-means over all shards (streamed) and
the clusters voted foreground, every ``features/{shard}.zarr`` and
``image_level/{shard}.zarr`` -> ``dataset_level.zarr``. The algorithm lives in
``lcseg_steps.clustering.levels`` and ``lcseg_steps.clustering.kmeans``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering import levels as lv
from lcseg_steps.stores.layout import feature_shards, read_fg, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

Log = Callable[[str], None]


def run_fit_dataset(
    features: Sequence[str | Path],
    image_levels: Sequence[str | Path],
    out: str | Path,
    *,
    feature: str,
    k_dataset: int,
    fg_vote: float,
    init_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    log: Log = print,
    threads: int = 1,
) -> Path:
    """All feature shards (streamed) -> ``dataset_level.zarr``: centroids and fg clusters."""
    shards = feature_shards(features, feature)
    n_rows = sum(a.shape[0] for _, _, a in shards)
    log(f"fit_dataset: {n_rows} patches in {len(shards)} shards, k={k_dataset}")
    fit = lv.fit_feature_shards(
        shards,
        feature,
        k_dataset,
        init_sample=init_sample,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
        log=log,
    )
    counts = np.zeros((k_dataset, 2), dtype=np.int64)
    start = 0
    for (_, _, arr), il in zip(shards, image_levels, strict=True):
        labels = fit.labels[start : start + arr.shape[0]]
        counts += lv.vote_counts(labels, read_fg(il), k_dataset)
        start += arr.shape[0]
    fg, frac = lv.foreground_clusters(counts, fg_vote)
    log(
        f"fit_dataset: objective {fit.objective:.4f} after {fit.n_iter} iterations; "
        f"foreground share per cluster {np.round(frac, 3).tolist()} -> fg clusters "
        f"{np.flatnonzero(fg).tolist()}"
    )
    return write_store(
        out,
        {
            "centroids": fit.centroids,
            "fg_clusters": fg,
            "fg_fraction": frac,
            "counts": counts,
            "history": np.asarray(fit.history),
        },
        {
            **attrs,
            "level": "dataset",
            "k": k_dataset,
            "objective": fit.objective,
            "n_iter": fit.n_iter,
        },
    )


def run(job: Job) -> Path:
    """The rule ``fit_dataset`` (settings: its ``clustering`` keys and the seed)."""
    return run_fit_dataset(
        job.input.features,
        job.input.image_level,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
        threads=job.threads,
    )
