"""Stage ``image_level``: per-image cosine k-means (or a graph bipartition,
``clustering.image_clusterer``) of one shard and each image's foreground cluster,
``features/{shard}.zarr`` -> ``image_level/{shard}.zarr``. The algorithm lives in
``lcseg_steps.clustering`` (``levels``, ``kmeans`` and ``graph_split``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering import levels as lv
from lcseg_steps.clustering.backend import import_torch_cast_if_worth
from lcseg_steps.clustering.kmeans import NonFiniteError
from lcseg_steps.stores.layout import (
    check_finite,
    feature_array,
    open_store,
    patch_layout,
    write_store,
)

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

Log = Callable[[str], None]


def run_image_level(
    features: str | Path,
    out: str | Path,
    *,
    feature: str,
    image_clusterer: str,
    k_image: int,
    fg_rule: str,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    log: Log = print,
    threads: int = 1,
    alone: bool | None = None,
) -> Path:
    """``features/{shard}.zarr`` -> ``image_level/{shard}.zarr`` (labels, fg mask, fg cluster).

    ``alone`` (``snakemake apply``): each image's k-means start as if it were clustered
    alone, as ``load_model(path).segment(image)`` clusters it."""
    fs = open_store(features)
    X = np.asarray(feature_array(fs, features, feature)[:])
    layout = patch_layout(fs)
    n = len(layout["image_ids"])
    log(
        f"image_level: {n} images, {X.shape[0]} patches, {image_clusterer}, k={k_image}, "
        f"fg_rule={fg_rule}"
    )
    if image_clusterer == "kmeans":
        import_torch_cast_if_worth(X.size)
    try:
        res = lv.image_level(
            X,
            layout["offsets"],
            layout["grid"],
            np.asarray(fs["cls_attn"][:]),
            k_image=k_image,
            fg_rule=fg_rule,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            device=device,
            threads=threads,
            image_clusterer=image_clusterer,
            alone=bool(alone),
        )
    except NonFiniteError:
        check_finite(fs, features, feature, X)  # names the store and image (error path only)
        raise
    skipped = int((res["fg_cluster"] < 0).sum())
    if skipped:
        log(f"WARNING: {skipped} image(s) have fewer than k={k_image} patches; left as background")
    log(
        f"image_level: mean objective {np.nanmean(res['objective']):.4f}, "
        f"foreground share {res['fg'].mean():.3f}"
    )
    return write_store(
        out,
        {**res, **layout},
        {**attrs, "level": "image", "k": k_image, "image_clusterer": image_clusterer},
    )


def run(job: Job) -> Path:
    """The rule ``image_level`` (settings: its ``clustering`` keys and the seed;
    ``params.alone`` in ``apply_image_level``)."""
    return run_image_level(
        job.input.features,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
        threads=job.threads,
        alone=job.params.get("alone"),
    )
