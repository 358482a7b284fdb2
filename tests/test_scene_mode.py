"""Scene mode end to end (labels.scope: scene) on a few generated scenes
(lcseg_steps/data/scene_tree.py, folder layout): `snakemake` writes predictions of many
classes where every pixel has one, scored from the PNGs as the reference Hungarian scores
them; `snakemake analysis` scores the k-means baseline beside the method; the config
refuses what scene mode has no meaning for."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lcseg_steps.analysis import grid
from lcseg_steps.apply.model_zarr import SceneModel, load_model
from lcseg_steps.data.demo_scene import SCENE_CLASSES
from lcseg_steps.data.scene_tree import write_scene_tree
from lcseg_steps.runner.settings import config_problems
from lcseg_steps.stores.layout import open_store, read_ids
from tests.helpers import TINY, reference_hungarian, scheduled, snakemake, stored_features
from tests.schema_defaults import default_config

BASELINE = "baseline: k-means"


def scene_config(data) -> dict:
    """TINY's backbone and sizes on the generated scenes, in scene mode."""
    return {
        **TINY,
        "run": "tinyscene",
        "dataset": {
            "name": "folder",
            "root": str(data / "images"),
            "masks": str(data / "masks"),
            "n_classes": len(SCENE_CLASSES) - 1,
            "class_names": list(SCENE_CLASSES),
        },
        "labels": {"scope": "scene", "n_classes": len(SCENE_CLASSES)},
        "scene": {"k_image": 3},
        "analysis": {
            "seeds": [0],
            "axes": {},
            "variants": [
                {
                    "name": BASELINE,
                    "set": {"scene": {"segment_weight": 0}, "refine": {"crf": False}},
                }
            ],
            "baselines": [],
            "separability": False,
        },
    }


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("scene")
    write_scene_tree(wd / "data", n_images=6, seed=3, min_size=64, max_size=100)
    cfg = scene_config(wd / "data")
    r = snakemake(wd, cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return wd, cfg


@pytest.mark.integration
def test_a_scene_run_labels_every_pixel_with_many_classes_and_is_scored(scene_run):
    wd, _ = scene_run
    res = wd / "results" / "tinyscene"
    pairs, used = [], set()
    for png in sorted((res / "seed0" / "pred" / "s0000").glob("*.png")) + sorted(
        (res / "seed0" / "pred" / "s0001").glob("*.png")
    ):
        pred = np.asarray(Image.open(png))
        gt = np.asarray(Image.open(wd / "data" / "masks" / png.name))
        assert pred.shape == gt.shape
        used |= set(np.unique(pred).tolist())
        pairs.append((gt, pred))
    assert len(pairs) == 6
    assert used <= set(range(len(SCENE_CLASSES)))  # ids 0..C-1: no background id
    assert len(used) > 2
    m = json.loads((res / "seed0" / "metrics.json").read_text())
    miou, acc = reference_hungarian(pairs, len(SCENE_CLASSES), len(SCENE_CLASSES))
    assert m["miou"] == pytest.approx(miou)
    assert m["pixel_accuracy"] == pytest.approx(acc)
    assert m["n_classes"] == len(SCENE_CLASSES)
    # one predicted id per class, none for a background: the confusion is square
    assert len(m["mapping"]) == len(SCENE_CLASSES)
    assert (res / "report.html").exists()
    assert (res / "seed0" / "model.zarr").exists()  # the scene model, for apply


@pytest.mark.integration
def test_the_analysis_scores_the_kmeans_baseline_beside_the_method(scene_run, tmp_path):
    wd, cfg = scene_run
    shutil.copytree(wd, tmp_path / "wd", symlinks=True)
    r = snakemake(tmp_path / "wd", cfg, "analysis")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = tmp_path / "wd" / "results" / "tinyscene" / "analysis" / "table.csv"
    with open(table) as fh:
        rows = {row["variant"]: row for row in csv.DictReader(fh)}
    assert list(rows) == ["base", BASELINE]
    # the baseline is the dataset level's nearest class, upsampled: no levels, no CRF
    for row in rows.values():
        assert 0.0 <= float(row["miou_mean"]) <= 1.0


@pytest.mark.integration
def test_the_scene_dry_run_runs_the_scene_stages_only(tmp_path):
    write_scene_tree(tmp_path / "data", n_images=5, seed=0, min_size=64, max_size=80)
    r = snakemake(tmp_path, scene_config(tmp_path / "data"), "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = scheduled(r)
    assert {"scene_dataset", "scene_levels", "scene_refine", "evaluate"} <= set(jobs)
    for objects_stage in ("image_level", "merge", "refine", "objects", "assign", "segment"):
        assert objects_stage not in jobs
    assert "model" not in jobs and jobs["scene_model"] == 1


def test_scene_mode_refuses_an_auto_count_baselines_and_a_scope_axis():
    cfg = default_config()
    cfg["labels"]["scope"] = "scene"
    cfg["labels"]["n_classes"] = "auto"
    assert any("fixed labels.n_classes" in p for p in config_problems(cfg))
    cfg["labels"]["n_classes"] = len(SCENE_CLASSES)
    assert config_problems(cfg) == []
    with pytest.raises(ValueError, match="analysis.baselines"):
        grid.variants(cfg)
    cfg["analysis"]["baselines"] = []
    cfg["analysis"]["axes"] = {"labels.scope": ["objects"]}
    with pytest.raises(ValueError, match="labels.scope cannot vary"):
        grid.variants(cfg)


@pytest.mark.integration
def test_snakemake_apply_segments_with_the_scene_model_as_its_segment_does(scene_run, tmp_path):
    """The scene run's model.zarr loads as a SceneModel; `snakemake apply` with it on
    new scenes writes, for each image, the classes that ``segment(image)`` gives from the
    applied run's own features, and scores them against the masks."""
    wd, cfg = scene_run
    model_path = wd / "results" / "tinyscene" / "seed0" / "model.zarr"
    model = load_model(model_path, device="cpu")
    assert isinstance(model, SceneModel) and model.n_classes == len(SCENE_CLASSES)
    assert "scene mode" in model.summary()
    new = tmp_path / "new"
    write_scene_tree(new, n_images=3, seed=11, min_size=64, max_size=90)
    run_dir = tmp_path / "wd"
    shutil.copytree(wd, run_dir, symlinks=True)
    applied = {
        **cfg,
        "apply": {"model": "tinyscene", "images": str(new / "images"), "masks": str(new / "masks")},
    }
    r = snakemake(run_dir, applied, "apply")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = run_dir / "results" / "apply_images"
    fs = open_store(res / "features" / "s0000.zarr")
    ids = [str(i) for i in read_ids(fs)]
    assert len(ids) == 3
    model = load_model(run_dir / "results" / "tinyscene" / "seed0" / "model.zarr", device="cpu")
    for i, image_id in enumerate(ids):
        seg = model.segment(
            new / "images" / f"{image_id}.png", features=stored_features(fs, "k", i)
        )
        png = np.asarray(Image.open(res / "seed0" / "pred" / "s0000" / f"{image_id}.png"))
        assert np.array_equal(png, seg.classes), image_id
        assert seg.classes.max() < len(SCENE_CLASSES) and seg.foreground.all()
    m = json.loads((res / "seed0" / "metrics.json").read_text())
    assert len(m["mapping"]) == len(SCENE_CLASSES)
    assert (res / "report.html").exists()


def test_the_scene_graph_stands_in_for_segment_and_leaves_objects_runs_alone():
    from lcseg_steps import pipeline

    objects = default_config()
    scene = default_config()
    scene["labels"].update(scope="scene", n_classes=len(SCENE_CLASSES))
    g = pipeline.graph(scene)
    assert list(g) == [
        "index",
        "extract",
        "scene_dataset",
        "scene_levels",
        "scene_refine",
        "scene_model",
        "evaluate",
    ]
    assert g["evaluate"]["semantic"] == "scene_refine.semantic"
    assert "classes" not in g["evaluate"]
    assert pipeline.provider(scene, "segment") == "scene_refine"
    g = pipeline.graph(objects)
    assert not any(stage.startswith("scene_") for stage in g)
    assert g["evaluate"]["semantic"] == "segment.semantic"
    assert pipeline.provider(objects, "segment") == "segment"
    # every mode of apply and of the analysis baselines runs no scene stage
    for kind in ("baseline", pipeline.APPLY):
        assert not any(s.startswith("scene_") for s in pipeline.graph(objects, kind))
    # apply in scene mode: the image level and the pixels, the classes from the model
    g = pipeline.graph(scene, pipeline.APPLY)
    assert list(g) == ["index", "extract", "scene_levels", "scene_refine", "evaluate"]
    assert g["scene_levels"] == {"features": "extract.features", "model": "model.model"}
