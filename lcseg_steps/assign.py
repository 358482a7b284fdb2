"""Stage ``assign``: cluster the descriptors of all object regions into classes,
``objects/{shard}.zarr`` (every shard) -> ``classes.zarr``. The clustering lives in
``lcseg_steps.class_clustering``.

Each cluster is one predicted class; ``evaluate`` later matches clusters to gt classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.class_clustering import class_per_region, fit_classes
from lcseg_steps.store import open_store, write_store

if TYPE_CHECKING:
    from lcseg_steps.stage import Job


def run_assign(
    objects: Sequence[str | Path],
    shards: Sequence[str],
    out: str | Path,
    *,
    n_classes: int,
    class_clusterer: str,
    n_neighbors: int,
    fit_sample: int | None,
    seed: int,
    attrs: dict,
    empty_ok: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """All region descriptors -> one class per region (spectral clustering by default).

    Writes ``labels``, ``region_offsets``, ``shards``, the class ``prototypes`` and the
    ``fitted`` rows (see :class:`ClassFit`). Fewer regions than ``n_classes`` is an error,
    unless ``empty_ok`` (not a config key: the analysis baselines pass it, whose masks may
    leave few or no regions): then every region is its own class (:func:`class_per_region`).
    """
    descs = [np.asarray(open_store(p)["descriptors"][:]) for p in objects]
    counts = [len(d) for d in descs]
    X = np.concatenate(descs)
    del descs  # one copy of the descriptors, not two
    log(
        f"assign: {len(X)} regions from {len(objects)} shard(s) -> {n_classes} classes "
        f"({class_clusterer})"
    )
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
            method=class_clusterer,
            n_neighbors=n_neighbors,
            seed=seed,
            fit_sample=fit_sample,
        )
    del X
    if len(fit.fitted) < len(fit.labels):
        log(
            f"assign: fitted a seeded sample of {len(fit.fitted)} regions, the other "
            f"{len(fit.labels) - len(fit.fitted)} went to the nearest class prototype"
        )
    log(f"assign: class sizes {np.bincount(fit.labels, minlength=n_classes).tolist()}")
    return write_store(
        out,
        {
            "labels": fit.labels,
            "region_offsets": np.concatenate([[0], np.cumsum(counts)]),
            "shards": np.asarray(list(shards), dtype=object),
            "prototypes": fit.prototypes,
            "fitted": fit.fitted,
        },
        attrs,
    )


def run(job: Job) -> Path:
    """The rule ``assign`` (settings: the ``labels`` config block and the seed); its
    inputs are the objects stores of every shard, named ``<shard>.zarr``."""
    return run_assign(
        job.input.objects,
        [Path(p).name.removesuffix(".zarr") for p in job.input.objects],
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
    )
