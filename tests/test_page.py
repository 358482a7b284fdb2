"""The report page (``lcseg_steps.figures.page``): its structure, escaping, scores,
protocols, published numbers, legends, analysis section and embedded images."""

import math
import re

import numpy as np
import pytest

from lcseg_steps.figures.page import build_report, read_analysis
from tests.report_pages import ANALYSIS_CSV
from tests.report_pages import decode_png as _decode
from tests.report_pages import parse_html as _parse


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


# ---------------------------------------------------------------- analysis


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


def test_analysis_table_without_required_columns_is_named(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("name,miou\nx,0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"table\.csv.*variant, kind, miou_mean"):
        read_analysis(table)
