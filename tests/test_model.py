"""The fitted model of a run (issue 22): ``seed<s>/model.zarr``, ``load_model(path)
.segment(image)``, ``lcseg segment`` and ``lcseg inspect`` on it, and the errors of a model
used with another backbone or damaged. On the tiny demo run that other tests share."""

import json
import shutil

import numpy as np
import pytest

from lcseg_steps.apply.model_zarr import (
    FORMAT_VERSION,
    ModelError,
    ModelMismatchError,
    load_model,
)
from lcseg_steps.cli import main as lcseg
from lcseg_steps.data.image_table import read_index
from lcseg_steps.data.images import read_rgb
from lcseg_steps.data.palette import read_label_png
from lcseg_steps.stores.inspect import describe
from lcseg_steps.stores.layout import image_rows, open_store, read_ids
from tests.helpers import assert_forward_close, stored_features

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_path(tiny_run):
    return tiny_run / "results" / "tiny" / "seed0" / "model.zarr"


@pytest.fixture
def model_copy(model_path, tmp_path):
    dst = tmp_path / "model.zarr"
    shutil.copytree(model_path, dst)
    return dst


def _set_attr(path, **attrs):
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"].update(attrs)
    meta.write_text(json.dumps(doc))


def test_the_model_gives_the_runs_own_dataset_and_category_masks(tiny_run, model_path):
    """Applied to the run's own images, the model extracts the stored features (within the
    forward-pass tolerance: the job ran batched on two threads) and labels them with the
    nearest dataset and category centroids: from the stored features exactly the run's
    level masks (the fits label by nearest centroid too) and each image's
    pseudo-category."""
    res = tiny_run / "results" / "tiny"
    model = load_model(model_path)
    path_of = {r.image_id: tiny_run / r.path for r in read_index(res / "images.tsv")}
    for shard in ("s0000", "s0001"):
        fs = open_store(res / "features" / f"{shard}.zarr")
        pm = open_store(res / "seed0" / "patch_masks" / f"{shard}.zarr")
        for i, image_id in enumerate(read_ids(fs)):
            image = read_rgb(path_of[image_id])
            assert_forward_close(model.features(image)["X"], image_rows(fs, "k", i), image_id)
            seg = model.segment(image, features=stored_features(fs, "k", i))
            assert seg.grid == tuple(int(x) for x in fs["grid"][i])
            for level in ("dataset", "category"):
                np.testing.assert_array_equal(
                    seg.level_masks[level], image_rows(pm, f"mask_{level}", i), err_msg=image_id
                )
                np.testing.assert_array_equal(
                    seg.level_labels[level], image_rows(pm, f"label_{level}", i)
                )
            assert seg.category == int(pm["category"][i])
            assert seg.classes.shape == seg.foreground.shape == image.shape[:2]
            assert seg.classes.dtype == np.uint8 and seg.classes.max() <= 2
            assert ((seg.classes > 0) <= (seg.foreground > 0)).all()


def test_the_model_records_how_it_was_fitted(model_path):
    model = load_model(model_path)
    a = model.attrs
    assert a["format_version"] == FORMAT_VERSION and a["backbone"]["weights"] == "random:seed=0"
    assert model.fitted_to == {
        "backbone": "vit_small_patch16_224",
        "layer": -1,
        "feature": "k",
        "patch_size": 16,
        "long_side": 64,
    }
    assert a["long_side"] == 64 and a["seed"] == 0 and len(a["settings_digest"]) == 16
    assert a["merge"]["levels"] == ["dataset", "category", "image"]
    assert a["image_level"]["k_image"] == 2 and a["refine"]["crf"] is True
    assert a["refine"]["max_side"] == 800  # the working resolution (schema default)
    assert model.arrays["dataset_centroids"].shape == (8, 48)
    assert model.arrays["category_centroids"].shape == (2, 2, 48)
    assert model.arrays["class_prototypes"].shape == (2, 48)
    text = describe(model_path)
    assert text.startswith("lcseg model") and "8 centroids" in text and "2 prototypes" in text


def test_lcseg_segment_writes_a_png_per_image(tiny_run, model_path, tmp_path, capsys):
    """Each PNG holds the classes ``segment()`` gives its image in this process (the same
    forward passes, batched as lcseg segment batches them)."""
    folder = tiny_run / "results" / "tiny" / "demo" / "JPEGImages"
    images = [folder / "demo_0001.jpg", folder / "demo_0004.jpg"]
    out = tmp_path / "pred"
    assert lcseg(["segment", "--model", str(model_path), *map(str, images), "-o", str(out)]) == 0
    model = load_model(model_path)
    feats = model.features_batch([read_rgb(img) for img in images])
    for img, f in zip(images, feats, strict=True):
        png = read_label_png(out / f"{img.name}.png")
        np.testing.assert_array_equal(png, model.segment(read_rgb(img), features=f).classes)
    assert "foreground" in capsys.readouterr().out


def test_a_photo_is_segmented_as_viewers_show_it(tiny_run, model_path, tmp_path):
    """A file with EXIF orientation 6 (a portrait phone shot) is segmented turned: the
    same result as its stored pixels turned by hand, by segment and by lcseg segment."""
    from tests.fixtures_data import write_exif_jpeg

    src = tiny_run / "results" / "tiny" / "demo" / "JPEGImages" / "demo_0001.jpg"
    path = write_exif_jpeg(tmp_path / "photo.jpg", read_rgb(src), 6)
    by_hand = np.ascontiguousarray(np.rot90(read_rgb(path), -1))
    assert by_hand.shape[0] != by_hand.shape[1]
    model = load_model(model_path)
    seg, ref = model.segment(path), model.segment(by_hand)
    assert seg.classes.shape == by_hand.shape[:2] and seg.grid == ref.grid
    np.testing.assert_array_equal(seg.score, ref.score)
    np.testing.assert_array_equal(seg.foreground, ref.foreground)
    np.testing.assert_array_equal(seg.classes, ref.classes)
    assert lcseg(["segment", "--model", str(model_path), str(path), "-o", str(tmp_path)]) == 0
    np.testing.assert_array_equal(read_label_png(tmp_path / "photo.jpg.png"), ref.classes)


def test_the_working_resolution_comes_from_the_model(tiny_run, model_copy):
    """segment refines at the model's refine.max_side; a model written before the key
    refines at full resolution, as it did then."""
    from lcseg_steps.perimage.crf import CRFParams, refine_mask, refine_max_side

    image = read_rgb(tiny_run / "results" / "tiny" / "demo" / "JPEGImages" / "demo_0001.jpg")
    refine = dict(load_model(model_copy).attrs["refine"])
    _set_attr(model_copy, refine={**refine, "max_side": 40})
    model = load_model(model_copy)
    seg = model.segment(image)
    r = model.attrs["refine"]
    params = CRFParams(**{k: r[k] for k in CRFParams.__dataclass_fields__})
    kw = {"crf": r["crf"], "threshold": r["threshold"], "params": params}
    grid = seg.score.reshape(seg.grid)
    assert max(image.shape[:2]) > 40 and seg.foreground.shape == image.shape[:2]
    np.testing.assert_array_equal(seg.foreground, refine_mask(image, grid, **kw, max_side=40))
    del refine["max_side"]
    _set_attr(model_copy, refine=refine)
    old = load_model(model_copy)
    assert refine_max_side(old.attrs["refine"]) is None
    np.testing.assert_array_equal(old.segment(image).foreground, refine_mask(image, grid, **kw))


def test_a_large_jpeg_is_refined_from_a_reduced_decode(tiny_run, model_copy, tmp_path):
    """A JPEG file of at least twice ``refine.max_side`` is refined from the reduced decode
    the ``refine`` stage uses (``crf.refine_input``), by ``segment(path)`` and by ``lcseg
    segment`` alike (``--jobs`` 1 and 2); the mask has the full size."""
    import cv2

    from lcseg_steps.perimage.crf import refine_foreground, refine_input

    image = read_rgb(tiny_run / "results" / "tiny" / "demo" / "JPEGImages" / "demo_0001.jpg")
    image = cv2.resize(image, (image.shape[1] * 4, image.shape[0] * 4))
    refine = dict(load_model(model_copy).attrs["refine"])
    _set_attr(model_copy, refine={**refine, "max_side": 60})
    model = load_model(model_copy)
    path = tmp_path / "photos" / "big.jpg"
    path.parent.mkdir()
    from PIL import Image

    Image.fromarray(image).save(path, quality=95)
    shutil.copy(path, path.parent / "twin.jpg")  # two images: --jobs 2 runs its pool
    assert max(image.shape[:2]) >= 4 * 60
    seg = model.segment(path)
    work, size = refine_input(path, "exif", 60)
    assert size == image.shape[:2] and max(work.shape[:2]) < max(size)
    grid = seg.score.reshape(seg.grid)
    want = refine_foreground(work, grid, model.attrs["refine"], size)
    np.testing.assert_array_equal(seg.foreground, want)
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        args = ["segment", "--model", str(model_copy), str(path.parent)]
        assert lcseg([*args, "-o", str(out), "--jobs", jobs]) == 0
        for name in ("big.jpg", "twin.jpg"):
            np.testing.assert_array_equal(read_label_png(out / f"{name}.png"), seg.classes)


@pytest.mark.parametrize("descriptor", ["masked_keys", "cls"])
def test_split_regions_come_from_the_model(tiny_run, model_copy, descriptor):
    """A model with regions split cuts the foreground as ``object_regions(...,
    regions="split")`` on the image's feature grid, with the model's split settings."""
    from lcseg_steps.perimage.regions import object_regions

    image = read_rgb(tiny_run / "results" / "tiny" / "demo" / "JPEGImages" / "demo_0001.jpg")
    split = {"max_parts": 3, "min_silhouette": -1.0, "min_share": 0.0, "coherence": 0.0, "seed": 0}
    objects = dict(load_model(model_copy).attrs["objects"])
    _set_attr(
        model_copy,
        objects={**objects, "regions": "split", "descriptor": descriptor, "split": split},
    )
    model = load_model(model_copy)
    assert "split" in model.summary()
    seg = model.segment(image)
    X = model.features(image)["X"].astype(np.float32).reshape(*seg.grid, -1)
    regs = object_regions(
        seg.foreground,
        regions="split",
        min_region_area=objects["min_region_area"],
        features_grid=X,
        split=split,
    )
    want = np.zeros(seg.foreground.shape, np.int64)
    for j, reg in enumerate(regs):
        want[reg] = j + 1
    assert len(regs) == len(seg.region_classes) > 0
    np.testing.assert_array_equal(seg.region_map, want)


def test_a_model_used_with_another_backbone_layer_feature_or_patch_stops(model_path):
    with pytest.raises(ModelMismatchError, match="dino_vits16.*vit_small_patch16_224"):
        load_model(model_path, expect={"backbone": "dino_vits16"})
    model = load_model(model_path)
    for key, other, fitted in (
        ("layer", 5, "-1"),
        ("feature", "v", "'k'"),
        ("patch_size", 8, "16"),
    ):
        with pytest.raises(ModelMismatchError, match=f"{key} {other!r}.*{key} {fitted}"):
            model.check(**{key: other})
    fs = {"backbone": "vit_small_patch16_224", "layer": -1, "patch_size": 14}
    with pytest.raises(ModelMismatchError, match="patch_size 14.*patch_size 16"):
        model.check_features(fs, feature="k")


def test_a_backbone_that_builds_another_patch_size_stops(model_copy):
    overrides = {"depth": 2, "embed_dim": 48, "num_heads": 2, "patch_size": 8}
    bb = {**load_model(model_copy).backbone, "overrides": overrides}
    _set_attr(model_copy, backbone=bb)
    with pytest.raises(ModelMismatchError, match="patch_size 8 .*patch_size 16"):
        load_model(model_copy).segment(np.zeros((64, 64, 3), np.uint8))


def test_a_newer_format_version_stops_naming_the_file(model_copy):
    _set_attr(model_copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelError, match=f"{model_copy}.*newer"):
        load_model(model_copy)


@pytest.mark.parametrize("damage", ["chunk", "missing chunk", "metadata"])
def test_a_truncated_model_stops_naming_the_file(model_copy, damage):
    chunk = model_copy / "dataset_centroids" / "c" / "0" / "0"
    if damage == "chunk":
        chunk.write_bytes(chunk.read_bytes()[:20])
    elif damage == "missing chunk":
        chunk.unlink()
    else:
        meta = model_copy / "zarr.json"
        meta.write_text(meta.read_text()[:100])
    with pytest.raises(ModelError, match=str(model_copy)) as e:
        load_model(model_copy)
    if damage != "metadata":  # the store's own check names the chunk (stores.checks)
        assert "'dataset_centroids', chunk c/0/0" in str(e.value), e.value
        assert "snakemake --forcerun model" in str(e.value), e.value
    assert lcseg(["segment", "--model", str(model_copy), "x.jpg", "-o", "out"]) == 2


def test_the_model_records_each_per_image_stages_settings_as_its_rule_got_them(
    tiny_run, model_path
):
    """One home for a per-image option: model.zarr holds the settings each per-image stage
    recorded in its own store (pipeline.PER_IMAGE), key for key, and segment() passes them
    to the same library functions."""
    from lcseg_steps.pipeline import PER_IMAGE

    res = tiny_run / "results" / "tiny"
    stores = {
        "image_level": res / "seed0" / "image_level" / "s0000.zarr",
        "merge": res / "seed0" / "patch_masks" / "s0000.zarr",
        "refine": res / "seed0" / "pixel_masks" / "s0000.zarr",
        "objects": res / "seed0" / "objects" / "s0000.zarr",
    }
    a = load_model(model_path).attrs
    assert set(stores) == set(PER_IMAGE)
    for stage, store in stores.items():
        assert a[stage] == dict(open_store(store).attrs)["settings"], stage


def test_a_version_1_model_still_loads_and_segments_alike(tiny_run, model_copy, model_path):
    """A model written before format 2 (its image level's and merge's settings without the
    clustered feature) loads and segments as the same model written today."""
    doc = json.loads((model_copy / "zarr.json").read_text())
    attrs = doc["attributes"]
    for stage in ("image_level", "merge"):
        attrs[stage].pop("feature")
    attrs["format_version"] = 1
    (model_copy / "zarr.json").write_text(json.dumps(doc))
    image = read_rgb(tiny_run / "results" / "tiny" / "demo" / "JPEGImages" / "demo_0002.jpg")
    old, new = load_model(model_copy), load_model(model_path)
    f = new.features(image)
    a, b = old.segment(image, features=f), new.segment(image, features=f)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.score, b.score)
