import re
from dataclasses import replace

import cv2
import numpy as np
import pytest

from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.data.images import ImageError
from lcseg_steps.perimage.crf import crf_refine, refine_mask, upsample_score
from lcseg_steps.stages.refine import refine_images
from lcseg_steps.stores.layout import open_store, pack_masks, pixel_map, read_ids, unpack_mask
from tests.hand_shard import SIZES, _refine
from tests.schema_defaults import crf_params

# refine's schema defaults: CRF on, threshold, the CRF parameters
DEFAULT = {"crf": True, "threshold": 0.5, "params": crf_params()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


def _disk_scene(seed: int = 0, h: int = 96, w: int = 128):
    """A bright disk on a dark noisy background and its 16 px patch-grid coverage."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 45) ** 2 + (xx - 70) ** 2 < 28**2
    img = np.where(disk[..., None], 200.0, 40.0) + rng.normal(0, 10, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    cover = cv2.resize(disk.astype(np.float32), (w // 16, h // 16), interpolation=cv2.INTER_AREA)
    return img, disk, cover, rng


def test_upsample_constant_and_shape():
    up = upsample_score(np.full((4, 6), 0.3), (50, 77))
    assert up.shape == (50, 77) and up.dtype == np.float32
    np.testing.assert_allclose(up, 0.3, atol=1e-6)


def test_upsample_hot_patch_peaks_at_centre_and_is_symmetric():
    grid = np.zeros((5, 5))
    grid[2, 2] = 1.0
    up = upsample_score(grid, (80, 80))  # 16 px per patch; centre of patch 2 is at 40.0
    # the continuous centre 40.0 lies between pixel centres 39.5 and 40.5
    peak = np.unravel_index(np.argmax(up), up.shape)
    assert peak[0] in (39, 40) and peak[1] in (39, 40)
    np.testing.assert_allclose(up[39:41, 39:41], up.max(), atol=1e-6)
    np.testing.assert_allclose(up, up[::-1, :], atol=1e-6)
    np.testing.assert_allclose(up, up[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(up, up.T, atol=1e-6)
    # independent reference: the tent 1 - |x + 0.5 - 40| / 16 (pixel centres at x + 0.5)
    x = np.arange(80) + 0.5
    tent = np.clip(1 - np.abs(x - 40) / 16, 0, None)
    np.testing.assert_allclose(up, np.outer(tent, tent), atol=1e-3)


def test_upsample_non_integer_scale_matches_patch_centre_interpolation():
    # 7 patches spread over 50 px: patch j's centre is at (j + 0.5) * 50 / 7
    grid = np.tile(np.array([0.0, 0.1, 0.5, 0.2, 0.9, 1.0, 0.3]), (3, 1))
    up = upsample_score(grid, (10, 50))
    centres = (np.arange(7) + 0.5) * 50 / 7
    ref = np.interp(np.arange(50) + 0.5, centres, grid[0])  # holds edge values outside
    np.testing.assert_allclose(up, np.broadcast_to(ref, (10, 50)), atol=1e-3)


def test_upsample_clips_and_rejects_bad_input():
    up = upsample_score(np.array([[-0.5, 1.5]]), (4, 8))
    assert up.min() >= 0 and up.max() <= 1
    with pytest.raises(ValueError):
        upsample_score(np.zeros(5), (4, 4))


def test_crf_recovers_disk_better_than_threshold():
    img, disk, cover, rng = _disk_scene()
    grid = np.clip(cover + rng.normal(0, 0.15, cover.shape), 0, 1)
    prob = upsample_score(grid, disk.shape)
    prob = np.clip(cv2.GaussianBlur(prob, (0, 0), 4) + rng.normal(0, 0.2, prob.shape), 0, 1)
    mask = crf_refine(img, prob, crf_params())
    assert mask.shape == disk.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    crf_iou, thr_iou = _iou(mask, disk), _iou(prob >= 0.5, disk)
    assert crf_iou > 0.9
    assert crf_iou > thr_iou + 0.05


def test_crf_uninformative_input_does_not_crash():
    img = np.full((20, 30, 3), 128, np.uint8)
    mask = crf_refine(img, np.full((20, 30), 0.5), crf_params(iterations=3))
    assert mask.shape == (20, 30) and set(np.unique(mask)) <= {0, 1}


def test_crf_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        crf_refine(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11)), crf_params())


def test_refine_mask_threshold_path():
    img, disk, cover, _ = _disk_scene()
    m = refine_mask(img, cover, crf=False, threshold=0.5, params=crf_params())
    np.testing.assert_array_equal(m, (upsample_score(cover, disk.shape) >= 0.5).astype(np.uint8))


def _write_scene(tmp_path, n: int):
    items = []
    for i in range(n):
        img, _, cover, rng = _disk_scene(seed=i, h=64 + 16 * (i % 2), w=96)
        path = tmp_path / f"im{i}.png"
        cv2.imwrite(str(path), img[..., ::-1])
        items.append((str(path), np.clip(cover + rng.normal(0, 0.1, cover.shape), 0, 1)))
    return items


def test_refine_images_pool_equals_inline(tmp_path):
    items = _write_scene(tmp_path, 5)
    logs: list[str] = []
    inline = refine_images(items, processes=1, **DEFAULT, log=logs.append)
    pooled = refine_images(items, processes=2, **DEFAULT, log=lambda s: None)
    assert len(inline) == len(pooled) == 5
    for i, (a, b) in enumerate(zip(inline, pooled, strict=True)):
        assert a.shape == cv2.imread(items[i][0]).shape[:2]
        np.testing.assert_array_equal(a, b)
    assert logs and logs[-1] == "refine: 5/5 images"


def test_refine_images_bad_path_is_named(tmp_path):
    items = _write_scene(tmp_path, 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    items.append((str(bad), items[0][1]))
    for processes in (1, 2):
        with pytest.raises(ImageError, match="broken.jpg"):
            refine_images(items, processes=processes, **DEFAULT, log=lambda s: None)


def test_refine_images_other_failure_is_named(tmp_path):
    items = _write_scene(tmp_path, 1)
    items = [(items[0][0], np.zeros(7))]  # 1-D grid
    with pytest.raises(RuntimeError, match="im0.png"):
        refine_images(items, processes=1, **DEFAULT, log=lambda s: None)


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, 2, size=s).astype(np.uint8) for s in [(3, 5), (7, 2), (1, 1)]]
    flat, offsets, sizes = pack_masks(masks)
    assert flat.dtype == np.uint8 and flat.shape == (15 + 14 + 1,)
    assert offsets.dtype == np.int64 and offsets.tolist() == [0, 15, 29, 30]
    assert sizes.dtype == np.int32 and sizes.tolist() == [[3, 5], [7, 2], [1, 1]]
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(unpack_mask(flat, offsets, sizes, i), m)
    f0, o0, s0 = pack_masks([])
    assert f0.shape == (0,) and o0.tolist() == [0] and s0.shape == (0, 2)


# ---------------------------------------------------------------------------------------
# run_refine: the stage's store-to-store function on the hand-made shard (conftest.py)


def test_refine_without_crf_thresholds_the_upsampled_score(shard, tmp_path):
    recs = list(shard["records"].values())
    extra = ImageRecord("zz", "/nonexistent.png", "", 10, 10, "other")
    # records in another order, plus one of another shard: the store's order wins
    out = _refine(shard, tmp_path / "px1.zarr", [recs[2], extra, recs[0], recs[1]])
    st = open_store(out)
    assert list(read_ids(st)) == list(SIZES)
    sizes = [SIZES[i] for i in SIZES]
    assert np.asarray(st["sizes"][:]).tolist() == [list(s) for s in sizes]
    want_off = np.concatenate([[0], np.cumsum([h * w for h, w in sizes])])
    np.testing.assert_array_equal(st["pixel_offsets"][:], want_off)
    assert st["mask"].dtype == np.uint8
    n_fg = 0
    for i, image_id in enumerate(SIZES):
        want = (upsample_score(shard["scores"][image_id], SIZES[image_id]) >= 0.5).astype(np.uint8)
        got = pixel_map(st, "mask", i)
        np.testing.assert_array_equal(got, want)
        n_fg += int(got.sum())
    assert 0 < n_fg < st["mask"].shape[0]  # the comparison is not between two blank masks

    out2 = _refine(shard, tmp_path / "px2.zarr", recs, processes=2)
    np.testing.assert_array_equal(open_store(out2)["mask"][:], st["mask"][:])


def test_refine_with_crf_gives_binary_masks_of_image_size(shard, tmp_path):
    st = open_store(
        _refine(shard, tmp_path / "crf.zarr", list(shard["records"].values()), crf=True)
    )
    for i, image_id in enumerate(SIZES):
        m = pixel_map(st, "mask", i)
        assert m.shape == SIZES[image_id]
        assert set(np.unique(m).tolist()) <= {0, 1}


def test_refine_errors_name_the_problem(shard, tmp_path):
    recs = shard["records"]
    with pytest.raises(KeyError, match="a1"):
        _refine(shard, tmp_path / "x.zarr", [recs["a0"], recs["a2"]])
    wrong = replace(recs["a2"], height=31)
    with pytest.raises(ValueError, match=re.escape(recs["a2"].path)):
        _refine(shard, tmp_path / "y.zarr", [recs["a0"], recs["a1"], wrong])
    assert not (tmp_path / "y.zarr").exists()


def test_working_size():
    from lcseg_steps.perimage.crf import working_size

    assert working_size(500, 375, 1024) == (500, 375)  # VOC, COCO: their own size
    assert working_size(1024, 700, 1024) == (1024, 700)
    assert working_size(4500, 6000, 1024) == (768, 1024)
    assert working_size(6000, 7, 1024) == (1024, 1)
    assert working_size(6000, 4500, None) == (6000, 4500)


def test_refine_mask_at_a_working_resolution():
    """An image above refine.max_side is refined at the working size and its mask
    brought to full size: the disk is found as well as at full resolution, and an image
    at most max_side px gives the full-resolution mask byte for byte."""
    img, disk, cover, _ = _disk_scene()  # 96 x 128
    for crf in (True, False):
        kw = {**DEFAULT, "crf": crf}
        full = refine_mask(img, cover, **kw)
        np.testing.assert_array_equal(refine_mask(img, cover, **kw, max_side=128), full)
        small = refine_mask(img, cover, **kw, max_side=64)
        assert small.shape == disk.shape and small.dtype == np.uint8
        assert set(np.unique(small)) <= {0, 1}
        assert _iou(small, disk) > 0.85 and _iou(small, full) > 0.9
    # without the CRF, the reference by hand: the upsampled score at the working size
    # thresholded, each full-size pixel taking the working pixel its centre falls in
    small = refine_mask(img, cover, **{**DEFAULT, "crf": False}, max_side=50)
    work = upsample_score(cover, (38, 50)) >= 0.5
    ys = ((np.arange(96) + 0.5) * 38 / 96).astype(int)
    xs = ((np.arange(128) + 0.5) * 50 / 128).astype(int)
    np.testing.assert_array_equal(small, work[np.ix_(ys, xs)].astype(np.uint8))


def test_refine_images_turn_by_the_orientation(tmp_path):
    """refine reads each image turned by its index orientation: the mask of an EXIF-6
    file equals the mask of its stored pixels turned by hand."""
    from lcseg_steps.data.images import read_rgb
    from tests.fixtures_data import write_exif_jpeg

    img, disk, cover, _ = _disk_scene()
    path = write_exif_jpeg(tmp_path / "p.jpg", img, 6)
    turned = np.ascontiguousarray(np.rot90(read_rgb(path), -1))
    grid = np.ascontiguousarray(np.rot90(cover, -1))
    (mask,) = refine_images([(path, grid, 6)], processes=1, **DEFAULT, log=lambda s: None)
    np.testing.assert_array_equal(mask, refine_mask(turned, grid, **DEFAULT))
    assert mask.shape == (128, 96)
