"""Stage ``assign``: cluster the descriptors of all object regions into classes,
``objects/{shard}.zarr`` (every shard) -> ``classes.zarr``. The count and the clustering
live in ``lcseg_steps.clustering.region_classes``.

Each cluster is one predicted class; ``evaluate`` later matches clusters to gt classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering.class_count import auto_record
from lcseg_steps.clustering.region_classes import choose_n_classes, fit_region_classes
from lcseg_steps.runner.settings import is_auto
from lcseg_steps.stores.layout import open_store, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_assign(
    objects: Sequence[str | Path],
    shards: Sequence[str],
    out: str | Path,
    *,
    n_classes: int | str,
    class_clusterer: str,
    n_neighbors: int,
    fit_sample: int | None,
    seed: int,
    attrs: dict,
    auto_range: Sequence[int] | None = None,
    empty_ok: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """All region descriptors -> one class per region (spectral clustering by default).

    Writes ``labels``, ``region_offsets``, ``shards``, the class ``prototypes`` and the
    ``fitted`` rows (see :class:`lcseg_steps.clustering.class_clustering.ClassFit`), and
    the count in the attrs (``n_classes``). Fewer regions than ``n_classes`` is an error,
    unless ``empty_ok`` (not a config key: the analysis baselines pass it, whose masks may
    leave few or no regions): then every region is its own class
    (:func:`lcseg_steps.clustering.region_classes.fit_region_classes`).

    ``n_classes: "auto"`` chooses the count in ``auto_range`` (``[min, max]``) by the
    eigengap (:func:`choose_n_classes`); the store then also holds ``eigenvalues``
    (``(m,)`` float64, the smallest of the normalised Laplacian, ascending) and the attrs
    ``n_classes_auto`` (``criterion``, ``range``, ``chosen``).
    """
    descs = [np.asarray(open_store(p)["descriptors"][:]) for p in objects]
    counts = [len(d) for d in descs]
    X = np.concatenate(descs)
    del descs  # one copy of the descriptors, not two
    arrays = {}
    attrs = dict(attrs)
    if is_auto(n_classes):
        if auto_range is None:
            raise ValueError("labels.n_classes is auto: give labels.auto_range")
        n_classes, lam = choose_n_classes(
            X, auto_range, n_neighbors, fit_sample, seed, empty_ok, log
        )
        arrays["eigenvalues"] = lam
        attrs["n_classes_auto"] = auto_record(auto_range, n_classes)
    attrs["n_classes"] = int(n_classes)
    log(
        f"assign: {len(X)} regions from {len(objects)} shard(s) -> {n_classes} classes "
        f"({class_clusterer})"
    )
    fit = fit_region_classes(
        X,
        n_classes,
        class_clusterer=class_clusterer,
        n_neighbors=n_neighbors,
        fit_sample=fit_sample,
        seed=seed,
        empty_ok=empty_ok,
        log=log,
    )
    del X
    log(f"assign: class sizes {np.bincount(fit.labels, minlength=n_classes).tolist()}")
    return write_store(
        out,
        {
            "labels": fit.labels,
            "region_offsets": np.concatenate([[0], np.cumsum(counts)]),
            "shards": np.asarray(list(shards), dtype=object),
            "prototypes": fit.prototypes,
            "fitted": fit.fitted,
            **arrays,
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
