import re
from dataclasses import replace

import cv2
import numpy as np
import pytest

from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.data.images import ImageError
from lcseg_steps.perimage.crf import refine_mask, upsample_score
from lcseg_steps.stages.refine import refine_images
from lcseg_steps.stores.layout import open_store, pack_masks, pixel_map, read_ids, unpack_mask
from tests.disk_scene import DEFAULT
from tests.disk_scene import disk_scene as _disk_scene
from tests.hand_shard import SIZES, _refine


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
