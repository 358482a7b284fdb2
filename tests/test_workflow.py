"""Runs the Snakemake workflow end to end on a tiny generated demo set with a tiny random ViT."""

import itertools
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from lcseg_steps.cli import main as lcseg_main
from lcseg_steps.data.demo import DEMO_CLASSES
from lcseg_steps.data.image_table import read_index
from lcseg_steps.data.images import patch_grid_size
from lcseg_steps.data.palette import read_label_png
from lcseg_steps.evaluation.protocols import PROTOCOLS
from lcseg_steps.runner.settings import settings_digest
from lcseg_steps.stores.layout import open_store
from tests.helpers import BIN, TINY, scheduled, snakemake

pytestmark = pytest.mark.integration


def test_features_for_every_shard(tiny_run):
    res = tiny_run / "results" / "tiny"
    records = read_index(res / "images.tsv")
    assert [r.image_id for r in records] == [f"demo_{i:04d}" for i in range(6)]
    assert [r.shard for r in records] == ["s0000"] * 4 + ["s0001"] * 2
    for shard in ("s0000", "s0001"):
        recs = [r for r in records if r.shard == shard]
        s = open_store(res / "features" / f"{shard}.zarr")
        assert list(s["image_ids"][:]) == [r.image_id for r in recs]
        grids = [[d // 16 for d in patch_grid_size(r.height, r.width, 16, 64)] for r in recs]
        np.testing.assert_array_equal(s["grid"][:], grids)
        n = int(np.prod(grids, axis=1).sum())
        assert s["offsets"][-1] == n
        for name in ("q", "k", "v"):
            assert s[name].shape == (n, 48) and s[name].dtype == np.float16
        assert s["cls"].shape == (len(recs), 48)
        assert np.isfinite(s["k"][:]).all()
        attrs = dict(s.attrs)
        assert attrs["weights"].startswith("random") and attrs["patch_size"] == 16
        assert attrs["settings"]["backbone"]["weights"] == "random"
    assert (res / "logs" / "extract" / "s0000.log").read_text().count("extract:") >= 2


def test_heavy_jobs_record_their_time_and_memory(tiny_run):
    """Snakemake's benchmark files, what cluster resources are sized from."""
    logs = tiny_run / "results" / "tiny" / "logs"
    tsvs = [logs / "benchmarks" / "extract" / f"{s}.tsv" for s in ("s0000", "s0001")]
    tsvs += [logs / "seed0" / "benchmarks" / f"{r}.tsv" for r in ("fit_dataset", "assign")]
    tsvs += [logs / "seed0" / "benchmarks" / r / "s0001.tsv" for r in ("refine", "objects")]
    for tsv in tsvs:
        header, row = tsv.read_text().splitlines()[:2]
        values = dict(zip(header.split("\t"), row.split("\t"), strict=True))
        # memory is sampled while the job runs, so a sub-second tiny job may show ~0
        assert float(values["s"]) > 0 and float(values["max_rss"]) >= 0, (tsv, values)


def test_inspect_cli_on_a_store(tiny_run, capsys):
    store = tiny_run / "results" / "tiny" / "features" / "s0001.zarr"
    lcseg = os.path.join(BIN, "lcseg")
    r = subprocess.run([lcseg, "inspect", str(store)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "cls_attn" in r.stdout and "per-patch" in r.stdout and "random" in r.stdout
    png = tiny_run / "view.png"
    # the console script ran once above; the rest in this process (no start-up each)
    assert lcseg_main(["inspect", str(store), "--image", "demo_0005", "--png", str(png)]) == 0
    assert png.stat().st_size > 1000 and "patch grid" in capsys.readouterr().out
    assert lcseg_main(["inspect", str(store), "--image", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_nothing_to_do_after_a_run(tiny_run):
    r = snakemake(tiny_run, TINY, "-n")
    assert r.returncode == 0 and scheduled(r) == {}, r.stdout


def test_changing_an_extract_setting_reruns_extract_only(tiny_run):
    cfg = {**TINY, "extract": {**TINY["extract"], "long_side": 48}}
    r = snakemake(tiny_run, cfg, "-n")
    assert r.returncode == 0, r.stderr
    jobs = scheduled(r)
    assert jobs.get("extract") == 2
    # the index reruns too: long_side decides which images are too small for one patch
    assert jobs.get("index") == 1 and "demo_data" not in jobs


def test_patch_masks_for_every_shard(tiny_run):
    res = tiny_run / "results" / "tiny"
    for shard in ("s0000", "s0001"):
        feats = open_store(res / "features" / f"{shard}.zarr")
        pm = open_store(res / "seed0" / "patch_masks" / f"{shard}.zarr")
        n = int(feats["offsets"][-1])
        np.testing.assert_array_equal(pm["offsets"][:], feats["offsets"][:])
        np.testing.assert_array_equal(pm["grid"][:], feats["grid"][:])
        for name in ("mask_dataset", "mask_category", "mask_image", "merged", "score"):
            assert pm[name].shape == (n,)
        votes = pm["mask_dataset"][:] + pm["mask_category"][:] + pm["mask_image"][:]
        np.testing.assert_array_equal(pm["merged"][:], votes >= 2)
        np.testing.assert_allclose(pm["score"][:], votes / 3)
    ds = open_store(res / "seed0" / "dataset_level.zarr")
    assert ds["centroids"].shape == (8, 48)
    cs = open_store(res / "seed0" / "category_level.zarr")
    assert cs["centroids"].shape == (2, 2, 48) and cs["category"].shape == (6,)


def test_changing_k_image_reruns_image_level_and_dependents_only(tiny_run):
    cfg = {**TINY, "clustering": {**TINY["clustering"], "k_image": 3}}
    jobs = scheduled(snakemake(tiny_run, cfg, "-n"))
    expected = {"image_level": 2, "fit_dataset": 1, "fit_category": 1, "merge": 2, "all": 1}
    assert {k: v for k, v in jobs.items() if k in expected} == expected
    # and what depends on the masks: refinement, labelling and scoring
    assert jobs.get("refine") == 2 and jobs.get("evaluate") == 1
    assert not {"demo_data", "index", "extract"} & set(jobs)


def test_changing_consistency_reruns_merge_only(tiny_run):
    cfg = {**TINY, "clustering": {**TINY["clustering"], "consistency": "union"}}
    jobs = scheduled(snakemake(tiny_run, cfg, "-n"))
    assert jobs.get("merge") == 2
    assert not {"image_level", "fit_dataset", "fit_category", "extract"} & set(jobs)


def test_scores_and_report(tiny_run):
    res = tiny_run / "results" / "tiny"
    metrics = json.loads((res / "seed0" / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["n_images_scored"] == 6
    assert set(metrics["per_class_iou"]) == {"background", *DEMO_CLASSES}
    assert metrics["weights"].startswith("random") and metrics["seed"] == 0
    summary = json.loads((res / "metrics_summary.json").read_text())
    assert summary["miou"]["per_seed"] == [metrics["miou"]]
    page = (res / "report.html").read_text()
    assert page.count("<img") >= 2 + 3 * 5
    # the gallery shows the best, the middle and the worst image by per-image mIoU
    ranked = sorted(metrics["per_image_miou"].items(), key=lambda kv: (-kv[1], kv[0]))
    shown = re.findall(r"<h3>(demo_\d+): mIoU", page)
    assert shown == [ranked[0][0], ranked[round((len(ranked) - 1) / 2)][0], ranked[-1][0]]
    protocols = metrics["protocols"]
    assert list(protocols) == [p for p in PROTOCOLS if p != "cause_coco"]  # demo: VOC's
    assert protocols["dataset_hungarian"]["miou"] == metrics["miou"]
    assert metrics["headline_protocol"] == "dataset_hungarian"
    assert set(summary["protocols"]) == set(protocols)
    assert summary["protocols"]["dsm"]["miou"]["per_seed"] == [protocols["dsm"]["miou"]]
    assert '<table class="protocols">' in page and "PaulCouairon/DiffCut" in page

    # the scores follow from the written predictions: recompute them independently
    conf = np.zeros((5, 3), dtype=np.int64)
    for r in read_index(res / "images.tsv"):
        pred = read_label_png(res / "seed0" / "pred" / r.shard / f"{r.image_id}.png")
        gt = read_label_png(tiny_run / r.gt)
        keep = gt != 255
        np.add.at(conf, (gt[keep], pred[keep]), 1)
    best = max(
        (sum(conf[g, p] for p, g in enumerate(perm)), perm)
        for perm in itertools.permutations(range(5), 3)
    )[1]
    ious = []
    for g in range(5):
        tp = sum(conf[g, p] for p, gg in enumerate(best) if gg == g)
        pred_g = sum(conf[:, p].sum() for p, gg in enumerate(best) if gg == g)
        union = conf[g].sum() + pred_g - tp
        if union:
            ious.append(tp / union)
    assert metrics["miou"] == pytest.approx(np.mean(ious), abs=1e-9)


def test_every_store_records_the_digest_of_its_settings(tiny_run):
    """The digest beside a store's settings is the digest of exactly those settings, and
    the scores name the backbone the features were extracted with."""
    res = tiny_run / "results" / "tiny"
    kinds = set()
    for path in sorted(res.rglob("*.zarr")):
        attrs = dict(open_store(path).attrs)
        if "settings" in attrs:
            assert attrs["settings_digest"] == settings_digest(attrs["settings"]), path
            kinds.add(path.stem if path.parent.name.startswith("seed") else path.parent.name)
    assert kinds >= {"features", "image_level", "patch_masks", "pixel_masks", "objects"}
    metrics = json.loads((res / "seed0" / "metrics.json").read_text())
    feats = open_store(res / "features" / "s0000.zarr").attrs
    for key in ("backbone", "weights", "weights_warning", "layer"):
        assert metrics[key] == feats.get(key), key


def test_changing_a_crf_setting_reruns_refine_and_downstream_only(tiny_run):
    cfg = {**TINY, "refine": {"iterations": 3}}
    jobs = scheduled(snakemake(tiny_run, cfg, "-n"))
    assert jobs.get("refine") == 2 and jobs.get("objects") == 2 and jobs.get("evaluate") == 1
    assert not {"merge", "image_level", "extract"} & set(jobs)


def test_two_seeds_give_a_summary(tiny_run):
    jobs = scheduled(snakemake(tiny_run, {**TINY, "seeds": [0, 1]}, "-n"))
    # seed 0 is done; only seed 1's chain and the summary/report run
    assert jobs.get("image_level") == 2 and jobs.get("evaluate") == 1
    assert jobs.get("summary") == 1 and "extract" not in jobs


def test_wrong_config_type_names_the_key(tmp_path):
    r = snakemake(tmp_path, {**TINY, "shard_size": "many"}, "-n")
    assert r.returncode != 0 and "shard_size" in r.stderr + r.stdout


def test_missing_dataset_root_names_the_path(tmp_path):
    cfg = {**TINY, "dataset": {"name": "voc12", "root": str(tmp_path / "VOCmissing")}}
    r = snakemake(tmp_path, cfg, "-n")
    out = r.stderr + r.stdout
    assert r.returncode != 0 and "VOCmissing" in out and "dataset.root" in out


def test_inspect_handles_every_store(tiny_run, capsys):
    res = tiny_run / "results" / "tiny"
    stores = sorted(res.rglob("*.zarr"))
    kinds = {p.parent.name if p.parent.name != "seed0" else p.stem for p in stores}
    assert {"features", "image_level", "patch_masks", "pixel_masks", "objects", "semantic"} <= kinds
    assert {"dataset_level", "category_level", "classes"} <= kinds
    for store in stores:
        assert lcseg_main(["inspect", str(store)]) == 0, store
        out = capsys.readouterr().out
        assert "attrs:" in out and "lcseg_version" in out, store
    pm = res / "seed0" / "patch_masks" / "s0000.zarr"
    png = tiny_run / "masks.png"
    assert lcseg_main(["inspect", str(pm), "--image", "demo_0001", "--png", str(png)]) == 0
    assert "mask_dataset" in capsys.readouterr().out and png.stat().st_size > 1000


def test_snakemake_report(tiny_run):
    out = tiny_run / "snakemake_report.zip"
    r = snakemake(tiny_run, TINY, "--report", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.stat().st_size > 10_000


def test_n_classes_auto_reruns_assign_and_after_only(tiny_run, tmp_path):
    """labels.n_classes: auto on a copy of the tiny run: the eigengap chooses the count in
    assign, evaluate scores that many predicted ids, the report draws the curve."""
    wd = tmp_path / "auto"
    shutil.copytree(tiny_run, wd, symlinks=True)
    cfg = {**TINY, "labels": {**TINY["labels"], "n_classes": "auto", "auto_range": [2, 6]}}
    r = snakemake(wd, cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert set(scheduled(r)) == {
        "all",
        "assign",
        "model",
        "segment",
        "evaluate",
        "summary",
        "report",
    }
    res = wd / "results" / "tiny"
    cl = open_store(res / "seed0" / "classes.zarr")
    n, n_regions = cl.attrs["n_classes"], cl["labels"].shape[0]
    kmax = min(6, n_regions - 1)
    assert cl.attrs["n_classes_auto"]["chosen"] == n and 2 <= n <= kmax
    lam = np.asarray(cl["eigenvalues"][...], dtype=np.float64)  # λ_1 .. λ_{kmax+1}
    assert lam.shape == (kmax + 1,) and (np.diff(lam) >= -1e-9).all()
    # the count is the largest gap of the stored curve, λ_{n+1} - λ_n (first of equals)
    gaps = {c: lam[c] - lam[c - 1] for c in range(2, kmax + 1)}
    assert n == max(gaps, key=lambda c: (gaps[c], -c))
    metrics = json.loads((res / "seed0" / "metrics.json").read_text())
    assert metrics["n_classes"] == n and len(metrics["mapping"]) == n + 1
    page = (res / "report.html").read_text()
    assert "labels.n_classes auto: eigengap curve" in page and "auto chose" in page
    # clustering.n_categories auto too (dry run): fit_category and after, no extraction
    both = {**cfg, "clustering": {**TINY["clustering"], "n_categories": "auto"}}
    jobs = scheduled(snakemake(wd, both, "-n"))
    assert {"fit_category", "merge", "objects", "assign", "report"} <= set(jobs)
    assert not {"extract", "image_level", "fit_dataset"} & set(jobs)
