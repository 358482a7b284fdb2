"""The three clustering levels and their multilevel merge into binary patch masks.

Arrays follow the ragged layout of the feature stores (see ``lcseg_steps.stores.layout``):
per-patch rows of all images of a shard, ``offsets`` ``(images + 1,)``, ``grid``
``(images, 2)``. All choices here (fg rules, vote threshold, consistency rules) are
lcseg's own defaults; the paper fixes none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lcseg_steps.clustering.backend import import_torch_cast_if_worth
from lcseg_steps.clustering.graph_split import METHODS as GRAPH_METHODS
from lcseg_steps.clustering.graph_split import bipartition_images
from lcseg_steps.clustering.kmeans import (
    GroupedKMeansResult,
    NonFiniteError,
    kmeans_groups,
    kmeans_ranges,
    kmeans_stream,
    l2_normalize,
    nearest_centroid,
)
from lcseg_steps.clustering.lloyd import seeded_uniforms

_CATEGORY_SAMPLE_DOMAIN = 2  # random domain of the category fit sample (kmeans uses 0, 1)

LEVELS = ("dataset", "category", "image")
IMAGE_CLUSTERERS = ("kmeans", *GRAPH_METHODS)


# ---------------------------------------------------------------------------------------
# image level


def border_sides(grid: tuple[int, int]) -> np.ndarray:
    """``(4, gh * gw)`` bool: which patches lie on the top, bottom, left and right border."""
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return np.stack([rows == 0, rows == gh - 1, cols == 0, cols == gw - 1])


def pick_image_foreground(
    labels: np.ndarray, grid: tuple[int, int], cls_attn: np.ndarray, k: int, rule: str
) -> int:
    """Index of the foreground cluster of one image.

    ``labels`` ``(gh * gw,)`` int cluster of each patch, ``cls_attn`` ``(gh * gw,)`` CLS
    attention. ``attention``: the cluster with the highest mean CLS attention.
    ``border``: the cluster touching the fewest image sides (ties: fewer border patches,
    then higher attention), because objects are usually framed by background.
    Empty clusters never win.
    """
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    present = counts > 0
    attn = np.bincount(labels, weights=cls_attn.astype(np.float64), minlength=k)
    mean_attn = np.where(present, attn / np.maximum(counts, 1), -np.inf)
    if rule == "attention":
        return int(np.argmax(mean_attn))
    if rule != "border":
        raise ValueError(f"fg_rule must be 'attention' or 'border', got {rule!r}")
    sides = border_sides(grid)
    onehot = labels[None, :] == np.arange(k)[:, None]  # (k, n)
    touched = (onehot[:, None, :] & sides[None]).any(axis=2).sum(axis=1)  # (k,)
    on_border = (onehot & sides.any(axis=0)[None]).sum(axis=1)
    p = np.flatnonzero(present)
    # lexicographic (last key sorts first): fewest sides, fewest border patches, most attention
    return int(p[np.lexsort((-mean_attn[p], on_border[p], touched[p]))[0]])


def per_image_kmeans(
    X: np.ndarray,
    offsets: np.ndarray,
    k: int,
    *,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    threads: int = 1,
    alone: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-means of every image with at least ``k`` patches, batched.

    ``X`` ``(N, D)``, ``offsets`` ``(n + 1,)``. The k-means++ start of image ``i`` is
    drawn from stream ``i``, or with ``alone`` from stream 0 as if it were clustered alone
    (what ``lcseg_steps.apply.model_zarr`` does for one image; ``snakemake apply``). Returns
    ``labels`` ``(N,)`` int16 (0 in an image of fewer than ``k`` patches) and
    ``objective`` ``(n,)`` (NaN there).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    solvable = np.flatnonzero(sizes >= k)
    labels = np.zeros(int(offsets[-1]), dtype=np.int16)
    objective = np.full(len(sizes), np.nan)
    if len(solvable):
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in solvable])
        sub_off = np.concatenate([[0], np.cumsum(sizes[solvable])])
        fit = kmeans_ranges(
            X[rows],
            k,
            offsets=sub_off,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            device=device,
            threads=threads,
            streams=np.zeros(len(solvable), dtype=np.int64) if alone else None,
        )
        labels[rows] = fit.labels
        objective[solvable] = fit.objective
    return labels, objective


def image_level(
    X: np.ndarray,
    offsets: np.ndarray,
    grids: np.ndarray,
    cls_attn: np.ndarray,
    *,
    k_image: int,
    fg_rule: str,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    threads: int = 1,
    image_clusterer: str,
    alone: bool = False,
) -> dict[str, np.ndarray]:
    """Per-image clustering of one shard and each image's foreground cluster.

    ``X`` ``(N, D)`` float16/32 patch features, ``offsets`` ``(n + 1,)``, ``grids``
    ``(n, 2)``, ``cls_attn`` ``(N,)``. ``image_clusterer``: ``kmeans`` (cosine k-means,
    batched) or a bipartition of ``lcseg_steps.clustering.graph_split`` (``spectral``,
    ``ncut``; ``k_image`` must be 2, as ``lcseg_steps.runner.settings.check_config``
    checks before any job, and ``fg_rule`` picks the foreground side, not the method's own
    rule). Returns ``labels`` ``(N,)`` int16, ``fg`` ``(N,)`` uint8 image-level foreground
    mask, ``fg_cluster`` ``(n,)`` int16 (-1 for an image with fewer patches than
    ``k_image``, which is left all background), ``objective`` ``(n,)`` (k-means: the mean
    cosine to the centroids; graph methods: the second-smallest Laplacian eigenvalue).
    ``alone``: each image's k-means start as if it were clustered alone
    (:func:`per_image_kmeans`).
    """
    if image_clusterer not in IMAGE_CLUSTERERS:
        raise ValueError(
            f"image_clusterer must be one of {IMAGE_CLUSTERERS}, got {image_clusterer!r}"
        )
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    n = len(sizes)
    solvable = np.flatnonzero(sizes >= k_image)
    if image_clusterer != "kmeans":
        if not np.isfinite(X).all():
            raise NonFiniteError(f"image_level ({image_clusterer}): non-finite values")
        split = bipartition_images(X, offsets, image_clusterer)
        labels, objective = split["labels"], split["eigenvalue"]
    else:
        labels, objective = per_image_kmeans(
            X,
            offsets,
            k_image,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            device=device,
            threads=threads,
            alone=alone,
        )
    fg_cluster = np.full(n, -1, dtype=np.int16)
    fg = np.zeros(X.shape[0], dtype=np.uint8)
    for i in solvable:
        lo, hi = offsets[i], offsets[i + 1]
        c = pick_image_foreground(labels[lo:hi], tuple(grids[i]), cls_attn[lo:hi], k_image, fg_rule)
        fg_cluster[i] = c
        fg[lo:hi] = labels[lo:hi] == c
    return {"labels": labels, "fg": fg, "fg_cluster": fg_cluster, "objective": objective}


# ---------------------------------------------------------------------------------------
# dataset and category levels


def vote_counts(labels: np.ndarray, fg: np.ndarray, n_clusters: int) -> np.ndarray:
    """``(n_clusters, 2)`` int64: [patches, image-level foreground patches] per cluster."""
    labels = np.asarray(labels, dtype=np.int64)
    total = np.bincount(labels, minlength=n_clusters)
    fgc = np.bincount(labels, weights=np.asarray(fg, dtype=np.float64), minlength=n_clusters)
    return np.stack([total, fgc.astype(np.int64)], axis=1)


def foreground_clusters(counts: np.ndarray, fg_vote: float) -> tuple[np.ndarray, np.ndarray]:
    """Clusters whose share of image-level foreground patches exceeds ``fg_vote``.

    ``counts`` ``(..., 2)`` from :func:`vote_counts` -> (``fg`` bool ``(...)``, ``fraction``
    float64 ``(...)``; NaN for a cluster with no patches, which is never foreground).
    """
    total, fgc = counts[..., 0], counts[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, fgc / np.maximum(total, 1), np.nan)
    return np.nan_to_num(frac, nan=-1.0) > fg_vote, frac


def sample_rows_by_group(
    shards: Iterable[tuple[Callable[[], np.ndarray], np.ndarray]],
    group_sizes: np.ndarray,
    sample: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of about ``sample`` rows per group (approximate), in one pass.

    ``shards`` yields ``(load, row_groups)``: ``load()`` returns the shard's ``(n, D)`` rows,
    ``row_groups`` ``(n,)`` their group. Each row of group g is kept with probability
    ``sample / group_sizes[g]`` (all rows when ``sample`` is None or larger), decided by
    ``seeded_uniforms(seed, row, 1, domain=2)`` of its global row index, so the fit sees
    the whole dataset's variety without holding it. Returns float16 rows and their groups.
    """
    keep_p = np.ones(len(group_sizes))
    if sample is not None:
        keep_p = np.minimum(1.0, sample / np.maximum(group_sizes, 1))
    xs, gs, start = [], [], 0
    for load, row_groups in shards:
        rows = np.arange(start, start + len(row_groups))
        start += len(row_groups)
        u = seeded_uniforms(seed, rows, 1, domain=_CATEGORY_SAMPLE_DOMAIN)[:, 0]
        take = u < keep_p[row_groups]
        if take.any():
            xs.append(np.asarray(load()[take], dtype=np.float16))
            gs.append(row_groups[take])
    if not xs:
        raise ValueError("no rows to sample: every group is empty")
    return np.concatenate(xs), np.concatenate(gs)


def fit_groups(
    X: np.ndarray, groups: np.ndarray, n_groups: int, k: int, **kw
) -> tuple[np.ndarray, GroupedKMeansResult]:
    """``k`` cosine centroids per group -> ``(n_groups, k, D)`` float32 and the fit
    (``kmeans_groups``: ``objective`` ``(n_groups,)``, labels in row order).

    A group with fewer than ``k`` sampled rows is a clear error (lower ``k_category`` or
    ``n_categories``).
    """
    fit = kmeans_groups(X, k, groups=groups.astype(np.int64), **kw)
    missing = sorted(set(range(n_groups)) - set(fit.group_values.tolist()))
    if missing:
        raise ValueError(f"pseudo-categories {missing} have no patches")
    return fit.centroids, fit


def centroid_mask(
    X: np.ndarray,
    centroids: np.ndarray,
    fg_clusters: np.ndarray,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A fitted level applied to patches: each row of ``X`` ``(N, D)`` goes to its
    nearest centroid by cosine (``kmeans.nearest_centroid``) and is foreground when that
    cluster is.

    Dataset level: ``centroids`` ``(k, D)``, ``fg_clusters`` ``(k,)``. Category level:
    ``centroids`` ``(n_categories, k, D)``, ``fg_clusters`` ``(n_categories, k)`` and
    ``groups`` ``(N,)`` the category of each row. Returns (``labels`` ``(N,)`` int16,
    ``mask`` ``(N,)`` uint8). ``merge`` (every shard) and ``lcseg_steps.apply.model_zarr`` (a new
    image) both call this.
    """
    fg = np.asarray(fg_clusters)
    lab = nearest_centroid(l2_normalize(X), np.asarray(centroids), groups=groups)
    mask = fg[lab] if groups is None else fg[np.asarray(groups), lab]
    return lab.astype(np.int16), mask.astype(np.uint8)


# ---------------------------------------------------------------------------------------
# merge


def merge_masks(
    masks: dict[str, np.ndarray], consistency: str, min_levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-level binary patch masks into one consistent mask and a soft score.

    ``masks``: level name -> ``(N,)`` {0, 1}. ``vote``: foreground in at least
    ``min_levels`` levels; ``intersect``: in all; ``union``: in any. The score ``(N,)``
    float32 is the mean of the level masks. Returns (``merged`` uint8, ``score`` float32).
    """
    if not masks:
        raise ValueError("merge needs at least one enabled level")
    stack = np.stack([np.asarray(m, dtype=np.uint8) for m in masks.values()])
    votes = stack.sum(axis=0)
    n = len(masks)
    if consistency == "vote":
        if min_levels < 1:  # above n: stage_settings.check_config, before any job
            raise ValueError(f"clustering.min_levels={min_levels} must be at least 1")
        merged = votes >= min_levels
    elif consistency == "intersect":
        merged = votes == n
    elif consistency == "union":
        merged = votes >= 1
    else:
        raise ValueError(f"consistency must be vote, intersect or union, got {consistency!r}")
    return merged.astype(np.uint8), (votes / n).astype(np.float32)


def check_levels(levels: Sequence[str]) -> list[str]:
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ValueError(f"clustering.levels must be a non-empty subset of {LEVELS}, got {levels}")
    return [lv for lv in LEVELS if lv in levels]


# ---------------------------------------------------------------------------------------
# dataset level: every shard's patches, streamed


def fit_feature_shards(
    shards: Sequence[tuple],
    feature: str,
    k: int,
    *,
    init_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    threads: int = 1,
    log: Callable[[str], None] = print,
):
    """Cosine k-means of every shard's patch rows, streamed block by block
    (``kmeans_stream``) -> its ``KMeansResult`` (centroids ``(k, D)``, labels ``(N,)`` in
    shard order). ``shards``: ``stores.layout.feature_shards``' ``(path, store, array)``.
    Non-finite rows raise the error of the store that holds them (``check_finite``)."""
    from lcseg_steps.stores.layout import check_finite, iter_row_blocks

    n_rows = sum(a.shape[0] for _, _, a in shards)
    # on NumPy kmeans_stream keeps rows as stored and casts every row every pass
    import_torch_cast_if_worth(n_rows * shards[0][2].shape[1] * max(1, max_iter))

    def blocks():
        for _, _, arr in shards:
            yield from iter_row_blocks(arr, lazy=True)

    try:
        return kmeans_stream(
            blocks,
            k,
            init_sample=init_sample,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            device=device,
            log=log,
            threads=threads,  # the fit's last pass labels every row: no second read
        )
    except NonFiniteError:
        # the fit checks every row but cannot say in which store; find it (error path only)
        for path, store, _ in shards:
            check_finite(store, path, feature)
        raise
