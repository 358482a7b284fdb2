"""Tests of lcseg_steps.evaluate against sklearn, brute force and direct pixel counting."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import replace
from fractions import Fraction

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix

from lcseg_steps.data.index import ImageRecord
from lcseg_steps.data.voc import write_label_png
from lcseg_steps.evaluate import (
    ConfusionAccumulator,
    ProtocolAccumulator,
    confusion,
    hungarian_match,
    json_ready,
    majority_match,
    per_image_hungarian_match,
    plot_confusion,
    plot_per_class_iou,
    protocol_metrics,
    resize_nearest,
    run_evaluate,
    scores,
)
from lcseg_steps.store import pixel_layout, write_store
from tests.hand_shard import _quiet


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


# ------------------------------------------------------------------- protocols
#
# Each protocol of ProtocolAccumulator against an independent computation from the pixel
# arrays: brute-force permutations, plain loops, a loop-computed nearest-neighbour resize.

N_GT = 4


def _protocol_images(seed, n_pred, n_images=5):
    """Blocky gt (classes 0..3, some 255) of varying sizes; predictions a noisy relabelling
    of it into ``n_pred`` ids, so best matches are unique but not perfect."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_images):
        h, w = int(rng.integers(15, 40)), int(rng.integers(15, 40))
        coarse = rng.integers(0, N_GT, size=(3, 4))
        gt = coarse[np.arange(h) * 3 // h][:, np.arange(w) * 4 // w].astype(np.uint8)
        relabel = rng.integers(0, n_pred, size=N_GT)
        pred = relabel[gt]
        noise = rng.random((h, w)) < 0.3
        pred[noise] = rng.integers(0, n_pred, size=int(noise.sum()))
        gt[rng.random((h, w)) < 0.1] = 255
        pairs.append((gt, pred))
    return pairs


def _accumulate(pairs, n_pred):
    acc = ProtocolAccumulator(N_GT, n_pred)
    for i, (g, p) in enumerate(pairs):
        acc.add(g, p, image_id=f"im{i}")
    return acc.results()


def _direct_scores(pairs, mappings):
    """Per-class IoU and pixel accuracy from the pixels, each image's predicted ids sent
    through its own mapping (-1 = unmatched), intersections and unions summed over images."""
    inter = np.zeros(N_GT)
    union = np.zeros(N_GT)
    right = total = 0
    for (gt, pred), mapping in zip(pairs, mappings, strict=True):
        keep = gt != 255
        g = gt[keep].astype(int)
        p = np.asarray(mapping)[pred[keep]]
        for c in range(N_GT):
            inter[c] += np.sum((g == c) & (p == c))
            union[c] += np.sum((g == c) | (p == c))
        right += int(np.sum(g == p))
        total += g.size
    iou = [inter[c] / union[c] if union[c] else math.nan for c in range(N_GT)]
    return iou, right / total


def _assert_protocol(result, iou, acc):
    np.testing.assert_allclose(result["per_class_iou"], iou, rtol=0, atol=1e-12, equal_nan=True)
    assert result["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)


def _pixel_confusion(pairs, n_pred):
    """Dataset confusion by a plain loop over pixels."""
    conf = np.zeros((N_GT, n_pred), dtype=np.int64)
    for gt, pred in pairs:
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
            if g != 255:
                conf[g, p] += 1
    return conf


def _brute_force_mapping(conf):
    """The unique injective map of predicted ids to gt classes with most matched pixels."""
    n_gt, n_pred = conf.shape
    best, argbest = -1, []
    if n_pred <= n_gt:
        candidates = itertools.permutations(range(n_gt), n_pred)
    else:
        candidates = (
            tuple(cols.index(p) if p in cols else -1 for p in range(n_pred))
            for cols in itertools.permutations(range(n_pred), n_gt)
        )
    for m in candidates:
        total = sum(conf[g, p] for p, g in enumerate(m) if g >= 0)
        if total > best:
            best, argbest = total, [m]
        elif total == best:
            argbest.append(m)
    assert len(argbest) == 1, "test data must have a unique best matching"
    return argbest[0]


@pytest.mark.parametrize("n_pred", [4, 3, 6])
def test_dataset_hungarian_protocol_equals_brute_force(n_pred):
    pairs = _protocol_images(10 + n_pred, n_pred)
    mapping = _brute_force_mapping(_pixel_confusion(pairs, n_pred))
    iou, acc = _direct_scores(pairs, [mapping] * len(pairs))
    _assert_protocol(_accumulate(pairs, n_pred)["dataset_hungarian"], iou, acc)


@pytest.mark.parametrize("n_pred", [4, 3, 7])
def test_majority_protocol_equals_plain_loop(n_pred):
    pairs = _protocol_images(20 + n_pred, n_pred)
    # an id never predicted stays unmatched
    pairs = [(g, np.where(p == n_pred - 1, 0, p)) for g, p in pairs]
    mapping = []
    for cluster in range(n_pred):
        counts = [0] * N_GT
        for gt, pred in pairs:
            for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
                if g != 255 and p == cluster:
                    counts[g] += 1
        best = -1
        for c in range(N_GT):  # strict > : ties go to the lower class
            if counts[c] > 0 and (best < 0 or counts[c] > counts[best]):
                best = c
        mapping.append(best)
    assert mapping[n_pred - 1] == -1
    if n_pred > N_GT:
        assert len(set(mapping) - {-1}) < n_pred - 1  # several clusters on one class
    iou, acc = _direct_scores(pairs, [mapping] * len(pairs))
    _assert_protocol(_accumulate(pairs, n_pred)["majority"], iou, acc)


def _brute_force_per_image(gt, pred):
    """Best one-to-one match of the classes and ids present in one image (brute force over
    permutations), pairs without overlap dropped, every other id to background 0."""
    keep = gt != 255
    g, p = gt[keep].astype(int), pred[keep].astype(int)
    classes, ids = sorted(set(g.tolist())), sorted(set(p.tolist()))
    overlap = {(c, k): int(np.sum((g == c) & (p == k))) for c in classes for k in ids}
    best, argbest = -1, set()
    n = min(len(classes), len(ids))
    for cs in itertools.permutations(classes, n):
        for ks in itertools.permutations(ids, n):
            total = sum(overlap[c, k] for c, k in zip(cs, ks, strict=True))
            pairs = frozenset((c, k) for c, k in zip(cs, ks, strict=True) if overlap[c, k])
            if total > best:
                best, argbest = total, {pairs}
            elif total == best:
                argbest.add(pairs)
    assert len(argbest) == 1, "test data must have a unique best matching per image"
    mapping = [0] * (int(pred.max()) + 1)
    for c, k in next(iter(argbest)):
        mapping[k] = c
    return mapping


@pytest.mark.parametrize("n_pred", [4, 3, 6])
def test_per_image_hungarian_protocol_equals_brute_force(n_pred):
    pairs = _protocol_images(30 + n_pred, n_pred, n_images=4)
    mappings = [_brute_force_per_image(g, p) for g, p in pairs]
    iou, acc = _direct_scores(pairs, mappings)
    result = _accumulate(pairs, n_pred)["per_image_hungarian"]
    _assert_protocol(result, iou, acc)
    # optimistic: never below the one dataset-level match
    assert result["miou"] >= _accumulate(pairs, n_pred)["dataset_hungarian"]["miou"]


def test_per_image_match_merges_unmatched_into_background():
    # class 1 is split over ids 1 and 5 (only 1 is matched), id 3 lies only where gt is
    # void, id 4 is not predicted; gt class 3 is absent from the image
    gt = np.array([[0, 0, 1, 1, 1, 1, 2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 0, 1, 1, 1, 5, 2, 2, 3, 3]])
    conf = confusion(gt, pred, 4, 6)
    np.testing.assert_array_equal(per_image_hungarian_match(conf), [0, 1, 2, 0, 0, 0])
    acc = ProtocolAccumulator(4, 6)
    acc.add(gt, pred)
    res = acc.results()["per_image_hungarian"]
    # id 5's pixel of class 1 counts as predicted background
    assert res["confusion"] == [[2, 0, 0, 0], [1, 3, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    assert res["per_class_iou"][:3] == [pytest.approx(2 / 3), 0.75, 1.0]
    assert math.isnan(res["per_class_iou"][3])
    # the assignment pairs id 1 with class 1, which it does not overlap: no match, so
    # id 1 goes to background rather than making a false positive of class 1
    c2 = confusion(np.array([[0, 0, 0, 0, 1]], np.uint8), np.array([[0, 0, 0, 1, 0]]), 2, 2)
    assert per_image_hungarian_match(c2).tolist() == [0, 0]
    # an image whose gt is all void adds nothing
    acc.add(np.full((2, 3), 255, np.uint8), np.zeros((2, 3), np.int64))
    assert acc.results()["per_image_hungarian"]["confusion"] == res["confusion"]


def _loop_nearest(a, side):
    """Nearest-neighbour resize to side x side by a loop over output pixels, sampling at
    pixel centres with exact fractions: source index floor((i + 1/2) * n_in / side)."""
    h, w = a.shape
    out = np.empty((side, side), a.dtype)
    for y in range(side):
        sy = math.floor((Fraction(y) + Fraction(1, 2)) * h / side)
        for x in range(side):
            out[y, x] = a[sy, math.floor((Fraction(x) + Fraction(1, 2)) * w / side)]
    return out


@pytest.mark.parametrize("shape", [(7, 13), (375, 500), (320, 320), (1, 641)])
def test_resize_nearest_matches_loop_and_pil(shape):
    rng = np.random.default_rng(shape[0])
    a = rng.integers(0, 256, size=shape).astype(np.uint8)
    got = resize_nearest(a, 320, 320)
    assert got.shape == (320, 320) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _loop_nearest(a, 320))
    pil = np.asarray(Image.fromarray(a).resize((320, 320), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(got, pil)
    assert set(np.unique(got)) <= set(np.unique(a))  # labels are not blended


def test_fixed_320_protocol_equals_loop_resize_and_brute_force():
    n_pred = 5
    pairs = _protocol_images(41, n_pred, n_images=3)
    resized = [(_loop_nearest(g, 320), _loop_nearest(p, 320)) for g, p in pairs]
    mapping = _brute_force_mapping(
        confusion(
            np.concatenate([g.ravel() for g, _ in resized]),
            np.concatenate([p.ravel() for _, p in resized]),
            N_GT,
            n_pred,
        )
    )
    iou, acc = _direct_scores(resized, [mapping] * len(resized))
    result = _accumulate(pairs, n_pred)["fixed_320"]
    _assert_protocol(result, iou, acc)
    assert result["miou"] != _accumulate(pairs, n_pred)["dataset_hungarian"]["miou"]


def test_protocol_metrics_shape():
    pairs = _protocol_images(50, 5)
    acc = ProtocolAccumulator(N_GT, 5)
    for g, p in pairs:
        acc.add(g, p)
    names = ["bg", "a", "b", "c"]
    out = protocol_metrics(acc.results(names))
    assert list(out) == ["dataset_hungarian", "majority", "per_image_hungarian", "fixed_320"]
    for entry in out.values():
        assert set(entry) == {
            "miou",
            "pixel_accuracy",
            "per_class_iou",
            "matching",
            "resolution",
            "used_by",
        }
        assert list(entry["per_class_iou"]) == names
        assert isinstance(entry["used_by"], str) and entry["used_by"]
    assert "DiffCut" in out["per_image_hungarian"]["used_by"]
    assert "CAUSE" in out["fixed_320"]["used_by"]
    assert json.loads(json.dumps(json_ready(out)))
    with pytest.raises(ValueError, match="im9.*prediction value 5"):
        acc.add(pairs[0][0], np.full(pairs[0][0].shape, 5), image_id="im9")


# ---------------------------------------------------------------------------------------
# run_evaluate: the stage's store-to-store function on hand-made semantic stores


CLASSES = ["background", "cat", "dog", "bird"]  # "bird" never occurs: IoU NaN -> null


N_CLASSES = 2  # predicted ids 0..2


@pytest.fixture
def eval_data(tmp_path):
    """Two semantic stores (2 + 1 labelled images, one unlabelled image) and records.

    Predictions are the gt under a fixed relabelling with 25% of pixels randomised, so the
    best matching is unique."""
    rng = np.random.default_rng(7)
    perm = np.array([2, 0, 1])  # gt class -> predicted id
    records, gts, preds, stores = [], {}, {}, []
    for s, ids in enumerate([["e0", "e1", "e2"], ["e3"]]):
        maps = []
        for image_id in ids:
            h, w = (20, 30) if s == 0 else (16, 24)
            gt = np.zeros((h, w), np.uint8)
            y, x = rng.integers(2, 8, 2)
            gt[y : y + 9, x : x + 12] = 1
            gt[y + 3 : y + 6, x + 14 : x + 17] = 2
            pred = perm[gt].astype(np.uint8)
            noise = rng.random((h, w)) < 0.25
            pred[noise] = rng.integers(0, N_CLASSES + 1, int(noise.sum()))
            gt[0, :] = 255
            maps.append(pred)
            gt_path = ""
            if image_id != "e2":  # e2 is an extra, unlabelled image
                gt_path = str(tmp_path / "gt" / f"{image_id}.png")
                write_label_png(gt_path, gt)
                gts[image_id], preds[image_id] = gt, pred
            records.append(ImageRecord(image_id, f"/img/{image_id}.jpg", gt_path, h, w, f"s{s}"))
        lay = pixel_layout(maps)
        stores.append(
            write_store(
                tmp_path / f"semantic_{s}.zarr",
                {
                    "semantic": lay["flat"],
                    "pixel_offsets": lay["pixel_offsets"],
                    "sizes": lay["sizes"],
                    "image_ids": np.array(ids),
                },
            )
        )
    return {"tmp": tmp_path, "records": records, "gts": gts, "preds": preds, "stores": stores}


def _evaluate(d, records=None, stores=None):
    tmp = d["tmp"]
    return run_evaluate(
        stores or d["stores"],
        records or d["records"],
        tmp / "metrics.json",
        tmp / "iou.png",
        tmp / "confusion.png",
        class_names=CLASSES,
        n_classes=N_CLASSES,
        matching="hungarian",
        facts={"backbone": "fake", "seed": 3},
        log=_quiet,
    )


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_evaluate_matches_brute_force_reference(eval_data):
    metrics = _evaluate(eval_data)
    gt = np.concatenate([g.ravel() for g in eval_data["gts"].values()])
    pred = np.concatenate([p.ravel() for p in eval_data["preds"].values()])
    keep = gt != 255
    gt, pred = gt[keep].astype(int), pred[keep].astype(int)
    n_gt, n_pred = len(CLASSES), N_CLASSES + 1
    conf = confusion_matrix(gt, pred, labels=range(n_gt))[:, :n_pred]

    # every injective map of predicted ids to gt classes; keep the most matched pixels
    maps = itertools.permutations(range(n_gt), n_pred)
    objective = {m: sum(conf[m[p], p] for p in range(n_pred)) for m in maps}
    best = max(objective.values())
    (mapping,) = [m for m, v in objective.items() if v == best]
    remapped = np.asarray(mapping)[pred]
    ious = []
    for c in range(n_gt):
        union = np.sum((gt == c) | (remapped == c))
        ious.append(np.sum((gt == c) & (remapped == c)) / union if union else math.nan)

    assert metrics["mapping"] == list(mapping)
    assert metrics["miou"] == pytest.approx(np.nanmean(ious), abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean(gt == remapped), abs=1e-12)
    for name, want in zip(CLASSES, ious, strict=True):
        got = metrics["per_class_iou"][name]
        assert math.isnan(got) if math.isnan(want) else got == pytest.approx(want, abs=1e-12)
    want_conf = confusion_matrix(gt, remapped, labels=range(n_gt))
    assert np.array_equal(np.asarray(metrics["confusion"]), want_conf)
    assert metrics["n_images_scored"] == 3
    assert metrics["n_images_unlabelled"] == 1
    assert metrics["backbone"] == "fake" and metrics["seed"] == 3

    tmp = eval_data["tmp"]
    saved = json.loads((tmp / "metrics.json").read_text(), parse_constant=_reject_constant)
    assert saved["per_class_iou"]["bird"] is None
    assert saved["miou"] == pytest.approx(metrics["miou"])
    assert saved["n_images_unlabelled"] == 1
    # every protocol is there; the dataset-level Hungarian one repeats the headline
    protocols = saved["protocols"]
    assert list(protocols) == ["dataset_hungarian", "majority", "per_image_hungarian", "fixed_320"]
    head = protocols["dataset_hungarian"]
    assert head["miou"] == saved["miou"] and head["pixel_accuracy"] == saved["pixel_accuracy"]
    assert head["per_class_iou"] == saved["per_class_iou"]
    for entry in protocols.values():
        assert entry["per_class_iou"]["bird"] is None and entry["used_by"]
        assert 0 <= entry["miou"] <= 1 and 0 <= entry["pixel_accuracy"] <= 1
    for png in ("iou.png", "confusion.png"):
        img = cv2.imread(str(tmp / png))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 50


def test_evaluate_missing_gt_png_names_the_file(eval_data):
    missing = eval_data["tmp"] / "gt" / "e3.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        _evaluate(eval_data)


def test_evaluate_without_any_ground_truth_refuses(eval_data):
    unlabelled = [replace(r, gt="") for r in eval_data["records"]]
    with pytest.raises(ValueError, match="no image has ground truth"):
        _evaluate(eval_data, records=unlabelled)


def test_chosen_n_classes_comes_from_the_classes_store(tmp_path):
    """labels.n_classes auto: evaluate counts the ids assign chose (classes.zarr's attrs)."""
    from lcseg_steps.evaluate import chosen_n_classes
    from lcseg_steps.store import write_store

    auto = write_store(
        tmp_path / "c.zarr", {"labels": np.zeros(2, dtype=np.int64)}, {"n_classes": 7}
    )
    assert chosen_n_classes(auto) == 7
    old = write_store(tmp_path / "old.zarr", {"labels": np.zeros(2, dtype=np.int64)}, {})
    with pytest.raises(ValueError, match="rerun assign"):
        chosen_n_classes(old)
