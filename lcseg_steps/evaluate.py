"""Stage ``evaluate``: scoring of the semantic maps of one seed against ground truth
(confusion, label matching, mIoU, plots), ``semantic/{shard}.zarr`` -> ``metrics.json``,
``per_class_iou.png`` and ``confusion.png``.

Unsupervised segmentation predicts cluster ids, not class ids, so a prediction is scored
only after its ids have been matched to ground-truth classes. The flow is:

1. ``confusion`` / ``ConfusionAccumulator`` count ``(gt class, predicted id)`` pixel pairs,
   image by image and shard by shard, into an ``(n_gt, n_pred)`` int64 matrix;
2. ``hungarian_match`` (one-to-one, the reported number) or ``majority_match``
   (many-to-one, a diagnostic upper bound) turns the matrix into a mapping
   ``predicted id -> gt class`` (``-1`` = unmatched);
3. ``scores`` remaps the columns and computes per-class IoU, mIoU and pixel accuracy.

Matching is done over every predicted id including the background id 0: the pipeline's
background is a cluster like any other and is not forced onto the gt background class.

Besides the configured matching (the top-level ``miou``), ``ProtocolAccumulator`` scores
the same predictions under every protocol of ``PROTOCOLS`` in the same pass over the
images (dataset-level Hungarian, majority vote, per-image Hungarian, dataset-level
Hungarian at 320x320), written as metrics.json's ``protocols`` object.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from lcseg_steps.data.index import ImageRecord, load_ground_truth, read_index, read_skipped
from lcseg_steps.data.index import class_names as dataset_class_names
from lcseg_steps.plots import figure
from lcseg_steps.settings import is_auto, settings_digest
from lcseg_steps.store import extraction_facts, open_store, pixel_map, records_in_order

if TYPE_CHECKING:
    from lcseg_steps.stage import Job

VOID = 255


def _check_int_array(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    return a


def confusion(
    gt: np.ndarray, pred: np.ndarray, n_gt: int, n_pred: int, void: int = VOID
) -> np.ndarray:
    """Pixel confusion matrix of one image.

    Args:
        gt: ``(H, W)`` integer (usually uint8) gt class ids in ``[0, n_gt)`` or ``void``.
        pred: ``(H, W)`` integer predicted ids in ``[0, n_pred)``.
        n_gt, n_pred: number of gt classes and of predicted ids.
        void: gt value of pixels to ignore (VOC boundaries are 255).

    Returns:
        ``(n_gt, n_pred)`` int64; entry ``[g, p]`` counts non-void pixels with gt ``g``
        and prediction ``p``.

    Raises:
        ValueError: shapes differ, non-integer dtypes, or a value out of range (the
        message names which array and the offending value).
    """
    gt = _check_int_array("ground truth", gt)
    pred = _check_int_array("prediction", pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} != prediction shape {pred.shape}")
    if n_gt < 1 or n_pred < 1:
        raise ValueError(f"n_gt and n_pred must be >= 1, got n_gt={n_gt}, n_pred={n_pred}")
    if 0 <= void < n_gt:
        raise ValueError(f"void value {void} collides with a gt class id (n_gt={n_gt})")
    gt = gt.ravel().astype(np.int64, copy=False)
    pred = pred.ravel().astype(np.int64, copy=False)
    keep = gt != void
    gt = gt[keep]
    pred = pred[keep]
    if gt.size:
        bad = (gt < 0) | (gt >= n_gt)
        if bad.any():
            raise ValueError(
                f"ground truth value {int(gt[bad][0])} is outside [0, {n_gt}) and is not "
                f"the void value {void}"
            )
        bad = (pred < 0) | (pred >= n_pred)
        if bad.any():
            raise ValueError(f"prediction value {int(pred[bad][0])} is outside [0, {n_pred})")
    # One flat bincount is far faster than np.add.at or a (gt, pred) loop.
    counts = np.bincount(gt * n_pred + pred, minlength=n_gt * n_pred)
    return counts.reshape(n_gt, n_pred).astype(np.int64, copy=False)


class ConfusionAccumulator:
    """Running ``(n_gt, n_pred)`` int64 confusion over many images and shards.

    Shards are accumulated separately and combined with ``merge`` or saved with
    ``to_arrays`` (a dict for ``np.savez`` / a Zarr group) and restored with
    ``from_arrays``.
    """

    def __init__(self, n_gt: int, n_pred: int, void: int = VOID):
        if n_gt < 1 or n_pred < 1:
            raise ValueError(f"n_gt and n_pred must be >= 1, got n_gt={n_gt}, n_pred={n_pred}")
        self.n_gt = int(n_gt)
        self.n_pred = int(n_pred)
        self.void = int(void)
        self.n_images = 0
        self._matrix = np.zeros((self.n_gt, self.n_pred), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """``(n_gt, n_pred)`` int64 counts so far (a copy)."""
        return self._matrix.copy()

    def add(self, gt: np.ndarray, pred: np.ndarray, image_id: str | None = None) -> np.ndarray:
        """Add one image: ``gt`` and ``pred`` as in ``confusion``; errors name ``image_id``.
        Returns the image's own ``(n_gt, n_pred)`` confusion."""
        try:
            c = confusion(gt, pred, self.n_gt, self.n_pred, self.void)
        except ValueError as e:
            where = f"image {image_id!r}: " if image_id is not None else ""
            raise ValueError(f"{where}{e}") from e
        self._matrix += c
        self.n_images += 1
        return c

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """Add ``other``'s counts into this accumulator in place; returns ``self``."""
        if (other.n_gt, other.n_pred, other.void) != (self.n_gt, self.n_pred, self.void):
            raise ValueError(
                f"cannot merge confusion of (n_gt, n_pred, void)="
                f"{(other.n_gt, other.n_pred, other.void)} into "
                f"{(self.n_gt, self.n_pred, self.void)}"
            )
        self._matrix += other._matrix
        self.n_images += other.n_images
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays ``confusion`` ``(n_gt, n_pred)`` int64, ``void`` and ``n_images`` (0-d int64)."""
        return {
            "confusion": self._matrix.copy(),
            "void": np.asarray(self.void, dtype=np.int64),
            "n_images": np.asarray(self.n_images, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays) -> ConfusionAccumulator:
        """Inverse of ``to_arrays``; accepts a dict or an ``np.load`` result."""
        for key in ("confusion", "void", "n_images"):
            if key not in arrays:
                raise ValueError(f"confusion arrays lack key {key!r}")
        m = np.asarray(arrays["confusion"])
        if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer) or (m < 0).any():
            raise ValueError(
                f"'confusion' must be a 2-D non-negative integer matrix, got shape {m.shape} "
                f"dtype {m.dtype}"
            )
        acc = cls(m.shape[0], m.shape[1], int(arrays["void"]))
        acc._matrix = m.astype(np.int64)
        acc.n_images = int(arrays["n_images"])
        return acc


def _check_conf(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] < 1 or conf.shape[1] < 1:
        raise ValueError(f"confusion matrix must be 2-D and non-empty, got shape {conf.shape}")
    if (conf < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return conf


def hungarian_match(conf: np.ndarray) -> np.ndarray:
    """One-to-one matching of predicted ids to gt classes maximising matched pixels.

    The objective is the total number of pixels on which matched prediction and gt agree
    (the trace of the remapped confusion), solved exactly by
    ``scipy.optimize.linear_sum_assignment(conf, maximize=True)``. This is the matching
    used by PiCIE and STEGO; it maximises pixel accuracy, not the IoU sum (the two usually
    agree, but not always).

    Every predicted id takes part, including the background id 0. With ``n_pred > n_gt``
    the surplus ids stay unmatched (-1); with ``n_pred < n_gt`` some gt classes receive no
    prediction and score IoU 0 if present.

    Args:
        conf: ``(n_gt, n_pred)`` non-negative counts.

    Returns:
        ``(n_pred,)`` int64 mapping predicted id -> gt class, or -1 if unmatched.
    """
    conf = _check_conf(conf)
    rows, cols = linear_sum_assignment(conf.astype(np.float64), maximize=True)
    mapping = np.full(conf.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def majority_match(conf: np.ndarray) -> np.ndarray:
    """Many-to-one matching: each predicted id -> the gt class it overlaps most.

    Several ids may map to the same class; this over-segmentation-friendly score is a
    diagnostic, not the headline number. Ties go to the lower gt class; a predicted id
    with no pixels at all is unmatched (-1).

    Args:
        conf: ``(n_gt, n_pred)`` non-negative counts.

    Returns:
        ``(n_pred,)`` int64 mapping predicted id -> gt class or -1.
    """
    conf = _check_conf(conf)
    mapping = conf.argmax(axis=0).astype(np.int64)
    mapping[conf.sum(axis=0) == 0] = -1
    return mapping


def scores(conf: np.ndarray, mapping: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU, mIoU and pixel accuracy after remapping predicted ids.

    Column ``p`` of ``conf`` is added to gt class ``mapping[p]``. Pixels of an unmatched
    prediction (``mapping[p] == -1``) stay in the denominator: they are false negatives
    of their gt class and count as wrong for pixel accuracy, but are a false positive for
    no class. IoU of class ``c`` is ``TP / (gt pixels + predicted pixels - TP)``; a class
    absent from both gt and (remapped) prediction has IoU NaN and is left out of the mean.

    Args:
        conf: ``(n_gt, n_pred)`` non-negative counts.
        mapping: ``(n_pred,)`` int, each in ``[-1, n_gt)``.
        class_names: ``n_gt`` names; default ``"class_<i>"``.

    Returns:
        dict with ``miou`` (float, NaN if no class is scorable), ``pixel_accuracy``,
        ``per_class_iou`` (list of n_gt floats, NaN = absent), ``class_names``,
        ``confusion`` (``(n_gt, n_gt)`` remapped counts as nested lists, rows = gt,
        columns = matched prediction), ``unmatched_pixels`` (per gt class, pixels that fell
        on unmatched predicted ids), ``mapping`` (list), ``n_pixels`` (int).
        Use ``json_ready`` before ``json.dump`` (NaN is not valid JSON).
    """
    conf = _check_conf(conf).astype(np.int64)
    n_gt, n_pred = conf.shape
    mapping = np.asarray(mapping)
    if mapping.shape != (n_pred,):
        raise ValueError(f"mapping has shape {mapping.shape}, expected ({n_pred},)")
    if mapping.size and (mapping.min() < -1 or mapping.max() >= n_gt):
        raise ValueError(f"mapping values must lie in [-1, {n_gt}), got {mapping.tolist()}")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(n_gt)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != n_gt:
        raise ValueError(f"{len(class_names)} class names for {n_gt} gt classes")

    matched = np.zeros((n_gt, n_gt), dtype=np.int64)
    is_matched = mapping >= 0
    # Columns mapped to the same class (majority matching) add up.
    np.add.at(matched.T, mapping[is_matched], conf.T[is_matched])
    unmatched = conf[:, ~is_matched].sum(axis=1)

    tp = np.diag(matched).astype(np.float64)
    gt_total = conf.sum(axis=1).astype(np.float64)
    pred_total = matched.sum(axis=0).astype(np.float64)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    n_pixels = int(conf.sum())
    scored = ~np.isnan(iou)
    return {
        "miou": float(iou[scored].mean()) if scored.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / n_pixels) if n_pixels else math.nan,
        "per_class_iou": [float(x) for x in iou],
        "class_names": class_names,
        "confusion": matched.tolist(),
        "unmatched_pixels": unmatched.tolist(),
        "mapping": [int(m) for m in mapping],
        "n_pixels": n_pixels,
    }


def json_ready(obj):
    """Copy of a ``scores`` result (or any nested dict/list) with NaN floats as ``None``."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


# ---------------------------------------------------------------- protocols
#
# Published unsupervised-segmentation scores differ in how clusters are matched to classes
# and at which resolution pixels are counted, so their numbers are not comparable. The
# evaluate stage computes each protocol from the same predictions in its one pass over the
# images (``ProtocolAccumulator``), and metrics.json lists them under ``protocols``.

FIXED_SIDE = 320
BACKGROUND = 0

# name -> how it matches, at which resolution, and which published methods score this way
PROTOCOLS: dict[str, dict[str, str]] = {
    "dataset_hungarian": {
        "matching": "one-to-one Hungarian over the whole dataset",
        "resolution": "original",
        "used_by": "DSM, MaskContrast, COMUS, lcseg (CAUSE too, at 320x320: fixed_320)",
    },
    "majority": {
        "matching": "many-to-one: each cluster to the class it overlaps most",
        "resolution": "original",
        "used_by": "DSM when clusters != classes",
    },
    "per_image_hungarian": {
        "matching": "Hungarian per image, unmatched clusters to background (oracle-like)",
        "resolution": "original",
        "used_by": "DiffCut and other training-free diffusion methods",
    },
    "fixed_320": {
        "matching": "one-to-one Hungarian over the whole dataset",
        "resolution": f"{FIXED_SIDE}x{FIXED_SIDE}, aspect not kept, nearest",
        "used_by": "CAUSE (Leopart scores 100x100 labels: not computed)",
    },
}


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels when ``n_in`` pixels are resized by
    nearest neighbour, sampling at pixel centres (PIL's ``NEAREST`` and torchvision's
    ``Resize(..., NEAREST)`` on images): ``floor((i + 0.5) * n_in / n_out)``, computed in
    integers so no boundary is off by rounding."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` label map -> ``(height, width)`` by nearest neighbour (``nearest_indices``
    on each axis; the aspect ratio is not kept). Labels stay labels: no value is blended."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {a.shape}")
    rows = nearest_indices(a.shape[0], height)
    cols = nearest_indices(a.shape[1], width)
    return a[rows[:, None], cols[None, :]]


def per_image_hungarian_match(conf: np.ndarray, background: int = BACKGROUND) -> np.ndarray:
    """The per-image matching: one image's confusion -> ``(n_pred,)`` mapping, every
    predicted id to a gt class (none unmatched).

    The gt classes present in the image (non-zero rows) and the predicted ids present
    (non-zero columns) are matched one-to-one maximising the matched pixels
    (``linear_sum_assignment``); a pair that shares no pixel is not a match. Every
    predicted id left unmatched, and every id absent from the image, is merged into
    ``background``.
    """
    conf = _check_conf(conf)
    mapping = np.full(conf.shape[1], background, dtype=np.int64)
    gt_ids = np.flatnonzero(conf.sum(axis=1))
    pred_ids = np.flatnonzero(conf.sum(axis=0))
    if gt_ids.size and pred_ids.size:
        sub = conf[np.ix_(gt_ids, pred_ids)].astype(np.float64)
        rows, cols = linear_sum_assignment(sub, maximize=True)
        overlap = sub[rows, cols] > 0
        mapping[pred_ids[cols[overlap]]] = gt_ids[rows[overlap]]
    return mapping


def remap_confusion(conf: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """``(n_gt, n_pred)`` counts -> ``(n_gt, n_gt)``: column ``p`` added to ``mapping[p]``
    (every value in ``[0, n_gt)``)."""
    conf = _check_conf(conf).astype(np.int64)
    mapping = np.asarray(mapping, dtype=np.int64)
    n_gt = conf.shape[0]
    if mapping.shape != (conf.shape[1],) or mapping.min() < 0 or mapping.max() >= n_gt:
        raise ValueError(f"mapping must send every predicted id into [0, {n_gt})")
    out = np.zeros((n_gt, n_gt), dtype=np.int64)
    np.add.at(out.T, mapping, conf.T)
    return out


class ProtocolAccumulator:
    """The confusions of every protocol of ``PROTOCOLS``, filled image by image.

    ``add`` counts one image once at its original resolution (the dataset-level
    protocols), adds that confusion remapped by the image's own Hungarian match
    (``per_image_hungarian``) and counts the image again with gt and prediction resized to
    ``fixed_side`` x ``fixed_side`` by nearest neighbour (``fixed_320``).
    """

    def __init__(self, n_gt: int, n_pred: int, void: int = VOID, fixed_side: int = FIXED_SIDE):
        self.original = ConfusionAccumulator(n_gt, n_pred, void)
        self.fixed = ConfusionAccumulator(n_gt, n_pred, void)
        self.fixed_side = int(fixed_side)
        self.per_image = np.zeros((n_gt, n_gt), dtype=np.int64)

    @property
    def n_images(self) -> int:
        return self.original.n_images

    def add(self, gt: np.ndarray, pred: np.ndarray, image_id: str | None = None) -> None:
        """Add one image (``gt``, ``pred`` as in ``confusion``; errors name ``image_id``)."""
        c = self.original.add(gt, pred, image_id)
        self.per_image += remap_confusion(c, per_image_hungarian_match(c))
        side = self.fixed_side
        self.fixed.add(resize_nearest(gt, side, side), resize_nearest(pred, side, side), image_id)

    def results(self, class_names: Sequence[str] | None = None) -> dict[str, dict]:
        """Protocol name -> ``scores`` result, in the order of ``PROTOCOLS``."""
        conf, fixed = self.original.matrix, self.fixed.matrix
        identity = np.arange(self.per_image.shape[0])
        return {
            "dataset_hungarian": scores(conf, hungarian_match(conf), class_names),
            "majority": scores(conf, majority_match(conf), class_names),
            "per_image_hungarian": scores(self.per_image, identity, class_names),
            "fixed_320": scores(fixed, hungarian_match(fixed), class_names),
        }


def protocol_metrics(results: dict[str, dict]) -> dict[str, dict]:
    """``ProtocolAccumulator.results`` -> metrics.json's ``protocols`` object: per protocol
    ``miou``, ``pixel_accuracy``, ``per_class_iou`` ({class name: IoU}, NaN = absent) and
    its ``matching``, ``resolution`` and ``used_by`` descriptions."""
    return {
        name: {
            "miou": r["miou"],
            "pixel_accuracy": r["pixel_accuracy"],
            "per_class_iou": dict(zip(r["class_names"], r["per_class_iou"], strict=True)),
            **PROTOCOLS[name],
        }
        for name, r in results.items()
    }


def plot_per_class_iou(result: dict, path: str | os.PathLike) -> None:
    """Horizontal bar chart of per-class IoU (absent classes marked) with the mIoU line.

    Args:
        result: a ``scores`` result (``None`` in place of NaN is accepted too).
        path: output PNG path.
    """
    names = result["class_names"]
    ious = [math.nan if v is None else float(v) for v in result["per_class_iou"]]
    n = len(names)
    fig = figure(7.0, max(2.5, 0.3 * n + 1.2))
    ax = fig.add_subplot()
    y = np.arange(n)
    vals = np.nan_to_num(np.asarray(ious, dtype=np.float64), nan=0.0)
    ax.barh(y, vals, color="tab:blue")
    for i, v in enumerate(ious):
        label = "absent" if math.isnan(v) else f"{100 * v:.1f}"
        ax.text(
            min(v, 1.0) + 0.01 if not math.isnan(v) else 0.01, i, label, va="center", fontsize=8
        )
    miou = result.get("miou")
    if miou is not None and not math.isnan(miou):
        ax.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {100 * miou:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    ax.set_title("Per-class IoU after matching")
    fig.savefig(os.fspath(path), format="png")


def plot_confusion(result: dict, path: str | os.PathLike) -> None:
    """Row-normalised matched confusion matrix (gt rows x matched prediction columns).

    Rows are divided by all pixels of the gt class, unmatched ones included, so a row
    sums to below 1 when pixels fell on unmatched predicted ids.

    Args:
        result: a ``scores`` result.
        path: output PNG path.
    """
    names = result["class_names"]
    m = np.asarray(result["confusion"], dtype=np.float64)
    rows = m.sum(axis=1) + np.asarray(result["unmatched_pixels"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows[:, None] > 0, m / rows[:, None], 0.0)
    n = len(names)
    side = max(4.0, 0.4 * n + 2.0)
    fig = figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of gt pixels")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("matched prediction")
    ax.set_ylabel("ground truth")
    if n <= 30:  # numbers become unreadable beyond that
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.01:
                    ax.text(
                        j,
                        i,
                        f"{100 * norm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_title("Confusion after matching (row %)")
    fig.savefig(os.fspath(path), format="png")


def run_evaluate(
    semantic: Sequence[str | Path],
    records: Sequence[ImageRecord],
    out_json: str | Path,
    iou_png: str | Path,
    confusion_png: str | Path,
    *,
    class_names: Sequence[str],
    n_classes: int,
    matching: str,
    facts: dict,
    log: Callable[[str], None] = print,
) -> dict:
    """Confusion over all labelled images, Hungarian (or majority) matching, metrics.json.

    Images without a ground-truth reference (``gt == ""``: VOC extra lists) are skipped,
    logged and counted as ``n_images_unlabelled``; a referenced ground-truth file that is
    missing or whose size differs from the image is an error naming the file.

    The top-level ``miou``, ``pixel_accuracy`` and ``per_class_iou`` follow ``matching``;
    ``protocols`` holds every protocol of ``PROTOCOLS`` (``protocol_metrics``), so
    ``protocols.dataset_hungarian`` (``matching: hungarian``) or ``protocols.majority``
    (``matching: majority``) repeats the top-level scores.
    """
    acc = ProtocolAccumulator(len(class_names), n_classes + 1)
    skipped = 0
    for path in semantic:
        st = open_store(path)
        for i, r in enumerate(records_in_order(st, records, path)):
            gt = load_ground_truth(r)
            if gt is None:
                skipped += 1  # extra unlabelled images join clustering, not scoring
                continue
            pred = pixel_map(st, "semantic", i)
            if gt.shape != pred.shape:
                raise ValueError(f"{r.gt}: ground truth {gt.shape} != prediction {pred.shape}")
            acc.add(gt, pred, image_id=r.image_id)
        log(f"evaluate: {acc.n_images} images scored, {skipped} unlabelled skipped after {path}")
    if acc.n_images == 0:
        raise ValueError("evaluate: no image has ground truth to score against")
    conf = acc.original.matrix
    mapping = hungarian_match(conf) if matching == "hungarian" else majority_match(conf)
    result = scores(conf, mapping, class_names)
    protocols = protocol_metrics(acc.results(class_names))
    plot_per_class_iou(result, iou_png)
    plot_confusion(result, confusion_png)
    metrics = {
        "miou": result["miou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "per_class_iou": dict(zip(result["class_names"], result["per_class_iou"], strict=True)),
        "matching": matching,
        "n_images_scored": acc.n_images,
        "n_images_unlabelled": skipped,
        **facts,
        "mapping": result["mapping"],
        "confusion": result["confusion"],
        "protocols": protocols,
    }
    log(f"evaluate: mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}")
    for name, p in protocols.items():
        log(
            f"evaluate: protocol {name}: mIoU {p['miou']:.4f}, pixel accuracy "
            f"{p['pixel_accuracy']:.4f}"
        )
    Path(out_json).write_text(json.dumps(json_ready(metrics), indent=2))
    return metrics


def chosen_n_classes(classes: str | Path) -> int:
    """The class count assign used, from ``classes.zarr``'s attrs (``n_classes``)."""
    n = open_store(classes).attrs.get("n_classes")
    if n is None:
        raise ValueError(
            f"{classes}: no n_classes in its attrs (written before labels.n_classes auto "
            "existed): rerun assign"
        )
    return int(n)


def run(job: Job) -> dict:
    """The rule ``evaluate`` (settings: ``evaluate.matching`` and ``labels.n_classes``).
    The run's facts come from ``job.config`` (its digest is recorded, not passed as a
    param, so an unrelated config change does not rerun the scoring), the backbone facts
    from the semantic stores' ``extraction`` attrs (carried on from the features store by
    objects and segment). With ``labels.n_classes: auto`` the count is the one assign
    chose, from ``classes.zarr``'s attrs (input ``classes``)."""
    extraction = open_store(job.input.semantic[0]).attrs.get("extraction") or {}
    settings = dict(job.settings)
    if is_auto(settings["n_classes"]):
        settings["n_classes"] = chosen_n_classes(job.input.classes)
    facts = {
        "run": job.config["run"],
        "dataset": job.config["dataset"]["name"],
        # images the index left out (dataset.on_bad_image: skip), listed in skipped.tsv
        "n_images_skipped": len(read_skipped(job.input.skipped)),
        "seed": int(job.wildcards.seed),
        "config_digest": settings_digest(job.config),
        **extraction_facts(extraction),
        "n_classes": settings["n_classes"],
    }
    return run_evaluate(
        job.input.semantic,
        read_index(job.input.index),
        job.output.metrics,
        job.output.iou,
        job.output.confusion,
        class_names=dataset_class_names(job.config["dataset"]),
        **settings,
        facts=facts,
        log=job.log,
    )
