"""`snakemake apply` (issue 22): the tiny run's model.zarr segments a folder of images it
never fitted, through the pipeline's `apply` rules, image by image as
``load_model(model).segment(image)`` does; a model of another backbone or long side stops
before any job; with masks the applied run is scored under every protocol."""

import copy
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from lcseg_steps import pipeline
from lcseg_steps.apply.config import apply_config, apply_run, locate_model, model_path
from lcseg_steps.apply.model_zarr import load_model
from lcseg_steps.data.image_table import read_index
from lcseg_steps.data.images import read_rgb
from lcseg_steps.data.palette import read_label_png, write_label_png
from lcseg_steps.evaluation.protocols import PROTOCOLS
from lcseg_steps.stores.layout import image_rows, open_store, read_ids
from tests.fixtures_data import write_exif_jpeg
from tests.helpers import (
    SCHEMA,
    TINY,
    assert_forward_close,
    reference_hungarian,
    scheduled,
    snakemake,
    stored_features,
)

pytestmark = pytest.mark.integration

NEW = ("demo_0001", "demo_0002", "demo_0005")  # three of the tiny run's images
PORTRAIT = "demo_0003"  # stored as a phone stores a portrait shot: EXIF orientation 6


@pytest.fixture(scope="module")
def model(tiny_run):
    return tiny_run / "results" / "tiny" / "seed0" / "model.zarr"


def _apply_config(model, **apply):
    cfg = copy.deepcopy(TINY)
    cfg["apply"] = {"model": str(model), "images": "new", **apply}
    return cfg


@pytest.fixture(scope="module")
def applied(tiny_run, model, tmp_path_factory):
    """A folder of images (one in a subfolder, one unreadable) and their masks, segmented
    and scored by `snakemake apply` in a working directory of its own."""
    wd = tmp_path_factory.mktemp("apply")
    demo = tiny_run / "results" / "tiny" / "demo"
    for image_id, sub in zip(NEW, ("", "", "sub/"), strict=True):
        for folder, src, ext in (
            ("new", "JPEGImages", "jpg"),
            ("masks", "SegmentationClass", "png"),
        ):
            (wd / folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(demo / src / f"{image_id}.{ext}", wd / folder / sub / f"{image_id}.{ext}")
    (wd / "new" / "broken.jpg").write_bytes(b"not a jpeg")
    # the portrait's stored pixels are the demo image turned back (a viewer turns them
    # clockwise), its mask is in the stored pixels' size (turned by the index)
    shown = read_rgb(demo / "JPEGImages" / f"{PORTRAIT}.jpg")
    write_exif_jpeg(wd / "new" / "portrait.jpg", np.ascontiguousarray(np.rot90(shown)), 6)
    gt = read_label_png(demo / "SegmentationClass" / f"{PORTRAIT}.png")
    write_label_png(wd / "masks" / "portrait.png", np.ascontiguousarray(np.rot90(gt)))
    cfg = _apply_config(model, masks="masks")
    r = snakemake(wd, cfg, "apply")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return wd, cfg


def test_apply_writes_predictions_a_report_and_skips_a_bad_image(applied):
    wd, cfg = applied
    res = wd / "results" / "apply_new"
    assert apply_run(cfg) == "apply_new" and (res / "report.html").stat().st_size > 0
    records = read_index(res / "images.tsv")
    assert [r.image_id for r in records] == [
        "demo_0001",
        "demo_0002",
        "portrait",
        "sub__demo_0005",
    ]
    assert [r.orientation for r in records] == [1, 1, 6, 1]
    assert "broken" in (res / "skipped.tsv").read_text()
    # the applied report warns about the random weights, as the run's does, and names
    # the model it applied
    page = (res / "report.html").read_text()
    assert 'class="warning"' in page and "random weights (random:seed=0)" in page
    assert str(cfg["apply"]["model"]) in page and "nothing was refitted" in page
    for r in records:
        png = read_label_png(res / "seed0" / "pred" / r.shard / f"{r.image_id}.png")
        assert png.shape == (r.height, r.width)
    # nothing fitted: no fit, assign or model job ran for the applied run
    assert not list(res.rglob("dataset_level*")) and not list(res.rglob("classes.zarr"))
    r = snakemake(wd, cfg, "apply", "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


def test_applied_predictions_equal_the_models_segment(applied, model):
    """Per image: the same features (within the forward-pass tolerance: the job ran
    batched on two threads), and from those features the same level masks, merged mask,
    refined mask and classes as ``load_model(model).segment(image)`` (the image level
    starts each image's k-means as if alone, as segment does; the shard holds three)."""
    wd, _ = applied
    res = wd / "results" / "apply_new"
    m = load_model(model)
    for r in read_index(res / "images.tsv"):
        fs = open_store(res / "features" / f"{r.shard}.zarr")
        pm = open_store(res / "seed0" / "patch_masks" / f"{r.shard}.zarr")
        i = list(read_ids(fs)).index(r.image_id)
        assert_forward_close(
            image_rows(fs, "k", i),
            m.features(read_rgb(wd / r.path, r.orientation))["X"],
            r.image_id,
        )
        seg = m.segment(wd / r.path, features=stored_features(fs, "k", i))
        for level, mask in seg.level_masks.items():
            np.testing.assert_array_equal(image_rows(pm, f"mask_{level}", i), mask, level)
        np.testing.assert_array_equal(image_rows(pm, "merged", i), seg.merged)
        png = read_label_png(res / "seed0" / "pred" / r.shard / f"{r.image_id}.png")
        np.testing.assert_array_equal(png, seg.classes)


def test_a_portrait_photo_is_segmented_as_viewers_show_it(applied, model, tiny_run):
    """EXIF orientation 6: indexed at its turned size, and its prediction is the model's
    segmentation of the stored pixels turned by hand (np.rot90), which here is the demo
    image itself; its mask, stored in raw pixels, is turned to match."""
    from lcseg_steps.data.image_table import load_ground_truth

    wd, _ = applied
    res = wd / "results" / "apply_new"
    r = next(r for r in read_index(res / "images.tsv") if r.image_id == "portrait")
    by_hand = np.ascontiguousarray(np.rot90(read_rgb(wd / r.path), -1))
    assert (r.orientation, r.height, r.width) == (6, *by_hand.shape[:2])
    assert by_hand.shape[0] != by_hand.shape[1]
    png = read_label_png(res / "seed0" / "pred" / r.shard / "portrait.png")
    fs = open_store(res / "features" / f"{r.shard}.zarr")
    f = stored_features(fs, "k", list(read_ids(fs)).index("portrait"))
    np.testing.assert_array_equal(png, load_model(model).segment(by_hand, features=f).classes)
    gt = load_ground_truth(dataclasses.replace(r, path=str(wd / r.path), gt=str(wd / r.gt)))
    demo = tiny_run / "results" / "tiny" / "demo" / "SegmentationClass"
    np.testing.assert_array_equal(gt, read_label_png(demo / f"{PORTRAIT}.png"))


def test_apply_with_masks_scores_every_protocol(applied):
    """The headline scores equal a recomputation from the written PNGs and the masks
    (``reference_hungarian``: one confusion, scipy's assignment)."""
    from lcseg_steps.data.image_table import load_ground_truth

    wd, _ = applied
    res = wd / "results" / "apply_new"
    metrics = json.loads((res / "seed0" / "metrics.json").read_text())
    assert metrics["run"] == "apply_new" and metrics["n_images_scored"] == 4
    assert metrics["headline_protocol"] == "dataset_hungarian"
    assert set(metrics["protocols"]) >= set(PROTOCOLS) - {"cause_voc", "cause_coco"}
    assert (res / "metrics_summary.json").exists()

    pairs = []
    for r in read_index(res / "images.tsv"):
        gt = load_ground_truth(dataclasses.replace(r, path=str(wd / r.path), gt=str(wd / r.gt)))
        pred = read_label_png(res / "seed0" / "pred" / r.shard / f"{r.image_id}.png")
        pairs.append((gt, pred))
    n_pred = int(metrics["n_classes"]) + 1
    miou, accuracy = reference_hungarian(pairs, len(metrics["per_class_iou"]), n_pred)
    assert metrics["miou"] == pytest.approx(miou, abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"backbone": {**TINY["backbone"], "name": "dino_vits16"}}, "dino_vits16.*vit_small"),
        ({"extract": {**TINY["extract"], "long_side": 96}}, "long_side 96.*long_side 64"),
    ],
)
def test_a_model_of_another_backbone_or_long_side_stops_at_once(model, tmp_path, change, named):
    (tmp_path / "new").mkdir()
    cfg = {**_apply_config(model), **change}
    r = snakemake(tmp_path, cfg, "apply")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "ModelMismatchError" in out, out[-2000:]
    assert re.search(named, out), out[-2000:]
    assert not (tmp_path / "results").exists()  # before any job


def test_without_masks_nothing_is_scored_and_the_run_name_is_the_models(model, tmp_path):
    """A run name means its first seed's model.zarr; without masks no evaluate job."""
    (tmp_path / "new").mkdir()
    shutil.copy(
        model.parents[2] / "tiny" / "demo" / "JPEGImages" / "demo_0003.jpg", tmp_path / "new"
    )
    run_dir = tmp_path / "results" / "tiny" / "seed0"
    run_dir.mkdir(parents=True)
    shutil.copytree(model, run_dir / "model.zarr")
    cfg = _apply_config("tiny", name="photos")
    assert model_path({**cfg, "seeds": [0]}) == "results/tiny/seed0/model.zarr"
    jobs = scheduled(snakemake(tmp_path, cfg, "apply", "-n"))
    assert "apply_evaluate" not in jobs and "apply_summary" not in jobs
    assert jobs["apply_segment"] == 1 and jobs["apply_report"] == 1
    assert not {"fit_dataset", "fit_category", "assign", "model", "extract"} & set(jobs)


def test_the_apply_graph_reads_the_model_in_place_of_the_fits(model):
    from snakemake.utils import validate

    given = _apply_config(model)
    validate(given, SCHEMA)  # fills in the defaults
    cfg = apply_config(given, str(model))
    g = pipeline.graph(cfg, pipeline.APPLY)
    assert list(g) == [
        "index",
        "extract",
        "image_level",
        "merge",
        "refine",
        "objects",
        "segment",
        "evaluate",
    ]
    assert g["merge"]["model"] == g["segment"]["model"] == "model.model"
    assert cfg["clustering"]["k_image"] == load_model(model).attrs["image_level"]["k_image"]


def test_apply_takes_the_models_region_mode_and_split_settings(model, tmp_path):
    """A model fitted with regions split applies with regions split and its own split
    settings, whatever the config says; a components model passes no split keys."""
    from snakemake.utils import validate

    given = _apply_config(model)
    validate(given, SCHEMA)
    assert "split" not in pipeline.stage_settings("objects", apply_config(given, str(model)))
    copy_ = tmp_path / "model.zarr"
    shutil.copytree(model, copy_)
    meta = copy_ / "zarr.json"
    doc = json.loads(meta.read_text())
    split = {"max_parts": 2, "min_silhouette": 0.5, "min_share": 0.2, "coherence": 0.8, "seed": 4}
    doc["attributes"]["objects"] = {
        **doc["attributes"]["objects"],
        "regions": "split",
        "split": split,
    }
    meta.write_text(json.dumps(doc))
    cfg = apply_config(given, str(copy_))
    settings = pipeline.stage_settings("objects", cfg)
    assert settings["regions"] == "split" and settings["split"] == split
    assert settings["feature"] == cfg["clustering"]["feature"]


def test_a_runs_folder_is_a_model_and_other_paths_say_what_they_are_not(model, tmp_path):
    """``apply.model: results/<run>`` takes the run's first-seed model.zarr, as a run name
    does; a path that is neither a run's folder nor a model store says so."""
    run = tmp_path / "results" / "tiny"
    (run / "seed0").mkdir(parents=True)
    shutil.copytree(model, run / "seed0" / "model.zarr")
    assert locate_model(str(run), 0) == str(run / "seed0" / "model.zarr")
    assert locate_model(f"{run}/", 0) == str(run / "seed0" / "model.zarr")
    assert locate_model(str(run / "seed0" / "model.zarr"), 5) == str(run / "seed0" / "model.zarr")
    with pytest.raises(ValueError, match=r"without seed3/model.zarr.*holds seed0/model.zarr"):
        locate_model(str(run), 3)
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match="neither a model store .* nor a run's folder"):
        locate_model(str(tmp_path / "photos"), 0)
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(ValueError, match="is a file, not a run's folder"):
        locate_model(str(tmp_path / "a.txt"), 0)
    # end to end: the run's folder plans the applied run; a photo folder is refused
    (tmp_path / "new").mkdir()
    shutil.copy(
        model.parents[2] / "tiny" / "demo" / "JPEGImages" / "demo_0003.jpg", tmp_path / "new"
    )
    jobs = scheduled(snakemake(tmp_path, _apply_config("results/tiny"), "apply", "-n"))
    assert jobs["apply_segment"] == 1 and "model" not in jobs
    r = snakemake(tmp_path, _apply_config(tmp_path / "photos"), "apply", "-n")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "neither a model store" in out, out[-2000:]
    assert "truncated or damaged" not in out
