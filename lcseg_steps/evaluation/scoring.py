"""Scoring of label maps against ground truth: the pixel confusion of an image
(``confusion``) and of many (``ConfusionAccumulator``) and the IoU scores after a matching
(``scores``). The matchings of predicted ids to classes live in
``lcseg_steps.evaluation.matching``, the peers' protocols built on both in
``lcseg_steps.evaluation.protocols``.

Unsupervised segmentation predicts cluster ids, not class ids, so a prediction is scored
only after its ids have been matched to ground-truth classes. Matching is done over every
predicted id including the background id 0: the pipeline's background is a cluster like
any other and is not forced onto the gt background class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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


def check_confusion(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] < 1 or conf.shape[1] < 1:
        raise ValueError(f"confusion matrix must be 2-D and non-empty, got shape {conf.shape}")
    if (conf < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return conf


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
    conf = check_confusion(conf).astype(np.int64)
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
