import numpy as np
import pytest
import torch
from scipy import ndimage

from lcseg_steps.data.images import read_rgb
from lcseg_steps.perimage.regions import (
    masked_key_descriptor,
    object_regions,
    region_crop,
)
from lcseg_steps.stages.assign import run_assign
from lcseg_steps.stages.objects import run_objects
from lcseg_steps.stores.layout import open_store, pixel_layout, pixel_map, read_ids, write_store
from tests.hand_shard import ATTRS, OBJ_KW, SHARD, SIZES, TINY_VIT, D, _quiet

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
    from lcseg_steps.perimage.regions import object_regions

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
    mode="split")`` of its mask and feature grid. Permissive settings, so that the hand
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
