"""The peers' evaluation protocols: the same predictions scored the way each peer's own
evaluation code scores them, so that a number can stand beside that peer's table.

Published unsupervised-segmentation scores differ in how clusters are matched to classes
(most matched pixels or largest IoU sum, one-to-one or many-to-one, over the dataset or per
image), which pixels count (void, surplus clusters) and at which resolution. Each protocol
of ``PROTOCOLS`` reproduces one peer's rule, read from its repository (named in
``reproduces``); ``differs`` says what is not the same. ``ProtocolAccumulator`` computes
every protocol in one pass over the images.

Ground truth is ``(H, W)`` with classes ``[0, n_gt)`` (background 0) and ``void`` (255);
predictions are ``(H, W)`` ids ``[0, n_pred)`` (the pipeline's background id 0 and its
classes), both at the image's own resolution. A peer that scores at another resolution
gets the ground truth *and* lcseg's prediction resampled the same way by nearest
neighbour, as that peer resamples its labels.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from lcseg_steps.evaluation.matching import (
    hungarian_match,
    iou_hungarian_match,
    iou_majority_match,
    majority_match,
    pixel_hungarian_rows,
)
from lcseg_steps.evaluation.scoring import VOID, ConfusionAccumulator, check_confusion, scores

BACKGROUND = 0
PEER_SIDE = 320  # CAUSE's and STEGO's default test resolution
DINOV2_SIDE = 322  # CAUSE's for DINOv2 checkpoints (a multiple of patch 14)
DIFFCUT_SIDE = 1024  # DiffCut's image size: the label is resized to it, then to 128
DIFFCUT_MASK = 128  # DiffCut's mask size, at which it scores
HEADLINE = {"hungarian": "dataset_hungarian", "majority": "majority"}

# name -> what the rule is, at which resolution, the peer code it reproduces, what differs
PROTOCOLS: dict[str, dict[str, str]] = {
    "dataset_hungarian": {
        "rule": "one-to-one Hungarian over the dataset's confusion, most matched pixels; "
        "surplus ids unmatched and counted wrong; a class absent from ground truth and "
        "prediction left out of the mean",
        "resolution": "original",
        "reproduces": "lcseg's headline (evaluate.matching: hungarian)",
        "differs": "the pixel objective of CAUSE and STEGO, but surplus clusters' pixels "
        "count as errors where they drop them",
    },
    "majority": {
        "rule": "many-to-one: each id to the class it overlaps most (pixels), over the dataset",
        "resolution": "original",
        "reproduces": "lcseg's evaluate.matching: majority",
        "differs": "DSM, MaskContrast and COMUS send each cluster to its highest-IoU class "
        "(dsm_majority)",
    },
    "dsm": {
        "rule": "one-to-one Hungarian maximising the sum of per-pair IoU (cost N - IoU) when "
        "ids == classes, else each id to its highest-IoU class; mean over all classes (a "
        "class absent from both scores 0)",
        "resolution": "original",
        "reproduces": "lukemelas/deep-spectral-segmentation semantic-segmentation/eval.py "
        "(evaluate) and eval_utils.py (hungarian_match, majority_vote, get_iou); the same "
        "rule in MaskContrast's segmentation/utils/kmeans_utils.py and COMUS's "
        "thirdparty/utils.py",
        "differs": "DSM upsamples its own 1/8 or 1/16 labels by nearest; lcseg's "
        "predictions are already at the image's resolution",
    },
    "dsm_majority": {
        "rule": "many-to-one: each id to the class of highest IoU with it (ties to the lower "
        "class); mean over all classes (absent = 0)",
        "resolution": "original",
        "reproduces": "lukemelas/deep-spectral-segmentation semantic-segmentation/"
        "eval_utils.py (majority_vote), forced; COMUS configs/evaluation/majority.yaml",
        "differs": "none in the rule",
    },
    "cause_voc": {
        "rule": "one-to-one Hungarian over the dataset, most matched pixels; pixels whose "
        "label or prediction lies outside [0, classes) dropped; mean over classes present",
        "resolution": "ground truth and prediction resized to 320x320 (322 for DINOv2), "
        "aspect not kept, nearest",
        "reproduces": "ByungKwanLee/Causal-Unsupervised-Segmentation utils/utils.py "
        "(NiceTool.scores, NiceTool.eval, get_pascal_transform)",
        "differs": "CAUSE predicts at 320x320 from the resized image; lcseg's prediction "
        "at full size is resampled like the labels",
    },
    "cause_coco": {
        "rule": "as cause_voc",
        "resolution": "shorter side resized to 320 (322 for DINOv2), centre crop, nearest",
        "reproduces": "ByungKwanLee/Causal-Unsupervised-Segmentation utils/utils.py "
        "(NiceTool.eval, get_cococity_transform)",
        "differs": "as cause_voc; CAUSE's COCO numbers score its own image list and label set",
    },
    "stego": {
        "rule": "one-to-one Hungarian over the dataset, most matched pixels; pixels whose "
        "label or prediction lies outside [0, classes) dropped; mean over classes present",
        "resolution": "shorter side resized to 320, centre crop 320, nearest",
        "reproduces": "mhamilton723/STEGO src/utils.py (UnsupervisedMetrics, get_transform)",
        "differs": "STEGO has no VOC loader; lcseg's prediction is resampled like the labels",
    },
    "diffcut": {
        "rule": "per image: Hungarian (pixels) of the foreground classes, unmatched clusters "
        "merged into one background id, background and void scored as background, then a "
        "second Hungarian with background; matched counts summed over the dataset; mean "
        "over classes present. On a dataset without background (COCO-Stuff-27, "
        "Cityscapes-27) DiffCut's own branch for them: one Hungarian per image over all "
        "classes, void dropped (protocols_scene)",
        "resolution": "centre square crop (shorter side - 1), labels resized to 1024 "
        "(nearest-exact) then to 128x128 (nearest)",
        "reproduces": "PaulCouairon/DiffCut eval_diffcut.py (Benchmark_Segmentation."
        "evaluate), tools/utils.py (hungarian_matching, _fast_hist), dataloader/iterator.py "
        "(process_image)",
        "differs": "DiffCut predicts at 128x128; lcseg's prediction is sampled at the same "
        "points as the labels; no PAMR",
    },
}


# ------------------------------------------------------------------------- geometry


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels when ``n_in`` pixels are resized by
    nearest neighbour, sampling at pixel centres (torch's ``nearest-exact``):
    ``floor((i + 0.5) * n_in / n_out)``, computed in integers so no boundary is off by
    rounding."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def pil_nearest_indices(n_in: int, n_out: int, axis: int) -> np.ndarray:
    """Source index of each output pixel when PIL's ``NEAREST`` resizes ``n_in`` pixels to
    ``n_out`` along ``axis`` (0 rows, 1 columns), as torchvision's ``Resize`` on a PIL
    label does. PIL steps through the columns by adding the scale in floating point, so a
    boundary may fall one pixel off the exact ``nearest_indices``: PIL itself is asked,
    on an image of indices."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    line = np.arange(n_in, dtype=np.int32)
    if axis == 0:
        return np.asarray(Image.fromarray(line[:, None]).resize((1, n_out), Image.NEAREST))[:, 0]
    return np.asarray(Image.fromarray(line[None, :]).resize((n_out, 1), Image.NEAREST))[0]


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` label map -> ``(height, width)`` by PIL's nearest neighbour
    (``pil_nearest_indices`` on each axis; the aspect ratio is not kept). Labels stay
    labels: no value is blended."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {a.shape}")
    rows = pil_nearest_indices(a.shape[0], height, 0)
    cols = pil_nearest_indices(a.shape[1], width, 1)
    return a[rows[:, None], cols[None, :]]


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """torchvision's ``Resize(side)``: the shorter side becomes ``side``, the longer
    ``int(side * long / short)`` (truncated, as torchvision does)."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def centre_crop_offset(n: int, crop: int) -> int:
    """torchvision's ``CenterCrop`` offset along one axis: ``int(round((n - crop) / 2))``
    (Python's round: halves go to the even integer)."""
    return int(round((n - crop) / 2.0))


def sample_grid(height: int, width: int, geometry: tuple[str, int]) -> tuple[np.ndarray, ...]:
    """Rows and columns of an ``(height, width)`` map that a peer's label transform keeps,
    in output order: ``label[rows[:, None], cols[None, :]]`` is the transformed label.

    ``geometry`` is ``("squash", s)`` (resize to s x s, CAUSE on VOC), ``("crop", s)``
    (shorter side to s, centre crop s x s: CAUSE on COCO, STEGO) or ``("diffcut", m)``
    (centre square crop of side ``min(H, W) - 1``, nearest-exact to 1024, nearest to m).
    """
    kind, s = geometry
    if kind == "squash":
        return pil_nearest_indices(height, s, 0), pil_nearest_indices(width, s, 1)
    if kind == "crop":
        new_h, new_w = shorter_side_size(height, width, s)
        top, left = centre_crop_offset(new_h, s), centre_crop_offset(new_w, s)
        rows = pil_nearest_indices(height, new_h, 0)[top : top + s]
        cols = pil_nearest_indices(width, new_w, 1)[left : left + s]
        return rows, cols
    if kind == "diffcut":
        c = min(height, width) - 1
        if c < 1:
            raise ValueError(f"an image of {height}x{width} is too small for DiffCut's crop")
        # torch's "nearest" from DIFFCUT_SIDE to m keeps every (DIFFCUT_SIDE // m)-th pixel
        picked = np.arange(s, dtype=np.int64) * DIFFCUT_SIDE // s
        inner = nearest_indices(c, DIFFCUT_SIDE)[picked]
        rows = centre_crop_offset(height, c) + inner
        cols = centre_crop_offset(width, c) + inner
        return rows, cols
    raise ValueError(f"unknown geometry {geometry!r}")


def resample(a: np.ndarray, geometry: tuple[str, int]) -> np.ndarray:
    """``(H, W)`` label map -> the peer's transformed label map (``sample_grid``)."""
    a = np.asarray(a)
    rows, cols = sample_grid(a.shape[0], a.shape[1], geometry)
    return a[rows[:, None], cols[None, :]]


def cause_protocol(dataset: str, backbone: str | None) -> tuple[str, tuple[str, int]]:
    """The CAUSE protocol of a run: its name and label geometry. Pascal VOC (and the demo,
    built like VOC) is squashed to s x s, any other dataset resized and centre-cropped;
    s is 322 for a DINOv2 backbone, else 320."""
    side = DINOV2_SIDE if "dinov2" in (backbone or "").lower() else PEER_SIDE
    if dataset in ("voc12", "demo"):
        return "cause_voc", ("squash", side)
    return "cause_coco", ("crop", side)


# ------------------------------------------------------------- scores after a matching


def in_range_square(conf: np.ndarray) -> np.ndarray:
    """``(n_gt, n_pred)`` -> ``(n_gt, n_gt)``: the pixels whose prediction lies in
    ``[0, n_gt)`` (CAUSE and STEGO drop the others), zero columns for ids never predicted."""
    conf = check_confusion(conf)
    n_gt = conf.shape[0]
    out = np.zeros((n_gt, n_gt), dtype=np.int64)
    keep = min(n_gt, conf.shape[1])
    out[:, :keep] = conf[:, :keep]
    return out


def dsm_scores(conf: np.ndarray, mapping: np.ndarray, class_names=None) -> dict:
    """DSM's scores after ``mapping`` (every id to a class): IoU ``TP / max(TP + FP + FN,
    1e-8)`` per class, i.e. ``scores``' IoU with 0 for a class absent from both, and the
    mean over *all* classes; pixel accuracy as ``scores``."""
    out = scores(conf, np.asarray(mapping, dtype=np.int64), class_names)
    iou = np.nan_to_num(np.asarray(out["per_class_iou"]), nan=0.0)
    return {
        "miou": float(iou.mean()),
        "pixel_accuracy": out["pixel_accuracy"],
        "per_class_iou": [float(x) for x in iou],
        "class_names": out["class_names"],
        "mapping": out["mapping"],
    }


def _names(class_names, n: int) -> list[str]:
    return (
        [str(c) for c in class_names]
        if class_names is not None
        else [f"class_{i}" for i in range(n)]
    )


def _fast_hist(label: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """DiffCut's histogram of one image: rows the labels in ``[0, n)`` (others dropped),
    columns every predicted id up to ``max(n, pred.max() + 1)``."""
    width = max(n, int(pred.max()) + 1)
    keep = (label >= 0) & (label < n)
    counts = np.bincount(width * label[keep] + pred[keep], minlength=n * width)
    return counts.reshape(n, width)


def _matched_counts(hist: np.ndarray):
    """DiffCut's ``hungarian_matching`` of one histogram: per class TP, FP, FN (FP over
    the matched columns only) and the matched columns."""
    rows, cols = linear_sum_assignment(hist, maximize=True)
    tp = hist[rows, cols]
    fn = hist.sum(axis=1) - tp
    aligned = hist[:, cols]
    fp = aligned.sum(axis=0) - np.diag(aligned)
    return tp, fp, fn, aligned, cols


def diffcut_image_counts(
    gt: np.ndarray, pred: np.ndarray, n_gt: int, void: int = VOID
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """DiffCut's two-step per-image matching of one image at its scoring resolution.

    Args:
        gt: ``(h, w)`` classes ``[0, n_gt)`` (background 0) or ``void``.
        pred: ``(h, w)`` non-negative predicted ids.

    Returns:
        ``tp``, ``fp``, ``fn``: ``(n_gt,)`` int64 in lcseg's class order, and the pixel
        count. Step 1 matches the foreground classes (DiffCut's ids ``c - 1``; background
        and void excluded) to ids by pixels; every id not matched to a class that has
        pixels in a matched column becomes one new id ``pred.max() + 1``. Step 2 scores
        background and void as one background class (DiffCut's last id) and matches again.
    """
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    n_fg = n_gt - 1
    label = np.where((gt == void) | (gt == BACKGROUND), -1, gt - 1)
    _, _, _, aligned, cols = _matched_counts(_fast_hist(label, pred, n_fg))
    kept = {int(cols[g]) for g in np.flatnonzero(aligned.max(axis=1) > 0)}
    merged = sorted(set(np.unique(pred).tolist()) - kept)
    pred = np.where(np.isin(pred, merged), pred.max() + 1, pred)
    label = np.where(label == -1, n_fg, label)
    hist = _fast_hist(label, pred, n_gt)
    tp, fp, fn, _, _ = _matched_counts(hist)
    order = np.r_[n_fg, np.arange(n_fg)]  # lcseg class c is DiffCut's c - 1, 0 its last
    return tp[order], fp[order], fn[order], int(hist.sum())


def _pooled_scores(tp, fp, fn, n_pixels, class_names) -> dict:
    """IoU ``TP / (TP + FP + FN)`` of counts pooled over images (NaN where 0), nanmean."""
    denom = (tp + fp + fn).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    scored = ~np.isnan(iou)
    return {
        "miou": float(iou[scored].mean()) if scored.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / n_pixels) if n_pixels else math.nan,
        "per_class_iou": [float(x) for x in iou],
        "class_names": _names(class_names, len(tp)),
    }


# --------------------------------------------------------------------- accumulation


class ProtocolAccumulator:
    """Every protocol of a run, filled image by image in one pass.

    ``add`` counts one image at its original resolution (lcseg's and DSM's protocols),
    at CAUSE's and STEGO's resolutions (one count per distinct geometry) and through
    DiffCut's per-image matching. ``dataset`` and ``backbone`` choose CAUSE's variant
    (``cause_protocol``).
    """

    def __init__(
        self,
        n_gt: int,
        n_pred: int,
        void: int = VOID,
        *,
        dataset: str = "demo",
        backbone: str | None = None,
    ):
        if n_gt < 2:
            raise ValueError(f"the peers' protocols need a background and a class, n_gt={n_gt}")
        self.original = ConfusionAccumulator(n_gt, n_pred, void)
        self.cause_name, cause_geometry = cause_protocol(dataset, backbone)
        self.geometry = {self.cause_name: cause_geometry, "stego": ("crop", PEER_SIDE)}
        self.resampled = {
            g: ConfusionAccumulator(n_gt, n_pred, void) for g in set(self.geometry.values())
        }
        self.void = int(void)
        self.diffcut = np.zeros((3, n_gt), dtype=np.int64)  # tp, fp, fn
        self.diffcut_pixels = 0

    @property
    def n_images(self) -> int:
        return self.original.n_images

    def add(self, gt: np.ndarray, pred: np.ndarray, image_id: str | None = None) -> np.ndarray:
        """Add one image (``gt``, ``pred`` as in ``scoring.confusion``; errors name
        ``image_id``). Returns the image's own ``(n_gt, n_pred)`` confusion at its
        original resolution."""
        conf = self.original.add(gt, pred, image_id)
        for geometry, acc in self.resampled.items():
            acc.add(resample(gt, geometry), resample(pred, geometry), image_id)
        d = ("diffcut", DIFFCUT_MASK)
        try:
            gt_d, pred_d = resample(gt, d), resample(pred, d)
        except ValueError as e:
            raise ValueError(f"image {image_id!r}: {e}") from e
        tp, fp, fn, n = diffcut_image_counts(gt_d, pred_d, self.original.n_gt, self.void)
        self.diffcut += np.stack([tp, fp, fn])
        self.diffcut_pixels += n
        return conf

    def results(self, class_names: Sequence[str] | None = None) -> dict[str, dict]:
        """Protocol name -> scores (``miou``, ``pixel_accuracy``, ``per_class_iou``,
        ``class_names``, and ``mapping`` for the dataset-level ones), in the order of
        ``PROTOCOLS``."""
        conf = self.original.matrix
        dsm = iou_hungarian_match(conf) if conf.shape[0] == conf.shape[1] else None
        out = {
            "dataset_hungarian": scores(conf, hungarian_match(conf), class_names),
            "majority": scores(conf, majority_match(conf), class_names),
            "dsm": dsm_scores(conf, iou_majority_match(conf) if dsm is None else dsm, class_names),
            "dsm_majority": dsm_scores(conf, iou_majority_match(conf), class_names),
        }
        for name in (self.cause_name, "stego"):
            square = in_range_square(self.resampled[self.geometry[name]].matrix)
            out[name] = scores(square, pixel_hungarian_rows(square), class_names)
        out["diffcut"] = _pooled_scores(*self.diffcut, self.diffcut_pixels, class_names)
        return {name: out[name] for name in PROTOCOLS if name in out}


def protocol_metrics(results: dict[str, dict]) -> dict[str, dict]:
    """``ProtocolAccumulator.results`` -> metrics.json's ``protocols`` object: per protocol
    ``miou``, ``pixel_accuracy``, ``per_class_iou`` ({class name: IoU}, NaN = absent),
    ``mapping`` where there is one, and its ``PROTOCOLS`` descriptions."""
    out = {}
    for name, r in results.items():
        entry: dict[str, Any] = {
            "miou": r["miou"],
            "pixel_accuracy": r["pixel_accuracy"],
            "per_class_iou": dict(zip(r["class_names"], r["per_class_iou"], strict=True)),
        }
        if "mapping" in r:
            entry["mapping"] = r["mapping"]
        out[name] = {**entry, **PROTOCOLS[name]}
    return out


# ------------------------------------------------------------------ published numbers

PUBLISHED_FIELDS = ("method", "paper", "protocol", "dataset", "backbone", "trains", "miou")


def published_results(path=None) -> list[dict[str, str]]:
    """The peers' published scores (``lcseg_steps/data/published.csv`` unless ``path``),
    one dict per row with ``PUBLISHED_FIELDS`` (``miou`` a float). A user adds a row to
    set another paper's number beside lcseg's under the same protocol."""
    if path is None:
        text = resources.files("lcseg_steps.data").joinpath("published.csv").read_text()
        where = "lcseg_steps/data/published.csv"
    else:
        with open(path) as fh:
            text = fh.read()
        where = str(path)
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    for i, row in enumerate(rows, start=2):
        missing = [f for f in PUBLISHED_FIELDS if not (row.get(f) or "").strip()]
        if missing:
            raise ValueError(f"{where}: row {i} lacks {missing}")
        if row["protocol"] not in PROTOCOLS:
            raise ValueError(
                f"{where}: row {i} names protocol {row['protocol']!r}, not one of {list(PROTOCOLS)}"
            )
        try:
            row["miou"] = float(row["miou"])
        except ValueError:
            raise ValueError(f"{where}: row {i} has miou {row['miou']!r}, not a number") from None
    return rows
