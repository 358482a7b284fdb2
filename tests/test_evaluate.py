"""Tests of lcseg_steps.evaluate against sklearn, brute force and direct pixel counting."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from lcseg_steps.evaluate import (
    ConfusionAccumulator,
    confusion,
    hungarian_match,
    json_ready,
    majority_match,
    plot_confusion,
    plot_per_class_iou,
    scores,
)


def _random_pair(rng, n_gt, n_pred, shape=(23, 31), void_frac=0.15):
    gt = rng.integers(0, n_gt, size=shape).astype(np.uint8)
    gt[rng.random(shape) < void_frac] = 255
    pred = rng.integers(0, n_pred, size=shape)
    return gt, pred


@pytest.mark.parametrize("n_gt,n_pred", [(5, 5), (4, 7), (6, 3)])
def test_confusion_matches_sklearn(n_gt, n_pred):
    rng = np.random.default_rng(1)
    gt, pred = _random_pair(rng, n_gt, n_pred)
    keep = gt != 255
    labels = list(range(max(n_gt, n_pred)))
    ref = confusion_matrix(gt[keep], pred[keep], labels=labels)[:n_gt, :n_pred]
    got = confusion(gt, pred, n_gt, n_pred)
    assert got.dtype == np.int64 and got.shape == (n_gt, n_pred)
    np.testing.assert_array_equal(got, ref)
    assert got.sum() == keep.sum()


def test_confusion_errors():
    gt = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4), np.int64)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        confusion(gt, np.zeros((4, 5), np.int64), 3, 3)
    bad = gt.copy()
    bad[1, 1] = 7
    with pytest.raises(ValueError, match="ground truth value 7"):
        confusion(bad, pred, 3, 3)
    bad_pred = pred.copy()
    bad_pred[2, 2] = 3
    with pytest.raises(ValueError, match="prediction value 3"):
        confusion(gt, bad_pred, 3, 3)
    bad_pred[2, 2] = -1
    with pytest.raises(ValueError, match="prediction value -1"):
        confusion(gt, bad_pred, 3, 3)
    with pytest.raises(ValueError, match="integer"):
        confusion(gt, pred.astype(np.float32), 3, 3)
    # An out-of-range prediction on a void pixel is ignored, like the pixel itself.
    gt_void = gt.copy()
    gt_void[0, 0] = 255
    p = pred.copy()
    p[0, 0] = 99
    assert confusion(gt_void, p, 3, 3).sum() == 15


def test_accumulator_equals_concatenation_and_roundtrips(tmp_path):
    rng = np.random.default_rng(2)
    pairs = [
        _random_pair(rng, 4, 6, shape=(rng.integers(5, 20), rng.integers(5, 20))) for _ in range(5)
    ]
    ref = confusion(
        np.concatenate([g.ravel() for g, _ in pairs]),
        np.concatenate([p.ravel() for _, p in pairs]),
        4,
        6,
    )
    shard_a, shard_b = ConfusionAccumulator(4, 6), ConfusionAccumulator(4, 6)
    for i, (g, p) in enumerate(pairs):
        (shard_a if i < 2 else shard_b).add(g, p, image_id=f"img{i}")
    np.savez(tmp_path / "b.npz", **shard_b.to_arrays())
    with np.load(tmp_path / "b.npz") as z:
        restored = ConfusionAccumulator.from_arrays(z)
    np.testing.assert_array_equal(restored.matrix, shard_b.matrix)
    total = shard_a.merge(restored)
    np.testing.assert_array_equal(total.matrix, ref)
    assert total.n_images == 5


def test_accumulator_errors_name_image():
    acc = ConfusionAccumulator(3, 3)
    gt = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="2008_000123.*prediction value 5"):
        acc.add(gt, np.full((2, 2), 5), image_id="2008_000123")
    with pytest.raises(ValueError, match="cannot merge"):
        acc.merge(ConfusionAccumulator(3, 4))


def _brute_force_best(conf):
    """Best total agreement over all injective maps between predicted ids and gt classes."""
    n_gt, n_pred = conf.shape
    best = -1
    if n_pred <= n_gt:
        for rows in itertools.permutations(range(n_gt), n_pred):
            best = max(best, sum(conf[r, c] for c, r in enumerate(rows)))
    else:
        for cols in itertools.permutations(range(n_pred), n_gt):
            best = max(best, sum(conf[r, c] for r, c in enumerate(cols)))
    return best


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_hungarian_equals_brute_force(shape):
    rng = np.random.default_rng(3)
    for _ in range(20):
        conf = rng.integers(0, 100, size=shape)
        mapping = hungarian_match(conf)
        assert mapping.shape == (shape[1],) and mapping.dtype == np.int64
        matched = mapping[mapping >= 0]
        assert len(set(matched.tolist())) == len(matched)  # one-to-one
        assert len(matched) == min(shape)
        total = sum(conf[mapping[c], c] for c in range(shape[1]) if mapping[c] >= 0)
        assert total == _brute_force_best(conf)


def test_majority_match_known_case():
    conf = np.array(
        [
            [10, 0, 5, 0],
            [2, 8, 9, 0],
            [0, 1, 1, 0],
        ]
    )
    np.testing.assert_array_equal(majority_match(conf), [0, 1, 1, -1])


def _direct_iou(gt, pred, mapping, n_gt, void=255):
    """Per-class IoU straight from pixel arrays; unmatched predictions become label -1."""
    keep = gt != void
    g = gt[keep].astype(np.int64)
    p = np.asarray(mapping)[pred[keep]]
    out = []
    for c in range(n_gt):
        inter = np.logical_and(g == c, p == c).sum()
        union = np.logical_or(g == c, p == c).sum()
        out.append(inter / union if union else math.nan)
    return out, float((g == p).mean())


@pytest.mark.parametrize(
    "n_gt,n_pred,matcher", [(5, 5, "h"), (4, 7, "h"), (6, 3, "h"), (4, 7, "m")]
)
def test_scores_match_direct_iou(n_gt, n_pred, matcher):
    rng = np.random.default_rng(4)
    gt, pred = _random_pair(rng, n_gt, n_pred, shape=(40, 50))
    gt[gt == 1] = 255  # class 1 absent from gt
    conf = confusion(gt, pred, n_gt, n_pred)
    mapping = hungarian_match(conf) if matcher == "h" else majority_match(conf)
    res = scores(conf, mapping)
    ref_iou, ref_acc = _direct_iou(gt, pred, mapping, n_gt)
    np.testing.assert_allclose(res["per_class_iou"], ref_iou, equal_nan=True)
    assert res["miou"] == pytest.approx(np.nanmean(ref_iou))
    assert res["pixel_accuracy"] == pytest.approx(ref_acc)
    assert res["n_pixels"] == int((gt != 255).sum())
    m = np.asarray(res["confusion"])
    assert m.shape == (n_gt, n_gt)
    assert m.sum() + sum(res["unmatched_pixels"]) == res["n_pixels"]


def test_absent_class_is_nan_and_excluded():
    gt = np.array([[0, 0, 2, 2]], np.uint8)
    pred = np.array([[0, 0, 2, 2]])
    res = scores(confusion(gt, pred, 3, 3), np.array([0, 1, 2]))
    assert math.isnan(res["per_class_iou"][1])
    assert res["miou"] == 1.0
    # Predicting a class absent from gt makes it a scored 0, not NaN.
    res = scores(confusion(gt, np.array([[0, 1, 2, 2]]), 3, 3), np.array([0, 1, 2]))
    assert res["per_class_iou"][1] == 0.0
    assert json.loads(json.dumps(json_ready(scores(confusion(gt, pred, 3, 3), [0, 1, 2]))))


def test_perfect_prediction_under_permutation():
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 6, size=(30, 30)).astype(np.uint8)
    gt[:3] = 255
    perm = rng.permutation(6)
    pred = perm[np.where(gt == 255, 0, gt)]
    res = scores(confusion(gt, pred, 6, 6), hungarian_match(confusion(gt, pred, 6, 6)))
    assert res["miou"] == 1.0 and res["pixel_accuracy"] == 1.0
    np.testing.assert_array_equal(np.asarray(res["mapping"])[perm], np.arange(6))


def test_unmatched_predictions_are_false_negatives():
    # gt class 0 split between predicted ids 0 and 2; only 0 can be matched one-to-one.
    gt = np.array([[0, 0, 0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 0, 0, 2, 1, 1]])
    conf = confusion(gt, pred, 2, 3)
    res = scores(conf, hungarian_match(conf))
    assert res["mapping"] == [0, 1, -1]
    assert res["per_class_iou"] == [pytest.approx(0.75), 1.0]
    assert res["pixel_accuracy"] == pytest.approx(5 / 6)
    assert res["unmatched_pixels"] == [1, 0]


def test_scores_input_errors():
    conf = np.ones((3, 4), np.int64)
    with pytest.raises(ValueError, match="shape"):
        scores(conf, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="mapping values"):
        scores(conf, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="class names"):
        scores(conf, np.array([0, 1, 2, -1]), class_names=["a", "b"])


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(6)
    gt, pred = _random_pair(rng, 21, 21, shape=(60, 60))
    gt[gt == 3] = 255
    conf = confusion(gt, pred, 21, 21)
    names = [f"name_{i}" for i in range(21)]
    res = scores(conf, hungarian_match(conf), class_names=names)
    for fn, name in ((plot_per_class_iou, "iou.png"), (plot_confusion, "conf.png")):
        fn(res, tmp_path / name)
        data = (tmp_path / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    # A JSON round trip (NaN -> None) must still plot.
    plot_per_class_iou(json.loads(json.dumps(json_ready(res))), tmp_path / "iou2.png")
    assert (tmp_path / "iou2.png").stat().st_size > 1000
