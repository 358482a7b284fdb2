"""Every bad-input case of issue 7 ("Reliability") in one place, each run through the stage
(or pure function) that meets it first.

A case passes when the input gives a clear error naming the file or config key and what
is wrong, or a documented, logged handling; and when a failing stage leaves whatever was
already computed at its output path untouched (no half store left behind).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import cv2
import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from snakemake.utils import validate

from lcseg_steps.data.image_table import (
    ImageRecord,
    build_index,
    index_dataset,
    list_images,
    read_skipped,
    write_skipped,
)
from lcseg_steps.data.images import ImageError, read_rgb
from lcseg_steps.data.palette import write_label_png
from lcseg_steps.perimage.backbone import load_backbone
from lcseg_steps.stages.assign import run_assign
from lcseg_steps.stages.evaluate import run_evaluate
from lcseg_steps.stages.extract import extract_shard
from lcseg_steps.stages.fit_dataset import run_fit_dataset
from lcseg_steps.stages.image_level import run_image_level
from lcseg_steps.stages.merge import run_merge
from lcseg_steps.stages.objects import run_objects
from lcseg_steps.stages.refine import run_refine
from lcseg_steps.stores.layout import (
    image_rows,
    open_store,
    pixel_layout,
    pixel_map,
    read_ids,
    write_store,
)
from tests.fixtures_data import VOC_IMAGES, VOC_VAL, make_voc
from tests.schema_defaults import crf_settings

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
CONFIG = REPO / "config.yaml"
VIT = "vit_small_patch16_224"
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
PATCH = 16
D = 8  # width of the hand-made feature stores
KMEANS = {"max_iter": 10, "tol": 1e-4, "seed": 0, "device": "cpu", "attrs": {"test": True}}


@pytest.fixture(scope="module")
def vit():
    return load_backbone(VIT, "random", seed=0, overrides=TINY)


def _quiet(_msg: str) -> None:
    pass


def _extract(records, out, vit, **kw):
    model, info = vit
    opts = {
        "long_side": None,
        "batch_size": 4,
        "num_workers": 0,
        "precision": "float32",
        "log": _quiet,
    }
    return extract_shard(records, model, info, out, **{**opts, **kw})


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a store (or one file) with its bytes."""
    path = Path(path)
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _previous_store(path: Path) -> dict[str, bytes]:
    """A complete store of an earlier run at ``path``; returns its snapshot."""
    write_store(path, {"previous": np.arange(7)}, {"stage": "an earlier run"})
    return _snapshot(path)


def _assert_kept(path: Path, before: dict[str, bytes]) -> None:
    path = Path(path)
    assert _snapshot(path) == before, f"{path} was changed by a failed run"
    assert not list(path.parent.glob(f"{path.name}.tmp-*")), "a half-written store was left"


def _voc_cfg(root: Path) -> dict:
    return {"name": "voc12", "root": str(root), "split": "val", "extra_lists": []}


def _voc_records(root: Path) -> list[ImageRecord]:
    """The val images of ``make_voc`` with their true sizes, as an index would hold them."""
    out = []
    for image_id in VOC_VAL:
        h, w, _ = VOC_IMAGES[image_id]
        path = str(root / "JPEGImages" / f"{image_id}.jpg")
        gt = str(root / "SegmentationClass" / f"{image_id}.png")
        out.append(ImageRecord(image_id, path, gt, h, w, "s0000"))
    return out


# ---------------------------------------------------------------------------------------
# image files: the index reads headers, extract decodes pixels


def _corrupt(p: Path) -> None:
    p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(200))


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 6 // 10])  # the header survives, the scan does not


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


@pytest.mark.parametrize(
    "damage, index_error, extract_error",
    [
        # (how the file is damaged, what the index says (it decodes every image, so a
        #  truncated file whose header reads fine is caught too), what extract says)
        (_corrupt, "not a decodable image", "not a decodable image"),
        (
            _truncate,
            r"not a decodable image \(corrupt, truncated",
            r"not a decodable image \(corrupt, truncated",
        ),
        (_empty, "image file is empty", "image file is empty"),
        (_directory, "is a directory, not an image file", "is a directory, not an image file"),
    ],
    ids=["corrupt_jpeg", "truncated_jpeg", "zero_byte_file", "directory_as_image"],
)
def test_bad_image_file(tmp_path, vit, damage, index_error, extract_error):
    root = make_voc(tmp_path / "voc")
    bad_id = VOC_VAL[2]
    bad = root / "JPEGImages" / f"{bad_id}.jpg"
    damage(bad)
    where = re.escape(str(bad))

    with pytest.raises(ImageError, match=f"{where}: {index_error}"):
        build_index(_voc_cfg(root), shard_size=10, log=_quiet)
    # skipped instead with dataset.on_bad_image: skip
    kept, skipped = index_dataset({**_voc_cfg(root), "on_bad_image": "skip"}, 10, _quiet)
    assert [r.image_id for r in kept] == [i for i in VOC_VAL if i != bad_id]
    assert [(s.image_id, s.path) for s in skipped] == [(bad_id, str(bad))]

    # an index built before the file went bad: extract meets it and keeps the old store
    out = tmp_path / "features" / "s0000.zarr"
    before = _previous_store(out)
    with pytest.raises(ImageError, match=f"{where}: {extract_error}"):
        _extract(_voc_records(root), out, vit)
    _assert_kept(out, before)


# ---------------------------------------------------------------------------------------
# colour formats: decoded to RGB, same q/k/v as the equivalent RGB image


def _base_rgb() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = rng.integers(20, 236, (48, 64, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)  # smooth, so JPEG keeps it close


def _gray_jpeg(base, p):
    p = p.with_suffix(".jpg")
    Image.fromarray(base[..., 1]).save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "L"
        return p, np.array(im.convert("RGB"))


def _cmyk_jpeg(base, p):
    p = p.with_suffix(".jpg")
    Image.fromarray(base).convert("CMYK").save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
        return p, np.array(im.convert("RGB"))


def _rgba_png(base, p):
    p = p.with_suffix(".png")
    alpha = np.random.default_rng(4).integers(0, 256, base.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([base, alpha]), mode="RGBA").save(p)
    return p, base  # alpha dropped, not composited


def _png16(base, p):
    p = p.with_suffix(".png")
    assert cv2.imwrite(str(p), base[..., ::-1].astype(np.uint16) * 257)
    assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return p, base  # the 8-bit image it was made from, not a min-max stretch of it


def _palette_png(base, p):
    p = p.with_suffix(".png")
    pal = Image.fromarray(base).quantize(32)
    pal.save(p)
    with Image.open(p) as im:
        assert im.mode == "P"
    return p, np.array(pal.convert("RGB"))


@pytest.mark.parametrize(
    "write, max_pixel_diff",
    [(_gray_jpeg, 0), (_cmyk_jpeg, 1), (_rgba_png, 0), (_png16, 0), (_palette_png, 0)],
    # CMYK -> RGB rounds differently in OpenCV and Pillow: at most one grey level apart
    ids=["grayscale_jpeg", "cmyk_jpeg", "rgba_png", "png_16bit", "palette_png"],
)
def test_colour_format_decodes_to_rgb_with_the_same_features(tmp_path, vit, write, max_pixel_diff):
    path, want = write(_base_rgb(), tmp_path / "odd")
    got = read_rgb(path)
    assert got.shape == (*want.shape[:2], 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() <= max_pixel_diff

    rgb = tmp_path / "plain.png"
    assert cv2.imwrite(str(rgb), want[..., ::-1])
    h, w = want.shape[:2]
    recs = [ImageRecord("odd", str(path), "", h, w), ImageRecord("plain", str(rgb), "", h, w)]
    st = open_store(_extract(recs, tmp_path / "f.zarr", vit))
    for name in ("q", "k", "v"):
        a, b = image_rows(st, name, 0).astype(np.float32), image_rows(st, name, 1)
        if max_pixel_diff == 0:
            np.testing.assert_allclose(a, b, atol=2e-3, err_msg=name)
        else:
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            # one grey level everywhere: cosine ~0.9986 on this random ViT, while swapped
            # channels, inverted ink or a min-max stretch give 0.9 or far less
            assert cos.min() > 0.99, name


# ---------------------------------------------------------------------------------------
# images smaller than one patch: a clear error (not upscaled)


@pytest.mark.parametrize(
    "height, width, long_side",
    [(10, 12, None), (5, 600, 480), (600, 10, 480)],
    ids=["smaller_than_a_patch", "thinner_than_a_patch_in_height", "thinner_in_width"],
)
def test_image_smaller_than_one_patch(tmp_path, vit, height, width, long_side):
    ok = tmp_path / "ok.png"
    small = tmp_path / "small.png"
    cv2.imwrite(str(ok), np.full((32, 48, 3), 90, np.uint8))
    cv2.imwrite(str(small), np.full((height, width, 3), 90, np.uint8))
    recs = [
        ImageRecord("ok", str(ok), "", 32, 48),
        ImageRecord("small", str(small), "", height, width),
    ]
    out = tmp_path / "f.zarr"
    before = _previous_store(out)
    with pytest.raises(ImageError, match=rf"{re.escape(str(small))}: .*{height}x{width} px") as e:
        _extract(recs, out, vit, long_side=long_side)
    assert f"smaller than one {PATCH}px patch" in str(e.value)
    _assert_kept(out, before)


# ---------------------------------------------------------------------------------------
# ground truth when scoring


def _semantic_store(path: Path, recs: list[ImageRecord]) -> Path:
    maps = [np.zeros((r.height, r.width), np.uint8) for r in recs]
    lay = pixel_layout(maps)
    return write_store(
        path,
        {
            "semantic": lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": np.array([r.image_id for r in recs]),
        },
    )


def _evaluate(tmp_path, recs, semantic, log=_quiet):
    return run_evaluate(
        [semantic],
        recs,
        tmp_path / "metrics.json",
        tmp_path / "iou.png",
        tmp_path / "confusion.png",
        class_names=["background", "a", "b"],
        n_classes=2,
        matching="hungarian",
        facts={},
        log=log,
    )


def _missing_gt(root, rec):
    os.unlink(rec.gt)
    return FileNotFoundError, rf"{re.escape(rec.gt)}: ground-truth file of image {rec.image_id}"


def _gt_size_differs(root, rec):
    write_label_png(rec.gt, np.zeros((rec.height + 3, rec.width), np.uint8))
    return ValueError, (
        rf"{re.escape(rec.gt)}: ground truth of image {rec.image_id} is "
        rf"{rec.height + 3}x{rec.width} but the image is {rec.height}x{rec.width}"
    )


@pytest.mark.parametrize(
    "damage", [_missing_gt, _gt_size_differs], ids=["listed_image_without_gt", "gt_size_differs"]
)
def test_ground_truth_problem_names_the_file(tmp_path, damage):
    root = make_voc(tmp_path / "voc")
    recs = _voc_records(root)
    for r in recs:  # labels in 0..2 only, for a 3-class scoring
        write_label_png(r.gt, np.zeros((r.height, r.width), np.uint8))
    semantic = _semantic_store(tmp_path / "semantic.zarr", recs)
    (tmp_path / "metrics.json").write_text('{"miou": 0.5}')
    before = _snapshot(tmp_path / "metrics.json")
    exc, message = damage(root, recs[1])
    if damage is _missing_gt:  # the index meets it first
        with pytest.raises(exc, match=message):
            build_index(_voc_cfg(root), shard_size=10, log=_quiet)
    with pytest.raises(exc, match=message):
        _evaluate(tmp_path, recs, semantic)
    _assert_kept(tmp_path / "metrics.json", before)


def test_unlabelled_image_is_skipped_counted_and_logged(tmp_path):
    """An image listed without a ground-truth reference (a VOC extra list) is documented
    handling, not an error: it joins clustering but not scoring."""
    root = make_voc(tmp_path / "voc")
    recs = _voc_records(root)
    for r in recs:
        write_label_png(r.gt, np.zeros((r.height, r.width), np.uint8))
    recs[1] = ImageRecord(recs[1].image_id, recs[1].path, "", recs[1].height, recs[1].width)
    logs: list[str] = []
    metrics = _evaluate(tmp_path, recs, _semantic_store(tmp_path / "s.zarr", recs), logs.append)
    assert metrics["n_images_scored"] == 2 and metrics["n_images_unlabelled"] == 1
    assert any("1 unlabelled skipped" in m for m in logs)


# ---------------------------------------------------------------------------------------
# VOC split files


def test_duplicate_ids_in_a_voc_split_are_kept_once_with_a_warning(tmp_path):
    root = make_voc(tmp_path / "voc")
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("\n".join([*VOC_VAL, VOC_VAL[0], VOC_VAL[2], VOC_VAL[0]]) + "\n")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(split))}: 3 repeated image id") as w:
        recs = list_images(_voc_cfg(root))
    assert VOC_VAL[0] in str(w[0].message) and VOC_VAL[2] in str(w[0].message)
    assert [r.image_id for r in recs] == VOC_VAL


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty_split", "blank_lines_only"])
def test_empty_voc_split_names_the_file_and_key(tmp_path, content):
    root = make_voc(tmp_path / "voc")
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text(content)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(split))}: .*no image ids.*dataset\.split"
    ):
        list_images(_voc_cfg(root))


# ---------------------------------------------------------------------------------------
# empty foreground, empty shards, too few regions

SIZES = {"i0": (32, 48), "i1": (32, 48)}  # grids 2x3


def _features_store(path: Path, rng, ids=SIZES, bad_row=None, bad_value=np.nan) -> Path:
    grids = {i: (h // PATCH, w // PATCH) for i, (h, w) in ids.items()}
    sizes = [gh * gw for gh, gw in grids.values()]
    n = sum(sizes)
    k = rng.standard_normal((n, D)).astype(np.float16)
    if bad_row is not None:
        k[bad_row, 2] = bad_value
    return write_store(
        path,
        {
            "k": k,
            "cls": rng.standard_normal((len(ids), D)).astype(np.float16),
            "cls_attn": np.full(n, 0.1, np.float32),
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "grid": np.asarray(list(grids.values()), dtype=np.int32),
            "image_ids": np.array(list(ids)),
        },
        {"backbone": "fake"},
    )


def _pixel_masks(path: Path, masks: dict[str, np.ndarray]) -> Path:
    lay = pixel_layout(list(masks.values()))
    return write_store(
        path,
        {
            "mask": lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": np.array(list(masks)),
        },
    )


def _records(tmp_path: Path) -> list[ImageRecord]:
    out = []
    for image_id, (h, w) in SIZES.items():
        p = tmp_path / "img" / f"{image_id}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), np.full((h, w, 3), 100, np.uint8))
        out.append(ImageRecord(image_id, str(p), "", h, w, "s0000"))
    return out


def _objects(pixel_masks, features, recs, out, logs):
    return run_objects(
        pixel_masks,
        features,
        recs,
        out,
        regions="components",
        min_region_area=0.01,
        descriptor="masked_keys",
        margin=0.1,
        long_side=32,
        batch_size=2,
        feature="k",
        backbone={},
        device="cpu",
        attrs={},
        log=logs.append,
    )


def _assign(objects, out, n_classes):
    return run_assign(
        objects,
        [f"s{i:04d}" for i in range(len(objects))],
        out,
        n_classes=n_classes,
        class_clusterer="kmeans",
        n_neighbors=2,
        fit_sample=20000,
        seed=0,
        attrs={},
        log=_quiet,
    )


def test_image_without_foreground_after_merging_is_logged_and_stays_background(tmp_path):
    rng = np.random.default_rng(0)
    recs = _records(tmp_path)
    features = _features_store(tmp_path / "features.zarr", rng)
    fg = np.array([0, 1, 1, 0, 1, 0] + [0] * 6, np.uint8)  # image i1: no foreground patch
    il = write_store(
        tmp_path / "il.zarr",
        {"fg": fg, "labels": fg.astype(np.int16), "fg_cluster": np.array([1, -1])},
    )
    logs: list[str] = []
    pm = run_merge(
        features,
        il,
        None,
        None,
        tmp_path / "pm.zarr",
        feature="k",
        levels=["image"],
        consistency="union",
        min_levels=1,
        attrs={},
        log=logs.append,
    )
    assert any("1 of 2 image(s) with empty foreground" in m for m in logs)
    px = run_refine(
        pm,
        recs,
        tmp_path / "px.zarr",
        crf=False,
        threshold=0.5,
        **crf_settings(),
        processes=1,
        attrs={},
        log=logs.append,
    )
    assert not pixel_map(open_store(px), "mask", 1).any()
    assert any("1 empty mask(s)" in m for m in logs)
    ob = open_store(_objects(px, features, recs, tmp_path / "ob.zarr", logs))
    assert any("(1 without foreground)" in m for m in logs)
    assert set(np.asarray(ob["image_index"][:]).tolist()) == {0}
    assert not pixel_map(ob, "region_map", 1).any()


def test_shard_where_every_image_is_empty(tmp_path):
    rng = np.random.default_rng(1)
    recs = _records(tmp_path)
    features = _features_store(tmp_path / "features.zarr", rng)
    logs: list[str] = []
    empty = _pixel_masks(
        tmp_path / "empty_px.zarr", {i: np.zeros(s, np.uint8) for i, s in SIZES.items()}
    )
    ob_empty = _objects(empty, features, recs, tmp_path / "ob_empty.zarr", logs)
    assert any("0 regions in 2 images (2 without foreground)" in m for m in logs)
    assert open_store(ob_empty)["descriptors"].shape == (0, D)

    # with another shard that has regions, the empty shard just owns no rows
    masks = {i: np.zeros(s, np.uint8) for i, s in SIZES.items()}
    masks["i0"][0:16, 0:16] = 1
    masks["i1"][16:32, 16:48] = 1
    ob_full = _objects(
        _pixel_masks(tmp_path / "px.zarr", masks), features, recs, tmp_path / "ob.zarr", logs
    )
    cl = open_store(_assign([ob_empty, ob_full], tmp_path / "cl.zarr", n_classes=2))
    assert np.asarray(cl["region_offsets"][:]).tolist() == [0, 0, 2]

    # alone it cannot give any class: an error naming the key, the old classes kept
    out = tmp_path / "classes.zarr"
    before = _previous_store(out)
    with pytest.raises(ValueError, match=r"labels\.n_classes=1 but the masks gave only 0 object"):
        _assign([ob_empty], out, n_classes=1)
    _assert_kept(out, before)


def test_fewer_object_regions_than_classes(tmp_path):
    ob = write_store(tmp_path / "ob.zarr", {"descriptors": np.eye(3, D, dtype=np.float32)})
    out = tmp_path / "classes.zarr"
    before = _previous_store(out)
    with pytest.raises(ValueError, match=r"labels\.n_classes=4 but the masks gave only 3 object"):
        _assign([ob], out, n_classes=4)
    _assert_kept(out, before)


# ---------------------------------------------------------------------------------------
# config


def _set(section, key, value):
    def mutate(cfg):
        (cfg if section is None else cfg.setdefault(section, {}))[key] = value

    return mutate


CONFIG_CASES = {
    # wrong types
    "shard_size_string": (_set(None, "shard_size", "big"), "shard_size", "is not of type"),
    "k_image_float": (_set("clustering", "k_image", 2.5), "k_image", "is not of type"),
    "fg_vote_string": (_set("clustering", "fg_vote", "half"), "fg_vote", "is not of type"),
    "store_features_str": (_set("extract", "store_features", "k"), "store_features", "not of type"),
    "crf_string": (_set("refine", "crf", "yes"), "crf", "is not of type"),
    "n_classes_word": (_set("labels", "n_classes", "many"), "n_classes", "does not match '^auto$'"),
    "n_categories_float": (_set("clustering", "n_categories", 2.5), "n_categories", "not of type"),
    # unknown keys
    "unknown_top_key": (_set(None, "shardsize", 8), "shardsize", "Additional properties"),
    "unknown_nested_key": (_set("clustering", "kimage", 3), "kimage", "Additional properties"),
    "misspelt_weights": (_set("backbone", "wieghts", "random"), "wieghts", "Additional prop"),
    # out of range
    "k_image_1": (_set("clustering", "k_image", 1), "k_image", "less than the minimum of 2"),
    "k_dataset_1": (_set("clustering", "k_dataset", 1), "k_dataset", "less than the minimum"),
    "k_category_0": (_set("clustering", "k_category", 0), "k_category", "less than the minimum"),
    "n_categories_0": (_set("clustering", "n_categories", 0), "n_categories", "minimum of 1"),
    "n_classes_0": (_set("labels", "n_classes", 0), "n_classes", "less than the minimum of 1"),
    "fg_vote_0": (_set("clustering", "fg_vote", 0), "fg_vote", "less than or equal to the min"),
    "fg_vote_1": (_set("clustering", "fg_vote", 1), "fg_vote", "greater than or equal to the"),
    "fg_vote_negative": (_set("clustering", "fg_vote", -0.2), "fg_vote", "less than or equal"),
    "fg_vote_above_1": (_set("clustering", "fg_vote", 1.5), "fg_vote", "greater than or equal"),
    "no_seeds": (_set(None, "seeds", []), "seeds", "should be non-empty"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_rejected_naming_the_key(case):
    mutate, key, problem = CONFIG_CASES[case]
    with open(CONFIG) as fh:
        cfg = yaml.safe_load(fh)
    validate(copy.deepcopy(cfg), SCHEMA)  # the unmodified config is valid
    mutate(cfg)
    with pytest.raises(Exception, match=re.escape(problem)) as err:
        validate(cfg, SCHEMA)
    assert re.search(rf"\b{key}\b", str(err.value)), str(err.value)


@pytest.fixture
def offline_no_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))


def _unknown_name(tmp_path):
    return (
        ("vit_no_such_model_v9", "random"),
        ValueError,
        (r"backbone\.name: 'vit_no_such_model_v9' is not a known backbone"),
    )


def _unknown_name_pretrained(tmp_path):
    return ("vit_no_such_model_v9", "pretrained"), ValueError, r"backbone\.name: 'vit_no_such"


def _pretrained_offline(tmp_path):
    return (
        ("dino_vits16", "pretrained"),
        RuntimeError,
        (
            r"pretrained weights for backbone 'dino_vits16' .* cannot be obtained: HF_HUB_OFFLINE"
            r".*backbone\.weights: /path/"
        ),
    )


def _wrong_architecture(tmp_path):
    other, _ = load_backbone("vit_small_patch8_224", "random", overrides=TINY)
    path = tmp_path / "patch8.pth"
    torch.save(other.state_dict(), path)
    return (
        (VIT, str(path)),
        ValueError,
        (rf"{re.escape(str(path))}: checkpoint has \(8, 8\) px patches but the backbone expects"),
    )


def _wrong_width(tmp_path):
    other, _ = load_backbone(VIT, "random", overrides={**TINY, "embed_dim": 64})
    path = tmp_path / "wide.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    return (
        (VIT, str(path)),
        ValueError,
        (rf"{re.escape(str(path))}: checkpoint does not fit this backbone.*wrong shape"),
    )


@pytest.mark.parametrize(
    "case",
    [
        _unknown_name,
        _unknown_name_pretrained,
        _pretrained_offline,
        _wrong_architecture,
        _wrong_width,
    ],
    ids=[
        "unknown_backbone_name",
        "unknown_backbone_name_pretrained",
        "pretrained_weights_offline",
        "weights_of_other_patch_size",
        "weights_of_other_width",
    ],
)
def test_backbone_config_problem(tmp_path, offline_no_caches, case):
    (name, weights), exc, message = case(tmp_path)
    with pytest.raises(exc, match=message):
        load_backbone(name, weights, overrides=TINY)


# ---------------------------------------------------------------------------------------
# NaN / inf in a feature store: the clustering stages refuse it


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("stage", ["image_level", "fit_dataset"])
def test_non_finite_features_are_refused_naming_the_store(tmp_path, stage, bad_value):
    rng = np.random.default_rng(2)
    good = _features_store(tmp_path / "good.zarr", rng)
    bad = _features_store(tmp_path / "bad.zarr", rng, bad_row=8, bad_value=bad_value)
    message = rf"{re.escape(str(bad))}: 'k' features hold NaN or inf in 1 patch row.* 'i1'"
    out = tmp_path / f"{stage}.zarr"
    before = _previous_store(out)
    with pytest.raises(ValueError, match=message):
        if stage == "image_level":
            run_image_level(
                bad,
                out,
                feature="k",
                image_clusterer="kmeans",
                k_image=2,
                fg_rule="border",
                log=_quiet,
                **KMEANS,
            )
        else:
            il = run_image_level(
                good,
                tmp_path / "il.zarr",
                feature="k",
                image_clusterer="kmeans",
                k_image=2,
                fg_rule="border",
                log=_quiet,
                **KMEANS,
            )
            run_fit_dataset(
                [good, bad],
                [il, il],
                out,
                feature="k",
                k_dataset=2,
                fg_vote=0.5,
                init_sample=None,
                log=_quiet,
                **KMEANS,
            )
    _assert_kept(out, before)
    assert list(read_ids(open_store(bad))) == ["i0", "i1"]


# ---------------------------------------------------------------------------------------
# several odd images in one set: the index finds all of them at once, before extract


def _odd_voc(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``make_voc`` plus three odd val images: an empty .jpg, a truncated JPEG and an
    8x500 px image (fine to decode, too thin for one patch at long_side 480)."""
    root = make_voc(tmp_path / "voc")
    rng = np.random.default_rng(5)
    odd = {"odd_empty": "image file is empty", "odd_truncated": "not a decodable image"}
    odd["odd_thin"] = "image of 8x500 px resized to 480 on the long side is smaller than one"
    for image_id in odd:
        img = rng.integers(0, 256, (8, 500, 3) if image_id == "odd_thin" else (60, 80, 3))
        p = root / "JPEGImages" / f"{image_id}.jpg"
        assert cv2.imwrite(str(p), img.astype(np.uint8))
        write_label_png(
            root / "SegmentationClass" / f"{image_id}.png", np.zeros(img.shape[:2], np.uint8)
        )
    _empty(root / "JPEGImages" / "odd_empty.jpg")
    _truncate(root / "JPEGImages" / "odd_truncated.jpg")
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("\n".join([VOC_VAL[0], *odd, *VOC_VAL[1:]]) + "\n")
    return root, odd


def test_index_names_every_odd_image_at_once(tmp_path):
    root, odd = _odd_voc(tmp_path)
    with pytest.raises(ImageError) as err:
        index_dataset(_voc_cfg(root), 2, _quiet, patch_size=PATCH, long_side=480, threads=2)
    message = str(err.value)
    assert "3 of 6 images cannot be used" in message and "on_bad_image" in message
    for image_id, reason in odd.items():
        assert f"{root / 'JPEGImages' / image_id}.jpg: {reason}" in message, message
    # the default of voc12 is error; with skip the others are kept and fill every shard
    cfg = {**_voc_cfg(root), "on_bad_image": "skip"}
    kept, skipped = index_dataset(cfg, 2, _quiet, patch_size=PATCH, long_side=480, threads=2)
    assert [s.image_id for s in skipped] == list(odd)
    assert [r.image_id for r in kept] == VOC_VAL
    assert [r.shard for r in kept] == ["s0000", "s0001", "s0002"]  # 6 listed: 3 shards
    out = tmp_path / "skipped.tsv"
    write_skipped(skipped, out)
    assert out.read_text().splitlines()[0] == "id\tpath\treason"
    assert read_skipped(out) == skipped
    write_skipped([], out)
    assert out.read_text() == "id\tpath\treason\n" and read_skipped(out) == []
    # fewer usable images than shards: a clear error
    with pytest.raises(ValueError, match="only 3 usable image.*6 shards"):
        index_dataset(cfg, 1, _quiet, patch_size=PATCH, long_side=480)


CONTRADICTIONS = {
    "feature_not_stored": (
        {"extract": {"store_features": ["q", "v"]}},
        r"clustering\.feature is 'k' but extract\.store_features \['q', 'v'\]",
    ),
    "min_levels_above_levels": (
        {"clustering": {"levels": ["image"]}},
        r"clustering\.min_levels is 2 but only 1 level\(s\) are enabled \(image\)",
    ),
    "graph_split_k3": (
        {"clustering": {"image_clusterer": "ncut", "k_image": 3}},
        r"image_clusterer 'ncut' splits each image in two: clustering\.k_image must be 2",
    ),
    "auto_range_reversed": (
        {"clustering": {"n_categories": "auto", "auto_range": [9, 3]}},
        r"clustering\.auto_range is \[9, 3\]: its min is above its max",
    ),
    "auto_fit_sample_too_small": (
        {"labels": {"n_classes": "auto", "auto_range": [5, 20], "fit_sample": 5}},
        r"labels\.fit_sample is 5 but labels\.n_classes auto needs more regions",
    ),
}


@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_contradicting_keys_are_named_before_any_job(case):
    from lcseg_steps.runner.settings import check_config, config_problems

    change, message = CONTRADICTIONS[case]
    with open(CONFIG) as fh:
        cfg = yaml.safe_load(fh)
    validate(cfg, SCHEMA)
    assert config_problems(cfg) == []
    for section, values in change.items():
        cfg[section].update(values)
    validate(cfg, SCHEMA)  # each key alone is valid
    with pytest.raises(ValueError, match=message):
        check_config(cfg)


def test_contradicting_keys_stop_the_dry_run(tmp_path):
    from tests.helpers import TINY, snakemake

    cfg = {**TINY, "clustering": {**TINY["clustering"], "levels": ["image"]}}
    r = snakemake(tmp_path, cfg, "-n")
    assert r.returncode != 0
    assert "clustering.min_levels is 2 but only 1 level(s)" in r.stdout + r.stderr
