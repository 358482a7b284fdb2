"""`snakemake analysis` on the tiny demo: the grid's jobs, its table, and what it shares."""

import copy
import csv
import json
import shutil

import numpy as np
import pytest
from snakemake.utils import validate

from lcseg_steps.analysis import grid
from tests.helpers import SCHEMA, TINY, scheduled, snakemake

pytestmark = pytest.mark.integration

# seed 2, not 1: test_workflow's dry runs count the jobs of seed 1
GRID = {
    "seeds": [0, 2],
    "axes": {"clustering.feature": ["k", "q"], "labels.class_clusterer": ["kmeans"]},
    "variants": [],
    "baselines": ["all_background", "centre_prior"],
}
CONFIG = {**TINY, "analysis": GRID}


def _extract_jobs(jobs: dict) -> int:
    return jobs.get("extract", 0) + jobs.get("analysis_extract", 0)


def test_dry_run_extracts_once_per_distinct_backbone_setting(tmp_path):
    """Two backbones and two layers: three distinct extractions (the second backbone at
    the base layer, the base backbone at layer 0) of two shards each, whatever else the
    grid varies; the stages after extraction multiply, extraction does not."""
    cfg = copy.deepcopy(CONFIG)
    cfg["analysis"] = {
        "seeds": [0],
        "axes": {
            "backbone.name": ["vit_small_patch16_224", "vit_tiny_patch16_224"],
            "extract.layer": [0],
            "clustering.feature": ["q", "v"],
            "labels.class_clusterer": ["kmeans", "agglomerative"],
            "clustering.image_clusterer": ["spectral"],
        },
        "variants": [],
        "baselines": ["centre_prior", "cls_attention"],
    }
    r = snakemake(tmp_path, cfg, "-n", "analysis")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = scheduled(r)
    n_shards = 2
    assert _extract_jobs(jobs) == 3 * n_shards, jobs
    # base, 2 features, 2 class clusterers, 1 image clusterer, 1 backbone, 1 layer, 2 baselines
    assert jobs["evaluate"] + jobs["analysis_evaluate"] == 10, jobs
    # the class clusterers share the base's regions: 1 base + 2 features + spectral
    # + backbone + layer regions per shard, and each baseline's once (no seed)
    assert jobs["objects"] + jobs["analysis_objects"] == 6 * n_shards, jobs
    assert jobs["analysis_objects_unseeded"] == 2 * n_shards, jobs
    assert jobs["analysis_separability"] == 3, jobs
    assert jobs["analysis_table"] == jobs["analysis_report"] == 1


def test_dry_run_without_ground_truth_says_why(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 20, 30)).save(images / "a.png")
    cfg = {**CONFIG, "dataset": {"name": "folder", "root": str(images)}}
    r = snakemake(tmp_path, cfg, "-n", "analysis")
    assert r.returncode != 0
    assert "ground truth" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def analysis_jobs(tiny_run, tmp_path_factory):
    """`snakemake analysis` after `snakemake`, on a copy of the tiny run (mtimes and
    Snakemake's metadata kept): the workdir and the jobs it ran."""
    wd = tmp_path_factory.mktemp("analysis")
    shutil.copytree(tiny_run, wd, symlinks=True, dirs_exist_ok=True)
    r = snakemake(wd, CONFIG, "analysis")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return wd, scheduled(r)


@pytest.fixture(scope="module")
def analysis_run(analysis_jobs):
    return analysis_jobs[0]


def test_the_analysis_reuses_the_run(analysis_jobs):
    """The base variant's stages are the run's own: after `snakemake`, the analysis runs
    no demo_data, index or extract (every variant here shares the run's extraction), and
    the base's seed 0 is not recomputed (only its new seed 2)."""
    _, jobs = analysis_jobs
    for rule in ("demo_data", "index", "extract", "analysis_index", "analysis_extract"):
        assert rule not in jobs, jobs
    assert jobs["evaluate"] == 1, jobs  # the base at seed 2; seed 0 is the run's


def _rows(wd):
    with open(wd / "results" / "tiny" / "analysis" / "table.csv") as fh:
        return {row["variant"]: row for row in csv.DictReader(fh)}


def _metrics(path):
    with open(path) as fh:
        return json.load(fh)


def test_table_rows_are_the_variants_scores(analysis_run):
    rows = _rows(analysis_run)
    assert list(rows) == [
        "base",
        "clustering.feature=q",
        "labels.class_clusterer=kmeans",
        "baseline:all_background",
        "baseline:centre_prior",
    ]
    assert rows["base"]["kind"] == "method" and rows["baseline:centre_prior"]["kind"] == "baseline"
    assert rows["clustering.feature=q"]["clustering.feature"] == "q"
    # the base variant is the run itself: its row is the run's own metrics.json, per seed
    res = analysis_run / "results" / "tiny"
    mious = [_metrics(res / f"seed{s}" / "metrics.json")["miou"] for s in (0, 2)]
    assert float(rows["base"]["miou_mean"]) == pytest.approx(np.mean(mious))
    assert float(rows["base"]["miou_std"]) == pytest.approx(np.std(mious))
    assert int(rows["base"]["n_seeds"]) == 2
    # all background: the background class is the only one with an IoU above 0
    ab = rows["baseline:all_background"]
    ious = {k: float(v) for k, v in ab.items() if k.startswith("iou/") and v not in ("", "nan")}
    assert ious and all(v == 0 for k, v in ious.items() if k != "iou/background")


def _variant_metrics(wd, name, seed):
    """The metrics.json of one variant and seed, found through the grid's keys."""
    cfg = copy.deepcopy(CONFIG)
    validate(cfg, SCHEMA)
    cfg["dataset"]["root"] = "results/tiny/demo"  # where the Snakefile puts generated data
    (variant,) = [v for v in grid.variants(cfg, lambda c: validate(c, SCHEMA)) if v.name == name]
    path = wd / "results" / "tiny" / "analysis" / "scores" / variant.keys["evaluate"]
    return _metrics(path / f"seed{seed}" / "metrics.json")


def test_a_row_equals_the_variant_run_alone(analysis_run, tmp_path):
    """The q variant run alone as a normal config (seed 2) scores exactly what the
    analysis stored for it, and the table's row is the mean of its seeds."""
    alone = copy.deepcopy(TINY)
    alone["run"] = "tinyq"
    alone["seeds"] = [2]
    alone["clustering"] = {**alone["clustering"], "feature": "q"}
    r = snakemake(tmp_path, alone)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_alone = _metrics(tmp_path / "results" / "tinyq" / "seed2" / "metrics.json")
    in_grid = [_variant_metrics(analysis_run, "clustering.feature=q", s) for s in (0, 2)]
    for key in ("miou", "pixel_accuracy", "per_class_iou", "protocols"):
        assert in_grid[1][key] == run_alone[key], key
    row = _rows(analysis_run)["clustering.feature=q"]
    assert float(row["miou_mean"]) == pytest.approx(np.mean([m["miou"] for m in in_grid]))
    assert float(row["pixel_accuracy_mean"]) == pytest.approx(
        np.mean([m["pixel_accuracy"] for m in in_grid])
    )


def test_outputs_plots_separability_and_report(analysis_run):
    out = analysis_run / "results" / "tiny" / "analysis"
    for name in (
        "table.md",
        "miou.png",
        "separability.png",
        "separability_histograms.png",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "miou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seps = list((out / "separability").glob("*.json"))
    assert len(seps) == 1
    sep = json.loads(seps[0].read_text())
    assert set(sep["per_feature"]) == {"q", "k", "v"}
    for f in sep["per_feature"].values():
        assert f["auc"] is None or 0 <= f["auc"] <= 1
    html = (out / "report.html").read_text()
    assert "Analysis" in html and "baseline:centre_prior" in html


def test_adding_a_variant_runs_only_its_stages(analysis_run):
    cfg = copy.deepcopy(CONFIG)
    cfg["analysis"]["axes"]["clustering.feature"] = ["k", "q", "v"]
    r = snakemake(analysis_run, cfg, "-n", "analysis")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = scheduled(r)
    assert _extract_jobs(jobs) == 0 and "index" not in jobs and "analysis_index" not in jobs
    # the new variant's stages, two seeds, two shards
    assert jobs["analysis_image_level"] == 4 and jobs["analysis_evaluate"] == 2, jobs
    assert jobs["analysis_table"] == jobs["analysis_report"] == 1
    assert "evaluate" not in jobs and "analysis_objects_unseeded" not in jobs, jobs


def test_nothing_to_do_after_the_analysis(analysis_run):
    r = snakemake(analysis_run, CONFIG, "-n", "analysis")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr
