"""Upsampling of a patch score and the dense CRF (``lcseg_steps.perimage.crf``), on a
disk scene whose truth is known."""

import cv2
import numpy as np
import pytest

from lcseg_steps.perimage.crf import crf_refine, refine_mask, upsample_score, working_size
from tests.disk_scene import DEFAULT
from tests.disk_scene import disk_scene as _disk_scene
from tests.disk_scene import iou as _iou
from tests.schema_defaults import crf_params


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


def test_working_size():
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
