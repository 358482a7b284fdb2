"""Scene mode (``labels.scope: scene``): every patch gets one of ``C`` classes, no
background. The dataset level's centroids are the classes; the image level's segments
make each image's patches agree with the majority class of their segment.

Arrays follow the ragged layout of the feature stores (``lcseg_steps.stores.layout``):
per-patch rows of all images of a shard, ``offsets`` ``(images + 1,)``. The algorithm
(docs/method.md, scene mode) is ours; the paper's method labels objects only:

1. dataset level: cosine k-means of every patch of the dataset into ``C`` clusters (the
   stage ``scene_dataset``, streamed); a patch's class probabilities are the softmax of
   its cosines to the ``C`` centroids over ``temperature`` (:func:`class_probabilities`);
2. image level: cosine k-means of each image's patches into ``k_image`` segments;
3. consistency: each segment's class shares are the fractions of its patches whose
   nearest centroid is each class (:func:`segment_shares`; its argmax is the segment's
   majority class, :func:`segment_majority`), and a patch's class score is
   ``(1 - segment_weight) * probabilities + segment_weight * shares of its segment``
   (:func:`scene_scores`). ``segment_weight`` 0 leaves the dataset level alone (the
   k-means baseline; the image level is then not computed), 1 gives each segment its
   majority class.

The scores then go to a multi-label dense CRF at the pixel level
(``lcseg_steps.perimage.scene_crf``).
"""

from __future__ import annotations

import numpy as np

from lcseg_steps.clustering.kmeans import l2_normalize, nearest_centroid
from lcseg_steps.clustering.levels import per_image_kmeans

MAX_CLASSES = 255  # predictions are 8-bit label maps, ids 0..C-1


def check_n_classes(n_classes) -> int:
    """``labels.n_classes`` in scene mode: an integer in ``2..MAX_CLASSES``."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer):
        raise ValueError(
            f"labels.scope scene needs an integer labels.n_classes (auto is for object "
            f"classes), got {n_classes!r}"
        )
    if not 2 <= int(n_classes) <= MAX_CLASSES:
        raise ValueError(
            f"labels.scope scene: labels.n_classes must be in 2..{MAX_CLASSES}, got {n_classes}"
        )
    return int(n_classes)


def class_probabilities(X: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """``X`` ``(N, D)`` patch features, ``centroids`` ``(C, D)`` -> ``(N, C)`` float32:
    the softmax over classes of ``cos(x, c) / temperature``. A zero row (norm ~0) gets
    uniform probabilities. Its argmax is the nearest centroid by cosine."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    Xn = np.asarray(l2_normalize(np.asarray(X, dtype=np.float32)), dtype=np.float32)
    C = np.asarray(l2_normalize(np.asarray(centroids, dtype=np.float32)), dtype=np.float32)
    logits = (Xn @ C.T) / np.float32(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32, copy=False)


def dataset_labels(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(N,)`` int16: each row's nearest centroid by cosine (``kmeans.nearest_centroid``,
    ties to the lowest class)."""
    C = l2_normalize(np.asarray(centroids, dtype=np.float32))
    return np.asarray(nearest_centroid(l2_normalize(X), C)).astype(np.int16)


def segment_shares(labels: np.ndarray, segments: np.ndarray, n_classes: int) -> np.ndarray:
    """``labels`` ``(N,)`` class of each patch, ``segments`` ``(N,)`` global segment id of
    each patch (any non-negative integers) -> ``(N,)`` rows of ``(n_classes,)`` float32:
    for each patch, the fraction of its segment's patches in each class."""
    labels = np.asarray(labels, dtype=np.int64)
    segments = np.asarray(segments, dtype=np.int64)
    if labels.shape != segments.shape:
        raise ValueError(f"labels {labels.shape} and segments {segments.shape} differ")
    if len(labels) == 0:
        return np.zeros((0, n_classes), dtype=np.float32)
    seg_ids, inverse = np.unique(segments, return_inverse=True)
    counts = np.zeros((len(seg_ids), n_classes), dtype=np.float64)
    np.add.at(counts, (inverse, labels), 1.0)
    shares = counts / counts.sum(axis=1, keepdims=True)
    return shares[inverse].astype(np.float32)


def segment_majority(labels: np.ndarray, segments: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N,)`` int16: the majority class of each patch's segment (ties to the lowest
    class), the argmax of :func:`segment_shares`."""
    return np.argmax(segment_shares(labels, segments, n_classes), axis=1).astype(np.int16)


def scene_scores(
    probabilities: np.ndarray, shares: np.ndarray, segment_weight: float
) -> np.ndarray:
    """``(N, C)`` patch probabilities and ``(N, C)`` segment shares -> ``(N, C)`` float32
    ``(1 - w) * probabilities + w * shares``; each row sums to 1 when both do."""
    if not 0.0 <= segment_weight <= 1.0:
        raise ValueError(f"segment_weight must be in [0, 1], got {segment_weight}")
    w = np.float32(segment_weight)
    return ((1 - w) * probabilities + w * shares).astype(np.float32, copy=False)


def scene_levels(
    X: np.ndarray,
    offsets: np.ndarray,
    centroids: np.ndarray,
    *,
    k_image: int,
    segment_weight: float,
    temperature: float,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    threads: int = 1,
    alone: bool = False,
) -> dict[str, np.ndarray]:
    """One shard's scene levels.

    ``X`` ``(N, D)`` patch features, ``offsets`` ``(n + 1,)``, ``centroids`` ``(C, D)``
    the dataset level's. Returns ``dataset_label`` ``(N,)`` int16 (nearest centroid),
    ``segment`` ``(N,)`` int16 (the image-level k-means cluster within its image; all 0
    with ``segment_weight`` 0, when the image level is not computed, and in an image of
    fewer than ``k_image`` patches), ``segment_class`` ``(N,)`` int16 (the majority class
    of the patch's segment), ``scores`` ``(N, C)`` float32 (:func:`scene_scores`) and
    ``label`` ``(N,)`` int16 (their argmax, ties to the lowest class). ``alone``: each
    image's k-means start as if it were clustered alone (``levels.per_image_kmeans``; a
    scene model's ``segment`` and ``snakemake apply``).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    C = int(np.asarray(centroids).shape[0])
    labels = dataset_labels(X, centroids)
    probs = class_probabilities(X, centroids, temperature)
    if segment_weight > 0:
        segment, _ = per_image_kmeans(
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
    else:
        segment = np.zeros(len(labels), dtype=np.int16)
    image = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    global_segment = image.astype(np.int64) * max(int(k_image), 1) + segment
    shares = segment_shares(labels, global_segment, C)
    scores = scene_scores(probs, shares, segment_weight)
    return {
        "dataset_label": labels,
        "segment": segment.astype(np.int16),
        "segment_class": np.argmax(shares, axis=1).astype(np.int16) if len(labels) else labels,
        "scores": scores,
        "label": np.argmax(scores, axis=1).astype(np.int16) if len(labels) else labels,
    }
