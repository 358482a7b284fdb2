"""The store-to-store functions of the last stages (refine, objects, assign, segment,
evaluate, summary, report; each in its stage module) on a tiny on-disk shard with
hand-made masks and stores."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import cv2
import numpy as np
import pytest

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
