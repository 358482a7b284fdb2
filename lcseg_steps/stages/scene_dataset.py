"""Stage ``scene_dataset`` (``labels.scope: scene``): the dataset level of scene mode,
cosine k-means of every patch of every shard (streamed) into ``labels.n_classes``
classes, every ``features/{shard}.zarr`` -> ``scene_dataset.zarr`` (the class
centroids). The algorithm lives in ``lcseg_steps.clustering.kmeans`` and
``lcseg_steps.clustering.scene``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering.levels import fit_feature_shards
from lcseg_steps.clustering.scene import check_n_classes
from lcseg_steps.stores.layout import feature_shards, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_scene_dataset(
    features: Sequence[str | Path],
    out: str | Path,
    *,
    feature: str,
    n_classes: int,
    init_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    log: Callable[[str], None] = print,
    threads: int = 1,
) -> Path:
    """All feature shards (streamed) -> ``scene_dataset.zarr``: ``centroids``
    ``(n_classes, D)`` float32 unit rows, ``counts`` ``(n_classes,)`` patches per class
    and the objective's ``history``."""
    n_classes = check_n_classes(n_classes)
    shards = feature_shards(features, feature)
    n_rows = sum(a.shape[0] for _, _, a in shards)
    log(f"scene_dataset: {n_rows} patches in {len(shards)} shards, {n_classes} classes")
    if n_rows < n_classes:
        raise ValueError(
            f"scene_dataset: {n_rows} patches cannot form labels.n_classes={n_classes} classes"
        )
    fit = fit_feature_shards(
        shards,
        feature,
        n_classes,
        init_sample=init_sample,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
        log=log,
    )
    counts = np.bincount(np.asarray(fit.labels, dtype=np.int64), minlength=n_classes)
    log(
        f"scene_dataset: objective {fit.objective:.4f} after {fit.n_iter} iterations; "
        f"patches per class {counts.tolist()}"
    )
    return write_store(
        out,
        {
            "centroids": np.asarray(fit.centroids, dtype=np.float32),
            "counts": counts,
            "history": np.asarray(fit.history),
        },
        {
            **attrs,
            "level": "scene_dataset",
            "n_classes": n_classes,
            "objective": fit.objective,
            "n_iter": fit.n_iter,
        },
    )


def run(job: Job) -> Path:
    """The rule ``scene_dataset`` (settings: its ``clustering`` keys, ``labels.n_classes``
    and the seed)."""
    return run_scene_dataset(
        job.input.features,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
        threads=job.threads,
    )
