"""How separable foreground and background patch features are, against ground truth.

Arrays follow the ragged layout of the feature stores (``lcseg_steps.stores.layout``): ``X``
``(N, D)`` patch features of a shard, ``offsets`` ``(n + 1,)``, ``grid`` ``(n, 2)``.

- Ground truth on the patch grid (:func:`patch_ground_truth`): patch ``(r, c)`` of an
  ``(H, W)`` map on a ``(gh, gw)`` grid owns the pixels ``y`` with ``floor(y * gh / H) =
  r`` and ``x`` with ``floor(x * gw / W) = c`` (the extracted image is resized to the
  grid, so a patch covers ``H / gh`` by ``W / gw`` original pixels). Void pixels (255)
  are ignored; a patch is foreground (1) when more than half of its other pixels are
  foreground (class != 0), background (0) otherwise (a tie is background), ignored (-1)
  when all its pixels are void.
- Centroid score (:func:`centroid_scores`): per image, the mean of the L2-normalised
  features of its foreground patches ``c_fg`` and of its background patches ``c_bg``,
  and each patch's ``cos(f, c_fg) - cos(f, c_bg)`` in [-2, 2]. The centroids come from
  the ground truth itself (every labelled patch, its own included), so this measures the
  features, not a method. Images without a labelled foreground or background patch score
  NaN.
- :func:`roc_auc` of that score, pooled over the labelled patches of all images
  (threshold-free; the Mann-Whitney statistic with average ranks for ties).
- Best 2-way split (:func:`best_split_iou`): per-image cosine k-means with k = 2
  (``lcseg_steps.clustering.kmeans.kmeans_ranges``), then the one cluster taken as foreground
  that maximises the patch IoU against ground truth (over the labelled patches; "both" and
  "neither" are not splits). NaN for an image with fewer than 2 patches or no labelled
  foreground patch. With ``k > 2`` (the analysis's ``k_image``) the best union of
  clusters (:func:`best_assignment_iou`), NaN for an image of fewer than ``k`` patches.
- Histograms: counts in fixed bins, :data:`SCORE_BINS` (the score of foreground and of
  background patches apart) and :data:`IOU_BINS`; the last bin includes its right edge.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering.levels import per_image_kmeans
from lcseg_steps.data.image_table import ImageRecord, load_ground_truth, read_index
from lcseg_steps.stores.atomic_write import write_text_atomic
from lcseg_steps.stores.layout import feature_array, open_store, patch_layout, records_in_order

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

VOID = 255
BACKGROUND = 0
IGNORED = -1
SCORE_BINS = np.linspace(-2.0, 2.0, 41)  # width 0.1
IOU_BINS = np.linspace(0.0, 1.0, 21)  # width 0.05


def patch_ground_truth(gt: np.ndarray | None, grid: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` class map (255 void, 0 background; or ``None``: unlabelled) ->
    ``(gh * gw,)`` int8 in {1, 0, -1}, row-major (module docstring)."""
    gh, gw = (int(x) for x in grid)
    if gt is None:
        return np.full(gh * gw, IGNORED, dtype=np.int8)
    gt = np.asarray(gt)
    if gt.ndim != 2 or gt.shape[0] < gh or gt.shape[1] < gw:
        raise ValueError(f"ground truth of shape {gt.shape} does not cover a {gh}x{gw} grid")
    H, W = gt.shape
    rows = np.arange(H, dtype=np.int64) * gh // H
    cols = np.arange(W, dtype=np.int64) * gw // W
    patch = (rows[:, None] * gw + cols[None, :]).ravel()
    valid = (gt != VOID).ravel()
    fg = valid & (gt != BACKGROUND).ravel()
    n_valid = np.bincount(patch, weights=valid, minlength=gh * gw)
    n_fg = np.bincount(patch, weights=fg, minlength=gh * gw)
    out = (2 * n_fg > n_valid).astype(np.int8)
    out[n_valid == 0] = IGNORED
    return out


def patch_ground_truths(gts: Sequence[np.ndarray | None], grids: np.ndarray) -> np.ndarray:
    """One map per image (store order) -> ``(N,)`` int8 ragged patch labels."""
    grids = np.asarray(grids)
    if len(gts) != len(grids):
        raise ValueError(f"{len(gts)} ground-truth maps for {len(grids)} images")
    parts = [patch_ground_truth(g, tuple(gr)) for g, gr in zip(gts, grids, strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int8)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(n > 0, n, 1.0)


def centroid_scores(X: np.ndarray, offsets: np.ndarray, gt_patch: np.ndarray) -> np.ndarray:
    """``(N,)`` float64 ``cos(f, c_fg) - cos(f, c_bg)`` per patch (NaN for an image
    without labelled foreground or background patches)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    gt_patch = np.asarray(gt_patch)
    out = np.full(int(offsets[-1]), np.nan)
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        g = gt_patch[lo:hi]
        if not (g == 1).any() or not (g == 0).any():
            continue
        Xn = _unit(X[lo:hi])
        c_fg, c_bg = _unit(Xn[g == 1].mean(axis=0)), _unit(Xn[g == 0].mean(axis=0))
        out[lo:hi] = Xn @ c_fg - Xn @ c_bg
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` ``(m,)`` for ``positive`` ``(m,)`` bool: the
    probability that a random positive outscores a random negative (ties count half).
    NaN when either class is empty."""
    from scipy.stats import rankdata

    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # average ranks of ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pooled_auc(score: np.ndarray, gt_patch: np.ndarray) -> float:
    """:func:`roc_auc` over the labelled patches with a finite score (all images pooled)."""
    score, gt_patch = np.asarray(score), np.asarray(gt_patch)
    use = (gt_patch != IGNORED) & np.isfinite(score)
    return roc_auc(score[use], gt_patch[use] == 1)


def best_assignment_iou(labels: np.ndarray, gt_patch: np.ndarray, k: int) -> tuple[float, tuple]:
    """One image: the best patch IoU over non-empty proper subsets of the ``k`` clusters
    taken as foreground (for k = 2: either cluster), over the labelled patches.

    ``labels`` ``(P,)`` int in ``[0, k)``, ``gt_patch`` ``(P,)`` in {1, 0, -1}. Returns
    ``(iou, fg_clusters)``; ``(nan, ())`` without a labelled foreground patch. Ties go to
    the first subset (smaller subsets first, then in lexicographic order).
    """
    labels, gt_patch = np.asarray(labels), np.asarray(gt_patch)
    use = gt_patch != IGNORED
    lab, truth = labels[use], gt_patch[use] == 1
    if not truth.any():
        return float("nan"), ()
    best, best_set = -1.0, ()
    for size in range(1, k):
        for subset in itertools.combinations(range(k), size):
            pred = np.isin(lab, subset)
            iou = (pred & truth).sum() / (pred | truth).sum()
            if iou > best:
                best, best_set = float(iou), subset
    return best, best_set


def best_split_iou(
    X: np.ndarray,
    offsets: np.ndarray,
    gt_patch: np.ndarray,
    *,
    k: int = 2,
    max_iter: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image k-means (k = 2 by default) and the best cluster-to-foreground choice.

    Returns ``labels`` ``(N,)`` int16 (0 for an image of fewer than ``k`` patches) and
    ``iou`` ``(n,)`` float64 (NaN where undefined, see the module docstring).
    """
    if k < 2:
        raise ValueError(f"a split needs k >= 2 clusters, got k={k}")
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    solvable = np.flatnonzero(sizes >= k)
    labels, _ = per_image_kmeans(
        np.asarray(X), offsets, k, max_iter=max_iter, tol=tol, seed=seed, device=device
    )
    iou = np.full(len(sizes), np.nan)
    for i in solvable:
        lo, hi = offsets[i], offsets[i + 1]
        iou[i] = best_assignment_iou(labels[lo:hi], gt_patch[lo:hi], k)[0]
    return labels, iou


def histogram(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """``(len(bins) - 1,)`` int64 counts of the finite ``values`` in fixed ``bins``
    (``[b_j, b_j+1)``, the last bin closed; values outside the bins are not counted)."""
    v = np.asarray(values, dtype=np.float64)
    return np.histogram(v[np.isfinite(v)], bins=bins)[0].astype(np.int64)


def separability(
    X: np.ndarray, offsets: np.ndarray, gt_patch: np.ndarray, **kmeans_kw
) -> dict[str, object]:
    """All of the above for one set of images.

    Returns ``auc`` (float), ``mean_iou`` (float, mean over images with an IoU),
    ``score`` ``(N,)``, ``labels`` ``(N,)``, ``gt_patch`` ``(N,)``, ``iou`` ``(n,)``,
    ``score_bins``,
    ``score_hist_fg`` / ``score_hist_bg`` (counts of the labelled foreground / background
    patches' scores), ``iou_bins``, ``iou_hist``, ``n_images_scored`` (images with a
    score) and ``n_patches_scored`` (labelled patches in the AUC).
    """
    gt_patch = np.asarray(gt_patch)
    if gt_patch.shape != (int(np.asarray(offsets)[-1]),):
        raise ValueError(f"gt_patch has shape {gt_patch.shape}, expected ({offsets[-1]},)")
    score = centroid_scores(X, offsets, gt_patch)
    labels, iou = best_split_iou(X, offsets, gt_patch, **kmeans_kw)
    scored = np.isfinite(score) & (gt_patch != IGNORED)
    offsets = np.asarray(offsets, dtype=np.int64)
    nonempty = np.diff(offsets) > 0
    has_score = np.zeros(len(nonempty), dtype=bool)
    has_score[nonempty] = np.isfinite(score[offsets[:-1][nonempty]])
    return {
        "auc": pooled_auc(score, gt_patch),
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "score": score,
        "labels": labels,
        "gt_patch": gt_patch,
        "iou": iou,
        "score_bins": SCORE_BINS,
        "score_hist_fg": histogram(score[scored & (gt_patch == 1)], SCORE_BINS),
        "score_hist_bg": histogram(score[scored & (gt_patch == 0)], SCORE_BINS),
        "iou_bins": IOU_BINS,
        "iou_hist": histogram(iou, IOU_BINS),
        "n_images_scored": int(has_score.sum()),
        "n_patches_scored": int(scored.sum()),
    }


def store_separability(
    features: str | os.PathLike,
    gts: Sequence[np.ndarray | None],
    feature: str = "k",
    **kmeans_kw,
) -> dict[str, object]:
    """:func:`separability` of a feature store's ``feature`` rows against ``gts``, one
    ``(H, W)`` ground-truth map (or ``None``) per image in the store's order (e.g.
    ``load_ground_truth`` of ``records_in_order``)."""
    fs = open_store(features)
    layout = patch_layout(fs)
    X = np.asarray(feature_array(fs, features, feature)[:])
    gt_patch = patch_ground_truths(gts, layout["grid"])
    return separability(X, layout["offsets"], gt_patch, **kmeans_kw)


# ---------------------------------------------------------------- the analysis stage

SUMMARY_KEYS = (
    "auc",
    "mean_iou",
    "n_images_scored",
    "n_patches_scored",
    "score_bins",
    "score_hist_fg",
    "score_hist_bg",
    "iou_bins",
    "iou_hist",
)


def _cat(parts: Sequence[dict], key: str, dtype) -> np.ndarray:
    return np.concatenate([np.zeros(0, dtype)] + [np.asarray(p[key]) for p in parts])


def _hist_sum(parts: Sequence[dict], key: str, bins: np.ndarray) -> np.ndarray:
    return sum((np.asarray(p[key]) for p in parts), np.zeros(len(bins) - 1, np.int64))


def pool_separability(parts: Sequence[dict]) -> dict[str, object]:
    """:func:`separability` results of disjoint image sets (the shards of an extraction)
    -> the :data:`SUMMARY_KEYS` of all their images together.

    The centroid score is per image, so the pooled AUC over the concatenated scores equals
    the AUC of one :func:`separability` over all images; the mean IoU is over every image
    with an IoU; histograms and counts add up.
    """
    score = _cat(parts, "score", np.float64)
    gt_patch = _cat(parts, "gt_patch", np.int8)
    iou = _cat(parts, "iou", np.float64)
    return {
        "auc": pooled_auc(score, gt_patch),
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "n_images_scored": sum(int(p["n_images_scored"]) for p in parts),
        "n_patches_scored": sum(int(p["n_patches_scored"]) for p in parts),
        "score_bins": SCORE_BINS,
        "score_hist_fg": _hist_sum(parts, "score_hist_fg", SCORE_BINS),
        "score_hist_bg": _hist_sum(parts, "score_hist_bg", SCORE_BINS),
        "iou_bins": IOU_BINS,
        "iou_hist": _hist_sum(parts, "iou_hist", IOU_BINS),
    }


def json_summary(result: dict) -> dict:
    """The :data:`SUMMARY_KEYS` of a result as JSON values: arrays as lists, counts as
    ints, NaN as ``None``."""

    def plain(v):
        if isinstance(v, np.ndarray):
            return plain(v.tolist())
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return None if math.isnan(v) else float(v)
        return v.item() if isinstance(v, np.generic) else v

    return {key: plain(result[key]) for key in SUMMARY_KEYS}


def shard_ground_truths(
    features: str | os.PathLike, records: Sequence[ImageRecord]
) -> list[np.ndarray | None]:
    """One ``(H, W)`` ground-truth map per image of a feature store, in the store's order
    (``None`` for an image without ground truth: its patches are ignored)."""
    store = open_store(features)
    return [load_ground_truth(r) for r in records_in_order(store, records, features)]


def run_separability(
    index: str | os.PathLike,
    stores: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    features: Sequence[str],
    k_image: int,
    max_iter: int,
    tol: float,
    seed: int,
    backbone: object,
    layer: object,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Separability of each of ``features`` (``q``/``k``/``v``) over all images of the
    feature ``stores`` (the shards of one extraction) -> JSON at ``out``:
    ``{"backbone", "layer", "k_image", "per_feature": {name: json_summary}}``.

    Shard by shard (one shard's features in memory at a time), then pooled
    (:func:`pool_separability`).
    """
    records = read_index(index)
    parts: dict[str, list[dict]] = {name: [] for name in features}
    kmeans_kw = {"k": k_image, "max_iter": max_iter, "tol": tol, "seed": seed, "device": device}
    for path in stores:
        gts = shard_ground_truths(path, records)
        n_gt = sum(g is not None for g in gts)
        log(f"separability: {path}: {len(gts)} images, {n_gt} with ground truth")
        fs = open_store(path)
        layout = patch_layout(fs)
        gt_patch = patch_ground_truths(gts, layout["grid"])  # once for every feature
        for name in features:
            X = np.asarray(feature_array(fs, path, name)[:])
            r = separability(X, layout["offsets"], gt_patch, **kmeans_kw)
            # keep what pooling needs, not the shard's k-means labels
            parts[name].append({key: r[key] for key in (*SUMMARY_KEYS, "score", "gt_patch", "iou")})
    per_feature = {name: json_summary(pool_separability(parts[name])) for name in features}
    for name, r in per_feature.items():
        log(
            f"separability: {backbone} layer {layer} {name}: AUC {r['auc']}, best-split IoU "
            f"{r['mean_iou']} over {r['n_images_scored']} images"
        )
    result = {"backbone": backbone, "layer": layer, "k_image": k_image, "per_feature": per_feature}
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    return result


def run(job: Job) -> dict:
    """The analysis rule of one extraction's separability: ``job.input.index``
    (images.tsv) and ``job.input.features`` (its shard stores, in shard order) ->
    ``job.output[0]`` (JSON). Settings: ``features`` (e.g. ``["q", "k", "v"]``),
    ``k_image``, ``max_iter``, ``tol``, ``seed`` (optional ``device``, default cpu), and
    ``backbone`` / ``layer``, recorded only."""
    stores = job.input.features
    stores = [stores] if isinstance(stores, (str, os.PathLike)) else list(stores)  # one shard
    return run_separability(job.input.index, stores, job.output[0], **job.settings, log=job.log)
