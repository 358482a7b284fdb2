"""Tests of lcseg_steps.stages.evaluate against sklearn, brute force and direct pixel counting."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import replace

import cv2
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.data.palette import write_label_png
from lcseg_steps.evaluation.matching import hungarian_match, majority_match
from lcseg_steps.evaluation.protocols import PROTOCOLS
from lcseg_steps.evaluation.scoring import ConfusionAccumulator, confusion, json_ready, scores
from lcseg_steps.stages.evaluate import plot_confusion, plot_per_class_iou, run_evaluate
from lcseg_steps.stores.layout import pixel_layout, write_store
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
        facts={"backbone": "fake", "seed": 3, "dataset": "demo"},
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
    # the demo facts' CAUSE variant is cause_voc
    assert list(protocols) == [p for p in PROTOCOLS if p != "cause_coco"]
    assert saved["headline_protocol"] == "dataset_hungarian"
    head = protocols["dataset_hungarian"]
    assert head["miou"] == saved["miou"] and head["pixel_accuracy"] == saved["pixel_accuracy"]
    assert head["per_class_iou"] == saved["per_class_iou"]
    for name, entry in protocols.items():
        # DSM averages over all classes: an absent class scores 0, the others leave it out
        bird = 0.0 if name.startswith("dsm") else None
        assert entry["per_class_iou"]["bird"] == bird and entry["reproduces"]
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


def test_evaluate_per_image_miou_uses_the_headline_mapping(eval_data):
    metrics = _evaluate(eval_data)
    mapping = np.asarray(metrics["mapping"])
    assert set(metrics["per_image_miou"]) == set(eval_data["gts"])  # labelled images only
    for image_id, gt in eval_data["gts"].items():
        keep = gt != 255
        g, p = gt[keep].astype(int), mapping[eval_data["preds"][image_id][keep]]
        ious = []
        for c in range(len(CLASSES)):  # a plain loop over the classes of this image alone
            union = np.sum((g == c) | (p == c))
            if union:
                ious.append(np.sum((g == c) & (p == c)) / union)
        assert metrics["per_image_miou"][image_id] == pytest.approx(np.mean(ious), abs=1e-12)


def test_chosen_n_classes_comes_from_the_classes_store(tmp_path):
    """labels.n_classes auto: evaluate counts the ids assign chose (classes.zarr's attrs)."""
    from lcseg_steps.stages.evaluate import chosen_n_classes
    from lcseg_steps.stores.layout import write_store

    auto = write_store(
        tmp_path / "c.zarr", {"labels": np.zeros(2, dtype=np.int64)}, {"n_classes": 7}
    )
    assert chosen_n_classes(auto) == 7
    old = write_store(tmp_path / "old.zarr", {"labels": np.zeros(2, dtype=np.int64)}, {})
    with pytest.raises(ValueError, match="rerun assign"):
        chosen_n_classes(old)
