"""The peers' protocols on scene datasets, where every pixel has a class and none is
background (COCO-Stuff-27, Cityscapes-27: ``Dataset.background`` False).

STEGO's and CAUSE's evaluations are the same code on these datasets as on any other, and
``protocols.ProtocolAccumulator`` already reproduces them: ``stego`` is STEGO's
``UnsupervisedMetrics`` (src/utils.py) after its ``get_transform(320, True, "center")``
(shorter side to 320, centre crop 320, nearest), which ``src/eval_segmentation.py`` runs
on ``cocostuff27`` and ``cityscapes``; ``cause_coco`` is CAUSE's ``NiceTool`` after
``get_cococity_transform``, which ``test_tr.py``/``test_mlp.py`` run on ``cocostuff27`` and
``cityscapes`` (``cause_protocol`` picks it for every dataset but VOC and the demo). Both
drop the pixels whose label or prediction lies outside ``[0, 27)``, so nothing of them
needs a background class.

DiffCut's does: on VOC, Pascal Context and COCO-Object its ``evaluate`` first merges the
clusters not matched to a foreground class into one background id and scores void as
background (``protocols.diffcut_image_counts``). On COCO-Stuff and Cityscapes it skips that
step: one Hungarian per image over all classes, void dropped (PaulCouairon/DiffCut,
``eval_diffcut.py`` ``Benchmark_Segmentation.evaluate``, the branch outside
``if self.dataset_name in ["VOC20", "Context", "COCO-Object"]``; ``tools/utils.py``
``hungarian_matching``, ``_fast_hist``). ``SceneProtocolAccumulator`` computes the
``diffcut`` protocol that way; every other protocol is ``ProtocolAccumulator``'s.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from lcseg_steps.evaluation.protocols import DIFFCUT_MASK, ProtocolAccumulator, resample
from lcseg_steps.evaluation.scoring import VOID


def diffcut_scene_counts(
    gt: np.ndarray, pred: np.ndarray, n_gt: int, void: int = VOID
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """DiffCut's per-image matching of one image of a dataset without background, at its
    scoring resolution.

    Args:
        gt: ``(h, w)`` classes ``[0, n_gt)`` or ``void`` (dropped, as DiffCut's ``-1``).
        pred: ``(h, w)`` non-negative predicted ids.

    Returns:
        ``tp``, ``fp``, ``fn``: ``(n_gt,)`` int64, and the number of scored pixels. The
        histogram has the classes as rows and ``max(n_gt, pred.max() + 1)`` columns;
        ``linear_sum_assignment(hist, maximize=True)`` matches every class to an id; FN is
        a class's pixels off its id, FP an id's pixels off its class (matched ids only).
    """
    label = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    width = max(n_gt, int(pred.max()) + 1)
    keep = (label != void) & (label >= 0) & (label < n_gt)
    counts = np.bincount(width * label[keep] + pred[keep], minlength=n_gt * width)
    hist = counts.reshape(n_gt, width)
    rows, cols = linear_sum_assignment(hist, maximize=True)
    tp = hist[rows, cols]
    fn = hist.sum(axis=1) - tp
    aligned = hist[:, cols]
    fp = aligned.sum(axis=0) - np.diag(aligned)
    return tp, fp, fn, int(hist.sum())


class SceneProtocolAccumulator(ProtocolAccumulator):
    """``ProtocolAccumulator`` for a dataset without a background class: the same
    protocols, with DiffCut's per-image matching for such datasets
    (``diffcut_scene_counts``) in place of its background step."""

    def add(self, gt: np.ndarray, pred: np.ndarray, image_id: str | None = None) -> np.ndarray:
        conf = self.original.add(gt, pred, image_id)
        for geometry, acc in self.resampled.items():
            acc.add(resample(gt, geometry), resample(pred, geometry), image_id)
        try:
            gt_d = resample(gt, ("diffcut", DIFFCUT_MASK))
            pred_d = resample(pred, ("diffcut", DIFFCUT_MASK))
        except ValueError as e:
            raise ValueError(f"image {image_id!r}: {e}") from e
        tp, fp, fn, n = diffcut_scene_counts(gt_d, pred_d, self.original.n_gt, self.void)
        self.diffcut += np.stack([tp, fp, fn])
        self.diffcut_pixels += n
        return conf


def protocol_accumulator(
    n_gt: int,
    n_pred: int,
    void: int = VOID,
    *,
    dataset: str = "demo",
    backbone: str | None = None,
    background: bool = True,
) -> ProtocolAccumulator:
    """The accumulator of a run: ``ProtocolAccumulator`` where class 0 is background,
    ``SceneProtocolAccumulator`` where it is not (``Dataset.background``)."""
    cls = ProtocolAccumulator if background else SceneProtocolAccumulator
    return cls(n_gt, n_pred, void, dataset=dataset, backbone=backbone)
