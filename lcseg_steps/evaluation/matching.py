"""The matchings of predicted ids to ground-truth classes, the one home of every rule that
turns a ``(n_gt, n_pred)`` confusion into a mapping predicted id -> class.

lcseg's own (``hungarian_match``: one-to-one, most matched pixels; ``majority_match``:
many-to-one by pixels) and the peers' (``iou_hungarian_match`` and ``iou_majority_match``:
DSM's, by IoU; ``pixel_hungarian_rows``: CAUSE's and STEGO's, solved on the ``(pred, gt)``
histogram). ``lcseg_steps.evaluation.scoring`` scores a mapping;
``lcseg_steps.evaluation.protocols`` chooses one per peer.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from lcseg_steps.evaluation.scoring import check_confusion


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
    conf = check_confusion(conf)
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
    conf = check_confusion(conf)
    mapping = conf.argmax(axis=0).astype(np.int64)
    mapping[conf.sum(axis=0) == 0] = -1
    return mapping


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """``(n_gt, n_pred)`` counts -> ``(n_pred, n_gt)`` float64 IoU of predicted id ``k``
    and class ``g`` (0 where both are empty), rows by predicted id as DSM builds it."""
    conf = check_confusion(conf).astype(np.int64)
    inter = conf.T.astype(np.float64)
    union = conf.sum(axis=0)[:, None] + conf.sum(axis=1)[None, :] - conf.T
    return inter / np.maximum(union.astype(np.float64), 1e-8)


def iou_hungarian_match(conf: np.ndarray) -> np.ndarray:
    """DSM's one-to-one matching: square ``(n, n)`` counts -> ``(n,)`` mapping predicted
    id -> class minimising ``N - IoU`` (N = scored pixels), i.e. maximising the IoU sum."""
    conf = check_confusion(conf)
    if conf.shape[0] != conf.shape[1]:
        raise ValueError(f"DSM's Hungarian needs as many ids as classes, got {conf.shape}")
    cost = conf.sum() - iou_matrix(conf)
    rows, cols = linear_sum_assignment(cost)
    mapping = np.zeros(conf.shape[1], dtype=np.int64)
    mapping[rows] = cols
    return mapping


def iou_majority_match(conf: np.ndarray) -> np.ndarray:
    """DSM's majority vote: each predicted id -> the class of highest IoU with it (ties to
    the lower class), ``(n_gt, n_pred)`` -> ``(n_pred,)``."""
    return iou_matrix(conf).argmax(axis=1).astype(np.int64)


def pixel_hungarian_rows(conf: np.ndarray) -> np.ndarray:
    """CAUSE's and STEGO's matching: square ``(n, n)`` counts -> ``(n,)`` mapping
    predicted id -> class maximising matched pixels, solved on the ``(pred, gt)``
    histogram as they build it."""
    conf = check_confusion(conf)
    rows, cols = linear_sum_assignment(conf.T, maximize=True)
    mapping = np.zeros(conf.shape[1], dtype=np.int64)
    mapping[rows] = cols
    return mapping
