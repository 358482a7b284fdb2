"""Stage ``scene_refine`` (``labels.scope: scene``): one shard's class scores -> a class
for every pixel (upsampling + multi-label dense CRF), ``scene_levels/{shard}.zarr`` ->
``semantic/{shard}.zarr`` and palette PNGs in ``pred/{shard}/``, in ``segment``'s format
(``stands_for`` segment: evaluate and the report read them unchanged). Class ids are
``0..n_classes-1``; there is no background. The per-image work lives in
``lcseg_steps.perimage.scene_crf``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.data.image_table import ImageRecord, read_index
from lcseg_steps.data.images import ImageError, read_rgb
from lcseg_steps.perimage.crf import CRFParams
from lcseg_steps.perimage.scene_crf import refine_scene
from lcseg_steps.runner.runlog import limit_threads
from lcseg_steps.stores.layout import (
    image_grid_array,
    open_store,
    read_ids,
    records_in_order,
    write_pixel_store,
)

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


class SceneRefineError(RuntimeError):
    """Refining one image failed; the message names the image file."""


def _refine_one(
    path: str,
    grid: np.ndarray,
    crf: bool,
    params: CRFParams,
    max_side: int | None,
    orientation: int,
) -> np.ndarray:
    """Worker body: read the image here so only the path and the grid cross processes."""
    try:
        return refine_scene(
            read_rgb(path, orientation), grid, crf=crf, params=params, max_side=max_side
        )
    except ImageError:
        raise
    except Exception as exc:
        raise SceneRefineError(f"{path}: refining failed: {type(exc).__name__}: {exc}") from exc


def run_scene_refine(
    scene_levels: str | Path,
    records: Sequence[ImageRecord],
    out: str | Path,
    pred_dir: str | Path,
    *,
    crf: bool,
    iterations: int,
    gauss_sxy: float,
    gauss_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
    clip: float,
    max_side: int | None,
    processes: int,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """Class scores of one shard -> semantic maps ``(H, W)`` uint8 (Zarr, array
    ``semantic``) and palette PNGs, as ``segment`` writes them. The keyword settings are
    the ``refine`` block (the CRF's as ``CRFParams``, ``max_side`` the working
    resolution); ``processes`` images are refined at a time."""
    from lcseg_steps.data.palette import write_label_pngs

    st = open_store(scene_levels)
    recs = records_in_order(st, records, scene_levels)
    params = CRFParams(
        iterations=iterations,
        gauss_sxy=gauss_sxy,
        gauss_compat=gauss_compat,
        bilateral_sxy=bilateral_sxy,
        bilateral_srgb=bilateral_srgb,
        bilateral_compat=bilateral_compat,
        clip=clip,
    )
    items = [
        (str(r.path), image_grid_array(st, "scores", i), crf, params, max_side, r.orientation)
        for i, r in enumerate(recs)
    ]
    log(f"scene_refine: {len(items)} images, crf={crf}, max_side={max_side}, {processes} proc")
    if processes <= 1 or len(items) <= 1:
        maps = [_refine_one(*item) for item in items]
    else:
        with ProcessPoolExecutor(max_workers=min(processes, len(items))) as pool:
            maps = list(pool.map(_refine_one, *zip(*items, strict=True)))
    for r, m in zip(recs, maps, strict=True):
        if m.shape != (r.height, r.width):
            raise ValueError(f"{r.path}: label map {m.shape} != index size {r.height}x{r.width}")
    ids = read_ids(st)
    write_label_pngs(pred_dir, ids, maps)
    used = np.unique(np.concatenate([np.unique(m) for m in maps])) if maps else []
    log(f"scene_refine: {len(used)} classes used, PNGs in {pred_dir}")
    attrs = {**attrs, "extraction": st.attrs.get("extraction"), "scope": "scene"}
    return write_pixel_store(out, "semantic", maps, ids, attrs)


def run(job: Job) -> Path:
    """The rule ``scene_refine`` (settings: the ``refine`` block but its threshold)."""
    limit_threads(1)  # each CRF is single-threaded; the pool gets the rule's cores
    return run_scene_refine(
        job.input.scene_levels,
        read_index(job.input.index),
        job.output.semantic,
        job.output.pred,
        **job.settings,
        processes=job.threads,
        attrs=job.attrs,
        log=job.log,
    )
