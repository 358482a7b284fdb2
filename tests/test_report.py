import base64
import itertools
import json
import math
import re
from dataclasses import replace
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from lcseg_steps.stages.report import (
    build_report,
    job_analysis,
    label_legend,
    matched_labels,
    overlay,
    patch_mask_image,
    read_analysis,
    run_report,
)
from lcseg_steps.stages.segment import run_segment
from lcseg_steps.stages.summary import summarize_seeds
from tests.hand_shard import ATTRS, SHARD, SIZES, _classes_store, _quiet, _refine


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.texts, self.classes = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        if "class" in attrs:
            self.classes.append(attrs["class"])

    def handle_data(self, data):
        self.texts.append(data)


def _parse(text):
    p = _Collector()
    p.feed(text)
    p.close()
    return p


def _decode(uri):
    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _metrics(**kw):
    m = {
        "miou": 0.41234,
        "pixel_accuracy": 0.8,
        "per_class_iou": {"background": 0.7, "aeroplane": math.nan, "<b>bold</b>": None},
        "matching": "hungarian",
        "backbone": "dino_vits16",
        "weights": "random:seed=0",
        "weights_warning": None,
        "seeds": [0],
        "config_digest": "abc123",
    }
    m.update(kw)
    return m


@pytest.fixture
def plot_png(tmp_path):
    path = tmp_path / "plot.png"
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :200] = (0, 0, 255)
    cv2.imwrite(str(path), img)
    return path


def _gallery():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, size=(512, 384, 3), dtype=np.uint8)  # -> 256 x 192
    wide = rng.integers(0, 256, size=(100, 1000, 3), dtype=np.uint8)  # -> 26 x 256
    small = rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8)  # kept 60 x 100
    return [
        {"image_id": "2007_000032", "panels": [("image", big), ("gt", big), ("pred", wide)]},
        {"image_id": "x&y", "panels": [("image", small)]},
    ], [(256, 192), (256, 192), (26, 256), (60, 100)]


def test_report_structure_and_images(tmp_path, plot_png):
    gallery, sizes = _gallery()
    out = build_report(
        tmp_path / "sub" / "report.html",
        title="lcseg <demo>",
        metrics=_metrics(),
        plots=[("per-class IoU", str(plot_png))],
        gallery=gallery,
        notes=["note & more"],
    )
    text = out.read_text(encoding="utf-8")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left
    parsed = _parse(text)
    assert len(parsed.imgs) == 1 + 4
    got = [_decode(a["src"]).shape[:2] for a in parsed.imgs]
    assert got == [(300, 400), *sizes]
    # colours survive the RGB -> PNG round trip: the plot's left half is BGR red = RGB blue
    plot = _decode(parsed.imgs[0]["src"])
    np.testing.assert_array_equal(plot[0, 0], [0, 0, 255])

    assert "41.2" in text and "80.0" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "lcseg &lt;demo&gt;" in text and "x&amp;y" in text
    assert "n/a" in text  # NaN and None IoUs
    assert "warning" not in parsed.classes
    all_text = "".join(parsed.texts)
    assert "dino_vits16" in all_text and "random:seed=0" in all_text
    assert re.search(r"<script", text) is None
    # per-class rows keep the given order
    assert all_text.index("background") < all_text.index("aeroplane") < all_text.index("<b>bold")


def test_warning_box_only_when_set(tmp_path):
    msg = "random weights: scores are meaningless"
    out = build_report(
        tmp_path / "r.html", title="t", metrics=_metrics(weights_warning=msg), plots=[], gallery=[]
    )
    parsed = _parse(out.read_text(encoding="utf-8"))
    assert parsed.classes.count("warning") == 1 and msg in "".join(parsed.texts)


def test_tolerates_sparse_metrics_and_list_form(tmp_path):
    out = build_report(tmp_path / "a.html", title="t", metrics={}, plots=[], gallery=[])
    assert "n/a" in out.read_text(encoding="utf-8")
    m = {"miou": None, "per_class_iou": [0.5, None], "class_names": ["bg", "cat"]}
    text = build_report(tmp_path / "b.html", title="t", metrics=m, plots=[], gallery=[]).read_text()
    assert "cat" in text and "50.0" in text


def test_bad_panel_names_image_and_caption(tmp_path):
    bad = [{"image_id": "im7", "panels": [("gt", np.zeros((5, 5), np.uint8))]}]
    with pytest.raises(ValueError, match="im7.*gt"):
        build_report(tmp_path / "r.html", title="t", metrics={}, plots=[], gallery=bad)
    assert not (tmp_path / "r.html").exists()


def test_overlay_by_hand():
    img = np.array([[[10, 20, 30], [100, 101, 102], [0, 0, 0]]], np.uint8)  # (1, 3, 3)
    labels = np.array([[0, 3, 255]])
    pal = np.zeros((256, 3), np.uint8)
    pal[3] = (200, 0, 51)
    out = overlay(img, labels, pal, alpha=0.25)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])  # background untouched
    # 0.75 * (100, 101, 102) + 0.25 * (200, 0, 51) = (125, 75.75, 89.25)
    np.testing.assert_array_equal(out[0, 1], [125, 76, 89])
    # void blends with white: 0.25 * 255 = 63.75
    np.testing.assert_array_equal(out[0, 2], [64, 64, 64])
    with pytest.raises(ValueError, match="shape"):
        overlay(img, labels[:, :2], pal)


def test_overlay_background_unchanged_large():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    labels = rng.integers(0, 21, size=(20, 30))
    pal = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    out = overlay(img, labels, pal, alpha=0.5)
    np.testing.assert_array_equal(out[labels == 0], img[labels == 0])
    ref = np.floor(0.5 * img.astype(float) + 0.5 * pal[labels].astype(float) + 0.5)
    np.testing.assert_array_equal(out[labels != 0], ref[labels != 0].astype(np.uint8))


def test_patch_mask_image_nearest_stretch():
    img = np.full((30, 40, 3), 128, np.uint8)
    grid = np.array([[1, 0], [0, 1]], bool)  # 2x2 patches of 15x20 px
    out = patch_mask_image(img, grid)
    assert out.shape == img.shape and out.dtype == np.uint8
    fg = np.zeros((30, 40), bool)
    fg[:15, :20] = fg[15:, 20:] = True
    # every pixel of a patch gets the same colour, fg and bg colours differ
    assert len(np.unique(out[fg], axis=0)) == 1 and len(np.unique(out[~fg], axis=0)) == 1
    assert not np.array_equal(out[0, 0], out[0, 39])
    assert out[0, 0, 0] > out[0, 0, 1]  # tinted red
    soft = patch_mask_image(img, np.array([[0.5, np.nan]]))
    assert soft.shape == img.shape
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        patch_mask_image(img, np.array([[2.0]]))


def test_patch_mask_geometry_matches_patch_rectangles():
    h, w, gh, gw = 31, 23, 3, 4
    rng = np.random.default_rng(2)
    grid = rng.random((gh, gw))
    img = np.full((h, w, 3), 90, np.uint8)
    out = patch_mask_image(img, grid)
    for y in range(h):
        for x in range(w):
            # brute force: the patch whose rectangle [i h/gh, (i+1) h/gh) holds the pixel
            i = next(i for i in range(gh) if i * h / gh <= y < (i + 1) * h / gh)
            j = next(j for j in range(gw) if j * w / gw <= x < (j + 1) * w / gw)
            ref = patch_mask_image(np.full((1, 1, 3), 90, np.uint8), grid[i : i + 1, j : j + 1])
            np.testing.assert_array_equal(out[y, x], ref[0, 0])


def test_protocols_table_one_row_each_with_peers(tmp_path):
    protocols = {
        "dataset_hungarian": {
            "miou": 0.41234,
            "pixel_accuracy": 0.8,
            "per_class_iou": {"background": 0.7},
            "rule": "one-to-one Hungarian, most matched pixels",
            "resolution": "original",
            "reproduces": "lcseg's headline",
            "differs": "",
        },
        "diffcut": {
            "miou": None,
            "pixel_accuracy": 0.9,
            "rule": "per image",
            "resolution": "128x128",
            "reproduces": "PaulCouairon/DiffCut <&>",
        },
        "dsm": {"miou": 0.25},  # sparse entries still render
    }
    summary = {"protocols": {"dsm": {"miou": {"mean": 0.3, "std": 0.02}}}}
    metrics = _metrics(protocols=protocols, headline_protocol="dataset_hungarian")
    text = build_report(
        tmp_path / "r.html", title="t", metrics=metrics, plots=[], gallery=[], summary=summary
    ).read_text(encoding="utf-8")
    table = text[text.index('<table class="protocols">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    assert len(rows) == 1 + 3  # header + one per protocol, in the given order
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in rows]
    assert cells[0] == [
        "protocol",
        "mIoU",
        "over seeds",
        "pixel acc.",
        "rule",
        "resolution",
        "reproduces",
        "differs",
    ]
    assert cells[1][:4] == ["<code>dataset_hungarian</code> (headline)", "41.2", "", "80.0"]
    assert (
        cells[2][1:4] == ["n/a", "", "90.0"] and cells[2][6] == "PaulCouairon/DiffCut &lt;&amp;&gt;"
    )
    assert cells[3][1:4] == ["25.0", "30.0 ± 2.0", "n/a"]
    # the protocols object is not listed among the run facts, and no table without it
    assert "<dt>protocols</dt>" not in text
    assert "Where we stand" not in text  # no published rows given
    plain = build_report(tmp_path / "p.html", title="t", metrics=_metrics(), plots=[], gallery=[])
    assert '<table class="protocols">' not in plain.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "dataset,weights", [("voc12", "random"), ("coco", "timm"), ("demo", "timm")]
)
def test_published_numbers_beside_ours_for_the_runs_dataset(tmp_path, dataset, weights):
    from lcseg_steps.evaluation.protocols import published_results

    protocols = {
        "dsm": {"miou": 0.2},
        "cause_voc": {"miou": 0.31},
        "cause_coco": {"miou": 0.12},
        "diffcut": {"miou": 0.4},
    }
    summary = {"protocols": {"dsm": {"miou": {"mean": 0.21, "std": 0.01}}}}
    metrics = _metrics(protocols=protocols, dataset=dataset, weights=weights)
    text = build_report(
        tmp_path / "r.html",
        title="t",
        metrics=metrics,
        plots=[],
        gallery=[],
        summary=summary,
        published=published_results(),
    ).read_text(encoding="utf-8")
    if dataset == "demo":
        assert "Where we stand" not in text
        return
    part = text[text.index("Where we stand") :]
    rows = re.findall(r"<tr>(.*?)</tr>", part[: part.index("</table>")])
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in rows]
    by_method = {c[0]: c for c in cells[1:]}
    assert ("random weights" in part) == (weights == "random")
    if dataset == "voc12":
        assert set(by_method) == {"CAUSE-TR", "COMUS", "DSM", "DiffCut"}
        assert by_method["CAUSE-TR"][4:] == ["<code>cause_voc</code>", "53.3", "31.0"]
        assert by_method["DSM"][4:] == ["<code>dsm</code>", "37.2", "21.0 ± 1.0"]
        assert by_method["DiffCut"][3] == "no"
    else:
        assert set(by_method) == {"CAUSE-TR", "COMUS"}
        assert by_method["CAUSE-TR"][2:] == [
            "DINO ViT-S/8",
            "yes (segmentation head and concept codebook)",
            "<code>cause_coco</code>",
            "21.2",
            "12.0",
        ]


# ---------------------------------------------------------------- legends


def test_gallery_legends_beside_panels(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    legend = [("foreground", "#ff2828"), ("cat <1>", "#800000"), ("just text", None)]
    gallery = [{"image_id": "im", "panels": [("image", img), ("gt", img, legend)]}]
    text = build_report(
        tmp_path / "r.html", title="t", metrics={}, plots=[], gallery=gallery
    ).read_text(encoding="utf-8")
    figs = re.findall(r"<figure>.*?</figure>", text)
    assert len(figs) == 2
    assert '<ul class="legend">' not in figs[0]  # a plain picture has no legend
    items = re.findall(r"<li>(.*?)</li>", figs[1])
    assert items == [
        '<span class="sw" style="background: #ff2828"></span>foreground',
        '<span class="sw" style="background: #800000"></span>cat &lt;1&gt;',
        "just text",
    ]
    assert text.count("<img") == 2  # swatches are not images


def test_label_legend_lists_present_ids_in_palette_colours():
    pal = np.zeros((256, 3), np.uint8)
    pal[2] = (128, 0, 64)
    pal[7] = (1, 2, 3)
    labels = np.array([[0, 2, 2], [7, 255, 0]])
    legend = label_legend(labels, pal, lambda i: f"c{i}", void="unmatched")
    assert legend == [("c2", "#800040"), ("c7", "#010203"), ("unmatched", "#ffffff")]
    assert label_legend(np.zeros((2, 2), np.uint8), pal, str) == [
        ("background only: nothing drawn", None)
    ]


def test_matched_labels_follow_the_mapping():
    pred = np.array([[0, 1, 2], [3, 4, 9]])
    # cluster 0 -> class 0, 1 -> 3, 2 unmatched, 3 -> 1, 4 -> 2; 9 is past the mapping
    out = matched_labels(pred, [0, 3, -1, 1, 2])
    np.testing.assert_array_equal(out, [[0, 3, 255], [1, 2, 255]])
    assert out.dtype == np.uint8


# ---------------------------------------------------------------- analysis


ANALYSIS_CSV = (
    "variant,kind,clustering.feature,backbone.name,miou_mean,miou_std,n_seeds,"
    "pixel_accuracy_mean,iou/background,iou/cat\n"
    "base,method,k,dino_vits16,0.227,0.031,3,0.61,0.5,0.1\n"
    "border_k,method,k,dino_vits16,0.361,0.0125,3,0.72,0.6,0.2\n"
    "all_background,baseline,,,0.40,0.0,1,0.80,0.8,0.0\n"
    "broken,method,q,<b>x</b>,,,0,,,\n"
)


def _analysis_section(text):
    start = text.index("<h2>Analysis</h2>")
    end = text.find("<h2>", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_analysis_section_table_and_plots(tmp_path, plot_png):
    table = tmp_path / "table.csv"
    table.write_text(ANALYSIS_CSV, encoding="utf-8")
    note = "random-weight backbone: numbers measure the pipeline, not the method"
    analysis = read_analysis(table, [plot_png], note)
    assert analysis["keys"] == ["clustering.feature", "backbone.name"]
    assert analysis["plots"] == [("plot", plot_png)]
    gallery, _ = _gallery()
    text = build_report(
        tmp_path / "r.html",
        title="t",
        metrics=_metrics(),
        plots=[],
        gallery=gallery,
        analysis=analysis,
    ).read_text(encoding="utf-8")
    # before the gallery, the note first
    assert text.index("<h2>Analysis</h2>") < text.index("<h2>Gallery</h2>")
    section = _analysis_section(text)
    assert note in section and section.index(note) < section.index('<table class="analysis">')
    rows = re.findall(r"<tr(?: class=\"(\w+)\")?>(.*?)</tr>", section)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for _, r in rows]
    # one column says what a row changes from base (the CSV has one per key)
    assert cells[0] == [
        "variant",
        "kind",
        "changes from base",
        "mIoU (mean ± std)",
        "pixel acc.",
        "seeds",
    ]
    assert [c[0] for c in cells[1:]] == ["base", "border_k", "all_background", "broken"]
    assert cells[1][2:] == ["<code>-</code>", "22.7 ± 3.1", "61.0", "3"]
    assert cells[2][2:5] == ["<code></code>", "36.1 ± 1.2", "72.0"]
    assert cells[3][1] == "baseline" and cells[3][3] == "40.0 ± 0.0"
    assert cells[4][2] == "<code>clustering.feature=q, backbone.name=&lt;b&gt;x&lt;/b&gt;</code>"
    assert cells[4][3:5] == ["n/a", "n/a"]
    # the best method is highlighted, not the (higher) baseline
    assert [c for c, _ in rows] == ["", "", "best", "baseline", ""]
    # per-class columns stay out of the page
    assert "iou/" not in section
    # the plot is embedded in the section, at the plot size
    imgs = _parse(section).imgs
    assert len(imgs) == 1 and _decode(imgs[0]["src"]).shape[:2] == (300, 400)


def test_no_analysis_no_section(tmp_path):
    text = build_report(
        tmp_path / "r.html", title="t", metrics=_metrics(), plots=[], gallery=[]
    ).read_text(encoding="utf-8")
    body = text[text.index("<body>") :]
    assert "Analysis" not in body and "analysis" not in body


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


def test_analysis_table_without_required_columns_is_named(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("name,miou\nx,0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"table\.csv.*variant, kind, miou_mean"):
        read_analysis(table)


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


@pytest.mark.parametrize("n", [1, 3, 4, 12])
def test_gallery_ranking_spans_best_to_worst(n):
    from lcseg_steps.stages.report import gallery_ranking

    rng = np.random.default_rng(n)
    scores = {f"im{i:02d}": float(v) for i, v in enumerate(rng.random(9))}
    scores["flat"] = None  # nothing scorable: never shown
    got = gallery_ranking(scores, n)
    by_score = sorted((v, k) for k, v in scores.items() if v is not None)[::-1]
    if n >= 9:
        assert [g[0] for g in got] == [k for _, k in by_score]
    else:
        ids = [g[0] for g in got]
        assert ids[0] == by_score[0][1]
        if n > 1:
            assert ids[-1] == by_score[-1][1] and len(set(ids)) == n
        # ranks are evenly spaced within one
        ranks = [g[2] for g in got]
        assert all(1 <= b - a <= -(-8 // max(n - 1, 1)) for a, b in itertools.pairwise(ranks))
    assert [g[1] for g in got] == sorted((g[1] for g in got), reverse=True)
    assert gallery_ranking(None, 3) == [] and gallery_ranking({"a": None}, 3) == []


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
    from lcseg_steps.stages.objects import run_objects
    from lcseg_steps.stages.report import region_outlines
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
