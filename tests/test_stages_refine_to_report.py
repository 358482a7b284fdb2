"""The store-to-store functions of the last stages (refine, objects, assign, segment,
evaluate, summary, report; each in its stage module) on a tiny on-disk shard with
hand-made masks and stores."""

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

from lcseg_steps.data.index import ImageRecord
from lcseg_steps.data.voc import write_label_png
from lcseg_steps.evaluate import run_evaluate
from lcseg_steps.report import run_report
from lcseg_steps.segment import run_segment
from lcseg_steps.store import open_store, pixel_layout, pixel_map, write_store
from lcseg_steps.summary import summarize_seeds
from tests.hand_shard import (
    ATTRS,
    SHARD,
    SIZES,
    _classes_store,
    _quiet,
    _refine,
)

# ---------------------------------------------------------------------------------------
# pixel_layout / pixel_map


def test_pixel_layout_round_trips_through_a_store(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 3, s).astype(np.uint8) for s in [(3, 5), (4, 2), (1, 7)]]
    lay = pixel_layout(maps)
    assert lay["pixel_offsets"].tolist() == [0, 15, 23, 30]
    assert lay["sizes"].tolist() == [[3, 5], [4, 2], [1, 7]]
    st = open_store(write_store(tmp_path / "p.zarr", {"m": lay["flat"], **lay}))
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(pixel_map(st, "m", i), m)


# ---------------------------------------------------------------------------------------
# evaluate

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


# ---------------------------------------------------------------------------------------
# summary

RUNS = [
    {"miou": 0.41, "pixel_accuracy": 0.80},
    {"miou": None, "pixel_accuracy": 0.70},  # e.g. no class scorable in that seed
    {"miou": 0.55, "pixel_accuracy": 0.90},
]


def _metrics_files(tmp_path):
    paths = []
    for n, run in enumerate(RUNS):
        p = tmp_path / f"metrics_{n}.json"
        p.write_text(json.dumps(run))
        paths.append(p)
    return paths


def test_summarize_seeds_mean_and_population_std(tmp_path):
    out = summarize_seeds(_metrics_files(tmp_path), [0, 1, 2])
    assert out["seeds"] == [0, 1, 2]
    assert out["miou"]["mean"] == pytest.approx(np.mean([0.41, 0.55]))
    assert out["miou"]["std"] == pytest.approx(np.std([0.41, 0.55]))
    assert out["miou"]["per_seed"][0] == 0.41 and out["miou"]["per_seed"][2] == 0.55
    assert out["pixel_accuracy"]["mean"] == pytest.approx(np.mean([0.8, 0.7, 0.9]))
    assert out["pixel_accuracy"]["std"] == pytest.approx(np.std([0.8, 0.7, 0.9]))
    assert out["pixel_accuracy"]["per_seed"] == [0.8, 0.7, 0.9]


def test_summarize_seeds_output_is_strict_json(tmp_path):
    out = summarize_seeds(_metrics_files(tmp_path), [0, 1, 2])
    json.dumps(out, allow_nan=False)
    assert out["miou"]["per_seed"][1] is None


# ---------------------------------------------------------------------------------------
# report


def _pixel_and_semantic(shard, objects_store, tmp_path):
    """The shard's refined pixel masks and its segmentation, as the report reads them."""
    pixel = _refine(shard, tmp_path / "px.zarr", list(shard["records"].values()))
    semantic = run_segment(
        objects_store,
        _classes_store(tmp_path / "classes.zarr"),
        SHARD,
        tmp_path / "sem.zarr",
        tmp_path / "pred",
        attrs=ATTRS,
        log=_quiet,
    )
    return pixel, semantic


@pytest.mark.parametrize(("n_gallery", "unlabel_a2", "n_img"), [(2, False, 16), (10, True, 22)])
def test_report_is_self_contained_with_gallery(
    shard, objects_store, tmp_path, n_gallery, unlabel_a2, n_img
):
    pixel, semantic = _pixel_and_semantic(shard, objects_store, tmp_path)
    plots = []
    for name in ("iou", "confusion"):
        p = tmp_path / f"{name}.png"
        assert cv2.imwrite(str(p), np.full((30, 40, 3), 128, np.uint8))
        plots.append((name, p))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"miou": 0.5, "pixel_accuracy": 0.75, "backbone": "fake"}))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(summarize_seeds([metrics], [0])))
    records = list(shard["records"].values())
    if unlabel_a2:
        records[2] = replace(records[2], gt="")
    out = run_report(
        tmp_path / "report" / "index.html",
        title="test run",
        metrics_json=metrics,
        summary_json=summary,
        plots=plots,
        records=records,
        patch_masks=[shard["patch_masks"]],
        pixel_masks=[pixel],
        semantic=[semantic],
        n_gallery=n_gallery,
        log=_quiet,
    )
    page = out.read_text()
    srcs = re.findall(r'<img src="([^"]*)"', page)
    # 2 plots + per image: image, gt, level: image, merged, score, refined, prediction
    # (6 panels for an image without gt)
    assert len(srcs) == page.count("<img") == n_img
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    shown = re.findall(r"<h3>([^<]*)</h3>", page)
    assert shown == list(SIZES)[: min(n_gallery, 3)]
    assert "mIoU over seeds [0]: 50.0" in page


def test_report_gallery_legends_and_matched_palette(shard, objects_store, tmp_path):
    pixel, semantic = _pixel_and_semantic(shard, objects_store, tmp_path)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "miou": 0.5,
                "pixel_accuracy": 0.75,
                "per_class_iou": {"background": 0.9, "cat": 0.4, "dog": 0.2},
                "matching": "hungarian",
                # cluster id -> class id: 0 -> background, 1 -> dog, 2 unmatched, 3 -> cat
                "mapping": [0, 2, -1, 1],
            }
        )
    )
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(summarize_seeds([metrics], [0])))
    kw = dict(
        title="test run",
        plots=[],
        records=list(shard["records"].values()),
        patch_masks=[shard["patch_masks"]],
        pixel_masks=[pixel],
        semantic=[semantic],
        n_gallery=3,
        log=_quiet,
    )
    page = run_report(
        tmp_path / "scored.html", metrics_json=metrics, summary_json=summary, **kw
    ).read_text()
    figs = re.findall(r"<figure>(.*?)</figure>", page)
    captions = [re.search(r"<figcaption>(.*?)</figcaption>", f).group(1) for f in figs]
    # per image: image, gt, level: image, merged, score, refined, clusters, matched
    assert captions.count("prediction matched to classes (hungarian)") == 3
    assert len(figs) == page.count("<img") == 3 * 8
    for caption, fig in zip(captions, figs, strict=True):
        legend = re.findall(r"<li>(?:<span[^>]*></span>)?(.*?)</li>", fig)
        if caption == "image":
            assert legend == []
        else:
            assert legend, f"{caption} has no legend"
        if caption == "ground truth":
            # a0/a2: class 1, a1: class 2, a void top row everywhere
            assert legend[-1] == "void (unlabelled)"
            assert set(legend[:-1]) <= {"cat", "dog"}
        if caption.startswith("level") or caption == "merged":
            assert legend == ["foreground", "background (dimmed)"]
        if caption == "prediction (cluster ids)":
            assert all(re.fullmatch(r"cluster [1-3]|background only: .*", x) for x in legend)
        if caption.startswith("prediction matched"):
            assert set(legend) <= {
                "cat (cluster 3)",
                "dog (cluster 1)",
                "unmatched cluster",
                "background only: nothing drawn",
            }
    assert "cat (cluster 3)" in page or "dog (cluster 1)" in page
    # without ground truth: raw cluster ids only
    bare = run_report(tmp_path / "bare.html", metrics_json=None, summary_json=None, **kw)
    bare = bare.read_text()
    assert "prediction (cluster ids)" in bare and "matched to classes" not in bare
