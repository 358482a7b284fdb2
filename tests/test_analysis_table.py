"""The analysis table: rows from hand-written metrics.json files against numpy, the CSV
round trip, the Markdown and the plots."""

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from lcseg_steps.analysis.table_format import write_csv
from lcseg_steps.stages import table
from lcseg_steps.stages.table import (
    markdown,
    plot_miou,
    plot_separability,
    separability_rows,
    short_value,
    table_rows,
)

PNG = b"\x89PNG\r\n\x1a\n"
VARYING = ["clustering.levels", "labels.n_classes", "refine.crf"]


def _metrics(path, miou, acc, per_class):
    # the layout evaluate writes (NaN as null); only the keys the table reads matter
    path.write_text(
        json.dumps(
            {
                "miou": miou,
                "pixel_accuracy": acc,
                "per_class_iou": per_class,
                "matching": "hungarian",
                "seed": 0,
            }
        )
    )
    return str(path)


@pytest.fixture
def variants(tmp_path):
    a = [
        _metrics(tmp_path / "a0.json", 0.40, 0.80, {"background": 0.7, "cat": 0.1, "dog": None}),
        _metrics(tmp_path / "a1.json", 0.46, 0.84, {"background": 0.8, "cat": 0.12, "dog": 0.5}),
        _metrics(tmp_path / "a2.json", 0.43, 0.81, {"background": 0.75, "cat": 0.2, "dog": 0.3}),
    ]
    b = [_metrics(tmp_path / "b0.json", 0.3, 0.7, {"background": 0.6, "cat": 0.0, "dog": None})]
    c = [_metrics(tmp_path / "c0.json", 0.5, 0.9, {"background": 0.9, "cat": 0.3, "dog": 0.4})]
    return [
        {"name": "all_background", "kind": "baseline", "keys": {}, "metrics": b},
        {
            "name": "base",
            "kind": "method",
            "keys": {"clustering.levels": ["image", "dataset"], "labels.n_classes": 20},
            "metrics": a,
        },
        {
            "name": "crf_off",
            "kind": "method",
            "keys": {"clustering.levels": ["image"], "labels.n_classes": 20, "refine.crf": False},
            "metrics": c,
        },
    ]


def test_short_value():
    assert short_value(["image", "dataset"]) == "image+dataset"
    assert short_value(False) == "false" and short_value(None) == "null"
    assert short_value(1e-4) == "0.0001" and short_value(20) == "20"
    assert short_value({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_table_rows_against_numpy(variants):
    rows = table_rows(variants, VARYING)
    assert [r["variant"] for r in rows] == ["base", "crf_off", "all_background"]
    base = rows[0]
    assert base["kind"] == "method"
    assert base["clustering.levels"] == "image+dataset" and base["labels.n_classes"] == "20"
    assert base["refine.crf"] == ""  # not a key of this variant
    assert base["miou_mean"] == pytest.approx(np.mean([0.40, 0.46, 0.43]))
    assert base["miou_std"] == pytest.approx(np.std([0.40, 0.46, 0.43], ddof=0))
    assert base["n_seeds"] == 3
    assert base["pixel_accuracy_mean"] == pytest.approx(np.mean([0.80, 0.84, 0.81]))
    assert base["iou/background"] == pytest.approx(0.75)
    assert base["iou/cat"] == pytest.approx(np.mean([0.1, 0.12, 0.2]))
    assert base["iou/dog"] == pytest.approx(0.4)  # absent (null) in one seed: left out
    assert rows[1]["refine.crf"] == "false" and rows[1]["miou_std"] == 0.0
    # one seed: the row repeats its metrics.json
    bg = rows[2]
    assert (bg["miou_mean"], bg["miou_std"], bg["n_seeds"]) == (0.3, 0.0, 1)
    assert bg["pixel_accuracy_mean"] == 0.7 and bg["iou/cat"] == 0.0
    assert math.isnan(bg["iou/dog"])
    assert list(base)[:5] == ["variant", "kind", *VARYING]
    assert list(base)[5:9] == ["miou_mean", "miou_std", "n_seeds", "pixel_accuracy_mean"]


def test_csv_round_trip(variants, tmp_path):
    rows = table_rows(variants, VARYING)
    path = write_csv(rows, tmp_path / "table.csv")
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == list(rows[0])
    for r, b in zip(rows, back, strict=True):
        for key, value in r.items():
            if isinstance(value, float):
                got = float(b[key]) if b[key] else math.nan
                assert got == value or (math.isnan(got) and math.isnan(value)), key
            else:
                assert b[key] == str(value), key


def test_markdown_content(variants, tmp_path):
    rows = table_rows(variants, VARYING)
    sep = [{"backbone": "vits16", "layer": 11, "feature": "k", "auc": 0.91234, "mean_iou": 0.5}]
    md = markdown(rows, VARYING, sep)
    lines = md.splitlines()
    head = lines.index(
        "| variant | kind | changes from base | mIoU (%) | pixel accuracy (%) | seeds |"
    )
    base = lines[head + 2]
    assert base.startswith("| base | method | - |")
    want = f"{100 * np.mean([0.40, 0.46, 0.43]):.1f} ± {100 * np.std([0.40, 0.46, 0.43]):.1f}"
    assert want in base and "| 81.7 | 3 |" in base
    # only what differs from base (labels.n_classes does not)
    assert lines[head + 3].startswith(
        "| crf_off | method | clustering.levels=image, refine.crf=false |"
    )
    assert lines[head + 4].startswith("| all_background | baseline |  | 30.0 ± 0.0 | 70.0 | 1 |")
    assert "| vits16 | 11 | k | 0.912 | 50.0 |" in md
    assert "No separability data." in markdown(rows, VARYING, [])


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG


def test_plots_are_written(variants, tmp_path):
    rows = table_rows(variants, VARYING)
    assert _is_png(plot_miou(rows, tmp_path / "miou.png"))
    sep = [
        {"backbone": b, "layer": la, "feature": f, "auc": 0.8, "mean_iou": math.nan}
        for b, la in (("vits16", 9), ("vits16", 11))
        for f in "qkv"
    ]
    assert _is_png(plot_separability(sep, tmp_path / "sep.png"))
    assert _is_png(plot_separability([], tmp_path / "none.png"))


def test_run(variants, tmp_path):
    sep_json = tmp_path / "sep.json"
    sep_json.write_text(
        json.dumps(
            {
                "backbone": "vits16",
                "layer": 11,
                "per_feature": {
                    "q": {"auc": 0.7, "mean_iou": None},
                    "k": {"auc": None, "mean_iou": 0.6},
                },
            }
        )
    )
    out = {
        n: str(tmp_path / f"out.{n}")
        for n in ("csv", "md", "miou_plot", "separability_plot", "separability_hist")
    }
    job = SimpleNamespace(
        params=SimpleNamespace(
            variants=variants,
            varying=VARYING,
            separability=[{"backbone": "vits16", "layer": 11, "path": str(sep_json)}],
        ),
        output=SimpleNamespace(**out),
        log=lambda _msg: None,
    )
    rows = table.run(job)
    assert len(rows) == 3
    assert (tmp_path / "out.csv").read_text().startswith("variant,kind,clustering.levels,")
    md = (tmp_path / "out.md").read_text()
    assert "| vits16 | 11 | q | 0.700 | n/a |" in md and "| vits16 | 11 | k | n/a | 60.0 |" in md
    assert _is_png(tmp_path / "out.miou_plot") and _is_png(tmp_path / "out.separability_plot")
    # the hand-made JSON has no histograms: the figure says so
    assert _is_png(tmp_path / "out.separability_hist")
    assert separability_rows(job.params.separability)[0]["feature"] == "q"


def test_separability_histograms_plot(tmp_path):
    from lcseg_steps.stages.table import plot_separability_histograms

    bins = np.linspace(-2, 2, 41)
    hist = {
        "score_bins": bins.tolist(),
        "score_hist_fg": np.r_[np.zeros(25), np.ones(15)].tolist(),
        "score_hist_bg": np.r_[np.ones(20), np.zeros(20)].tolist(),
        "iou_bins": np.linspace(0, 1, 21).tolist(),
        "iou_hist": [0] * 19 + [3],
    }
    rows = [
        {"backbone": "b", "layer": -1, "feature": f, "auc": 1.0, "mean_iou": 1.0, **hist}
        for f in "qkv"
    ]
    assert _is_png(plot_separability_histograms(rows, tmp_path / "h.png"))
    # rows without histograms (an older JSON) draw the "no data" figure, not an error
    bare = [{k: v for k, v in rows[0].items() if k not in hist}]
    assert _is_png(plot_separability_histograms(bare, tmp_path / "none.png"))
