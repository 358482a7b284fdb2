import json
import re
from dataclasses import replace

import cv2
import numpy as np
import pytest

from lcseg_steps.figures.page import build_report
from lcseg_steps.stages.report import job_analysis, run_report
from lcseg_steps.stages.segment import run_segment
from lcseg_steps.stages.summary import summarize_seeds
from tests.hand_shard import ATTRS, SHARD, SIZES, _classes_store, _quiet, _refine
from tests.report_pages import ANALYSIS_CSV
from tests.report_pages import decode_png as _decode
from tests.report_pages import parse_html as _parse


class _Named(dict):
    """The slice of Snakemake's named lists a stage uses: ``.get`` and ``.keys``."""


def test_job_analysis_reads_the_job_inputs(tmp_path, plot_png):
    from types import SimpleNamespace

    table = tmp_path / "table.csv"
    table.write_text(ANALYSIS_CSV, encoding="utf-8")
    job = SimpleNamespace(
        input=_Named(analysis_table=str(table), analysis_plots=[str(plot_png)]),
        params=_Named(analysis_note="a note"),
    )
    got = job_analysis(job)
    assert got["note"] == "a note" and len(got["rows"]) == 4 and len(got["plots"]) == 1
    job = SimpleNamespace(input=_Named(analysis_table=str(table), analysis_plots=[]), params={})
    got = job_analysis(job)
    assert got["note"] is None and got["plots"] == [] and len(got["rows"]) == 4
    assert job_analysis(SimpleNamespace(input=_Named(), params=_Named())) is None


def test_analysis_note_says_when_the_weights_were_random(tmp_path):
    from lcseg_steps.stages.report import weights_note

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"weights": "random:seed=0"}))
    assert "Random-weight backbone (random:seed=0)" in weights_note(path)
    path.write_text(json.dumps({"weights": "pretrained:timm"}))
    assert weights_note(path) is None


# ---------------------------------------------------------------------------------------
# run_report: the stage's function on the hand-made shard (conftest.py)


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
        gallery=n_gallery,
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
        gallery=3,
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


def test_eigengap_curve_shown_when_a_count_was_auto(tmp_path):
    from lcseg_steps.stages.report import eigengap_plots
    from lcseg_steps.stores.layout import write_store

    lam = np.array([0.0, 0.0, 0.0, 0.5, 0.52, 0.6])
    auto = write_store(
        tmp_path / "classes.zarr",
        {"labels": np.zeros(3, dtype=np.int64), "eigenvalues": lam},
        {"n_classes": 3, "n_classes_auto": {"criterion": "eigengap", "range": [2, 5], "chosen": 3}},
    )
    fixed = write_store(tmp_path / "fixed.zarr", {"labels": np.zeros(3)}, {"n_classes": 3})
    plots, notes = eigengap_plots([auto, fixed])
    assert [caption for caption, _ in plots] == ["labels.n_classes auto: eigengap curve"]
    rgb = plots[0][1]
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 200 <= rgb.shape[0] <= 400 and 400 <= rgb.shape[1] <= 600  # small: 5 x 2.6 in
    assert (
        len(notes) == 1
        and "labels.n_classes: auto chose 3 in [2, 5] (auto_range [2, 5])" in notes[0]
    )
    assert eigengap_plots([fixed]) == ([], [])
    out = build_report(tmp_path / "r.html", title="t", metrics={}, plots=plots, gallery=[])
    parsed = _parse(out.read_text())
    assert len(parsed.imgs) == 1 and parsed.imgs[0]["alt"] == plots[0][0]
    assert _decode(parsed.imgs[0]["src"]).shape[:2] == rgb.shape[:2]


def test_split_regions_outlined_in_the_gallery_and_named_in_the_facts(
    shard, objects_store, tmp_path
):
    """An objects store made with regions split: each gallery image gets a regions panel
    with the outlines of its regions, and the run facts name the mode; a components store
    adds no panel."""
    from lcseg_steps.figures.overlays import region_outlines
    from lcseg_steps.stages.objects import run_objects
    from lcseg_steps.stores.layout import open_store, write_store
    from tests.hand_shard import OBJ_KW

    split = {"max_parts": 2, "min_silhouette": -1.0, "min_share": 0.0, "coherence": 0.0, "seed": 0}
    kw = {**OBJ_KW, "regions": "split", "attrs": {"settings": {"regions": "split"}}}
    ob = run_objects(
        shard["pixel_masks"],
        shard["features"],
        list(shard["records"].values()),
        tmp_path / "ob_split.zarr",
        descriptor="masked_keys",
        split=split,
        log=_quiet,
        **kw,
    )
    n = open_store(ob)["descriptors"].shape[0]
    classes = write_store(
        tmp_path / "cl_split.zarr",
        {
            "labels": np.arange(n, dtype=np.int64) % 3,
            "region_offsets": np.array([0, n], dtype=np.int64),
            "shards": np.array([SHARD]),
        },
    )
    sem = run_segment(ob, classes, SHARD, tmp_path / "sem.zarr", tmp_path / "pred", attrs=ATTRS)
    pixel = _refine(shard, tmp_path / "px.zarr", list(shard["records"].values()))
    kw = dict(
        title="split run",
        metrics_json=None,
        summary_json=None,
        plots=[],
        records=list(shard["records"].values()),
        patch_masks=[shard["patch_masks"]],
        pixel_masks=[pixel],
        semantic=[sem],
        gallery=3,
        log=_quiet,
    )
    page = run_report(tmp_path / "split.html", objects=[ob], **kw).read_text()
    assert page.count("<figcaption>regions (split)</figcaption>") == 3
    assert "<dt>regions</dt><dd>split</dd>" in page
    assert "region outlines" in page
    plain = run_report(tmp_path / "plain.html", objects=[objects_store], **kw).read_text()
    assert "regions (split)" not in plain
    # the outlines: white where the region id changes (4-neighbours), red tint inside
    img = np.full((6, 6, 3), 100, np.uint8)
    rmap = np.zeros((6, 6), np.uint16)
    rmap[1:5, 1:3], rmap[1:5, 3:5] = 1, 2
    out = region_outlines(img, rmap)
    assert (out[0, 0] == 100).all() and (out[1, 2] == 255).all() and (out[1, 3] == 255).all()
    assert (out[2, 1] == 255).all()  # the component's own edge
    assert not (out[5, 5] == 255).all()
