import numpy as np
import pytest
import torch
from scipy import ndimage

from lcseg_steps.data.images import read_rgb
from lcseg_steps.perimage.regions import (
    masked_key_descriptor,
    object_regions,
    region_box,
    region_crop,
)
from lcseg_steps.stages.assign import run_assign
from lcseg_steps.stages.objects import run_objects
from lcseg_steps.stores.layout import open_store, pixel_layout, pixel_map, read_ids, write_store
from tests.hand_shard import ATTRS, OBJ_KW, SHARD, SIZES, TINY_VIT, D, _quiet


def _three_blobs() -> np.ndarray:
    """100x100 mask: a 20x20 square, a 10x15 rectangle with a diagonal tail, a 3x3 dot."""
    m = np.zeros((100, 100), np.uint8)
    m[5:25, 5:25] = 1  # 400 px
    m[50:60, 40:55] = 1  # 150 px
    m[60, 55] = m[61, 56] = 1  # joins the rectangle only through 8-connectivity
    m[90:93, 90:93] = 1  # 9 px < 0.01 * 100 * 100
    return m


def test_components_match_scipy_label():
    mask = _three_blobs()
    regions = object_regions(mask, regions="components", min_region_area=0.01)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    ref = [labels == k for k in range(1, n + 1)]
    ref = sorted((r for r in ref if r.sum() >= 100), key=lambda r: -r.sum())
    assert len(regions) == len(ref) == 2
    for got, want in zip(regions, ref, strict=True):
        assert got.dtype == bool and got.shape == mask.shape
        np.testing.assert_array_equal(got, want)
    assert [int(r.sum()) for r in regions] == [400, 152]


def test_components_beyond_16_bit_labels_match_scipy_label():
    """More than 65535 components (16-bit labels overflow): the same regions as scipy's
    labelling, for any mask dtype; nested and touching bounding boxes keep only their own
    pixels."""
    mask = np.zeros((600, 600), np.int64)
    mask[::2, ::2] = 1  # 90,000 isolated pixels
    mask[100:300, 100:300] = 1  # one 200x200 block swallowing some of them
    mask[140:160, 140:160] = 0  # a hole ...
    mask[145:155, 145:155] = 1  # ... with an island whose box lies inside the block's
    regions = object_regions(mask, min_region_area=0.0002)  # >= 72 px: the block, the island
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = ndimage.sum(mask > 0, labels, range(1, n + 1))
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= 72]
    assert n > 65535 and len(regions) == len(keep) == 2
    for got, k in zip(regions, keep, strict=True):
        np.testing.assert_array_equal(got, labels == k)
    for dtype in (bool, np.uint8):
        again = object_regions(mask.astype(dtype), min_region_area=0.0002)
        for got, want in zip(again, regions, strict=True):
            np.testing.assert_array_equal(got, want)


def test_min_area_zero_keeps_everything():
    regions = object_regions(_three_blobs(), min_region_area=0.0)
    assert [int(r.sum()) for r in regions] == [400, 152, 9]


def test_whole_and_empty():
    mask = _three_blobs()
    (whole,) = object_regions(mask, regions="whole")
    np.testing.assert_array_equal(whole, mask.astype(bool))
    empty = np.zeros((10, 10), np.uint8)
    assert object_regions(empty) == [] and object_regions(empty, regions="whole") == []
    with pytest.raises(ValueError, match="mode"):
        object_regions(mask, regions="blobs")


def test_region_box_margin_and_clipping():
    r = np.zeros((50, 60), bool)
    r[10:20, 20:40] = True  # 10 tall, 20 wide
    assert region_box(r, margin=0.0) == (10, 20, 20, 40)
    assert region_box(r, margin=0.1) == (9, 18, 21, 42)
    r2 = np.zeros((50, 60), bool)
    r2[0:10, 50:60] = True  # touches top and right borders
    assert region_box(r2, margin=0.5) == (0, 45, 15, 60)
    with pytest.raises(ValueError, match="empty"):
        region_box(np.zeros((5, 5), bool))


def test_region_crop_fills_outside_with_image_mean():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    r = np.zeros((40, 50), bool)
    r[10:20, 10:30] = True
    r[10, 10] = False  # a hole inside the box
    crop = region_crop(img, r, margin=0.1)
    y0, x0, y1, x1 = region_box(r, 0.1)
    assert crop.shape == (y1 - y0, x1 - x0, 3) and crop.dtype == np.uint8
    fill = np.round(img.reshape(-1, 3).astype(np.float64).mean(axis=0)).astype(np.uint8)
    inside = r[y0:y1, x0:x1]
    np.testing.assert_array_equal(crop[inside], img[y0:y1, x0:x1][inside])
    assert (crop[~inside] == fill).all()
    assert (crop[10 - y0, 10 - x0] == fill).all()


def _coverage_brute_force(region: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """Fraction of each patch rectangle inside the region, with fractional pixel overlap."""
    h, w = region.shape
    cov = np.zeros((gh, gw))
    for i in range(gh):
        ya, yb = i * h / gh, (i + 1) * h / gh
        for j in range(gw):
            xa, xb = j * w / gw, (j + 1) * w / gw
            acc = 0.0
            for y in range(int(np.floor(ya)), int(np.ceil(yb))):
                oy = min(yb, y + 1) - max(ya, y)
                for x in range(int(np.floor(xa)), int(np.ceil(xb))):
                    ox = min(xb, x + 1) - max(xa, x)
                    acc += oy * ox * region[y, x]
            cov[i, j] = acc / ((yb - ya) * (xb - xa))
    return cov


@pytest.mark.parametrize("shape", [(48, 64), (50, 70)])  # integer and fractional patch sizes
def test_masked_key_descriptor_matches_brute_force(shape):
    rng = np.random.default_rng(3)
    gh, gw, d = 3, 4, 5
    feats = rng.normal(size=(gh, gw, d)).astype(np.float16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    region = (yy - 20) ** 2 + (xx - 30) ** 2 < 15**2
    cov = _coverage_brute_force(region, gh, gw)
    want = (cov[..., None] * feats.astype(np.float64)).sum((0, 1)) / cov.sum()
    got = masked_key_descriptor(feats, region)
    assert got.shape == (d,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_masked_key_descriptor_single_patch_and_empty():
    feats = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    region = np.zeros((32, 32), bool)
    region[20:22, 3:5] = True  # inside patch (1, 0) only
    np.testing.assert_allclose(masked_key_descriptor(feats, region), feats[1, 0])
    with pytest.raises(ValueError, match="overlap"):
        masked_key_descriptor(feats, np.zeros((32, 32), bool))


# ---------------------------------------------------------------------------------------
# run_objects: the stage's store-to-store function on the hand-made shard (conftest.py)


def test_objects_masked_keys_regions_match_scipy_components(shard, objects_store):
    ob = open_store(objects_store)
    assert list(read_ids(ob)) == list(SIZES)
    image_index = np.asarray(ob["image_index"][:])
    desc = np.asarray(ob["descriptors"][:])
    assert desc.shape == (3, D) and desc.dtype == np.float32
    assert image_index.tolist() == [0, 0, 1]
    assert np.asarray(ob["component"][:]).tolist() == [0, 1, 0]
    assert np.asarray(ob["area"][:]).tolist() == [384, 257, 576]
    assert np.asarray(ob["box"][:]).shape == (3, 4)

    row = 0
    for i, image_id in enumerate(SIZES):
        mask = shard["masks"][image_id]
        h, w = mask.shape
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        comps = [labels == c for c in range(1, n + 1)]
        kept = sorted((c for c in comps if c.sum() >= 0.01 * h * w), key=lambda c: -c.sum())
        region_map = pixel_map(ob, "region_map", i)
        assert region_map.shape == (h, w)
        want_map = np.zeros((h, w), np.int64)
        for j, comp in enumerate(kept):
            want_map[comp] = j + 1
        np.testing.assert_array_equal(region_map, want_map)
        grid = shard["k"][image_id].astype(np.float32)
        for comp in kept:
            np.testing.assert_allclose(desc[row], masked_key_descriptor(grid, comp), rtol=1e-6)
            row += 1
    assert row == len(desc)

    # a0's largest region is patch-aligned (patch rows 1..3, cols 4..5): plain mean of k
    grid0 = shard["k"]["a0"].astype(np.float64)
    np.testing.assert_allclose(desc[0], grid0[1:4, 4:6].reshape(-1, D).mean(0), atol=1e-5)


def test_objects_empty_foreground_gives_no_region(shard, objects_store):
    ob = open_store(objects_store)
    assert 2 not in np.asarray(ob["image_index"][:]).tolist()
    m = pixel_map(ob, "region_map", 2)
    assert m.shape == SIZES["a2"] and not m.any()


def test_objects_all_empty_shard_gives_zero_rows_then_assign_refuses(shard, tmp_path):
    lay = pixel_layout([np.zeros(SIZES[i], np.uint8) for i in SIZES])
    px = write_store(
        tmp_path / "px.zarr",
        {
            "mask": lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": np.array(list(SIZES)),
        },
    )
    out = run_objects(
        px,
        shard["features"],
        list(shard["records"].values()),
        tmp_path / "ob.zarr",
        descriptor="masked_keys",
        backbone={},
        log=_quiet,
        **OBJ_KW,
    )
    ob = open_store(out)
    assert ob["descriptors"].shape == (0, D)
    assert ob["box"].shape == (0, 4)
    with pytest.raises(ValueError, match="labels.n_classes"):
        run_assign(
            [out],
            [SHARD],
            tmp_path / "cl.zarr",
            n_classes=1,
            class_clusterer="spectral",
            n_neighbors=3,
            fit_sample=20000,
            seed=0,
            attrs=ATTRS,
            log=_quiet,
        )


def test_objects_cls_descriptor_with_tiny_random_backbone(shard, tmp_path):
    torch.set_num_threads(1)
    out = run_objects(
        shard["pixel_masks"],
        shard["features"],
        list(shard["records"].values()),
        tmp_path / "ob_cls.zarr",
        descriptor="cls",
        backbone=TINY_VIT,
        log=_quiet,
        **OBJ_KW,
    )
    ob = open_store(out)
    desc = np.asarray(ob["descriptors"][:])
    assert desc.shape == (3, 32) and desc.dtype == np.float32
    assert np.isfinite(desc).all()
    assert np.abs(desc[0] - desc[2]).max() > 0  # different crops, different tokens
    assert np.asarray(ob["image_index"][:]).tolist() == [0, 0, 1]


def test_objects_cls_uses_the_weights_and_precision_of_the_features(shard, tmp_path, monkeypatch):
    """The crops are described by the backbone the features store names (here random with
    seed 5, while the config says auto/seed 0) under its precision, without a hub probe."""
    import lcseg_steps.perimage.backbone as bb
    from lcseg_steps.perimage.descriptors import crop_cls_descriptors
    from lcseg_steps.perimage.regions import object_regions, region_crop

    def no_probe(_url):
        raise AssertionError("objects must not probe the hub")

    monkeypatch.setattr(bb, "_unreachable", no_probe)
    torch.set_num_threads(1)
    fs = open_store(shard["features"])
    feats = tmp_path / "features.zarr"
    write_store(
        feats,
        {name: np.asarray(fs[name][:]) for name in ("k", "cls", "offsets", "grid")}
        | {"image_ids": read_ids(fs)},
        {"backbone": "fake", "weights": "random:seed=5", "precision": "bfloat16"},
    )
    config = {**TINY_VIT, "weights": "auto", "seed": 0}
    out = run_objects(
        shard["pixel_masks"],
        feats,
        list(shard["records"].values()),
        tmp_path / "ob.zarr",
        descriptor="cls",
        backbone=config,
        log=_quiet,
        **OBJ_KW,
    )
    got = np.asarray(open_store(out)["descriptors"][:])
    model, info = bb.load_backbone(
        TINY_VIT["name"], "random", seed=5, overrides=TINY_VIT["overrides"]
    )
    crops = []
    for image_id in ("a0", "a1"):
        img = read_rgb(shard["records"][image_id].path)
        for reg in object_regions(
            shard["masks"][image_id], min_region_area=OBJ_KW["min_region_area"]
        ):
            crops.append(region_crop(img, reg, OBJ_KW["margin"]))
    assert len(crops) == got.shape[0] == 3
    kw = {"long_side": OBJ_KW["long_side"], "batch_size": 2}
    want = crop_cls_descriptors(model, info, crops, bf16=True, **kw)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want, crop_cls_descriptors(model, info, crops, **kw))


def test_objects_more_than_255_regions_keep_their_ids(shard, tmp_path):
    h, w = SIZES["a0"]
    dots = np.zeros((h, w), np.uint8)
    dots[:20:2, ::2] = 1  # isolated even under 8-connectivity: 10 * 28 = 280 regions
    lay = pixel_layout([dots])
    px = write_store(
        tmp_path / "px.zarr",
        {
            "mask": lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": np.array(["a0"]),
        },
    )
    kw = {**OBJ_KW, "min_region_area": 0.0}
    out = run_objects(
        px,
        shard["features"],
        [shard["records"]["a0"]],
        tmp_path / "ob.zarr",
        descriptor="masked_keys",
        backbone={},
        log=_quiet,
        **kw,
    )
    ob = open_store(out)
    assert ob["descriptors"].shape[0] == 280
    assert int(pixel_map(ob, "region_map", 0).max()) == 280


@pytest.mark.parametrize("descriptor", ["masked_keys", "cls"])
def test_objects_split_regions_are_the_library_s_for_either_descriptor(shard, tmp_path, descriptor):
    """regions split in the stage: each image's regions are ``object_regions(...,
    regions="split")`` of its mask and feature grid. Permissive settings, so that the hand
    shard's components are really cut."""
    torch.set_num_threads(1)
    split = {"max_parts": 2, "min_silhouette": -1.0, "min_share": 0.0, "coherence": 0.0, "seed": 0}
    kw = {**OBJ_KW, "regions": "split"}
    out = run_objects(
        shard["pixel_masks"],
        shard["features"],
        list(shard["records"].values()),
        tmp_path / f"ob_{descriptor}.zarr",
        descriptor=descriptor,
        split=split,
        backbone=TINY_VIT,
        log=_quiet,
        **kw,
    )
    ob = open_store(out)
    n = 0
    for i, image_id in enumerate(SIZES):
        grid = shard["k"][image_id].astype(np.float32)
        mask = shard["masks"][image_id]
        regs = object_regions(
            mask, regions="split", min_region_area=0.01, features_grid=grid, split=split
        )
        want = np.zeros(mask.shape, np.int64)
        for j, reg in enumerate(regs):
            want[reg] = j + 1
        np.testing.assert_array_equal(pixel_map(ob, "region_map", i), want)
        n += len(regs)
    assert n > 3  # more regions than the 3 components
    desc = np.asarray(ob["descriptors"][:])
    assert desc.shape[0] == n and np.isfinite(desc).all()
