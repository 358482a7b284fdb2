"""Scene mode's pixel step (lcseg_steps/perimage/scene_crf.py): the upsampled scores are
probabilities placed at patch centres, the multi-label CRF with no pairwise weight is the
argmax of its unaries, with pairwise weight it follows colour edges, and a large image is
refined at the working resolution and brought back to full size."""

import cv2
import numpy as np
import pytest

from lcseg_steps.perimage.crf import CRFParams
from lcseg_steps.perimage.scene_crf import crf_multilabel, refine_scene, upsample_scores

PARAMS = CRFParams(
    iterations=5,
    gauss_sxy=3,
    gauss_compat=3,
    bilateral_sxy=20,
    bilateral_srgb=13,
    bilateral_compat=10,
    clip=1e-5,
)
NO_PAIRWISE = CRFParams(
    iterations=5,
    gauss_sxy=3,
    gauss_compat=0,
    bilateral_sxy=20,
    bilateral_srgb=13,
    bilateral_compat=0,
    clip=1e-5,
)


def test_upsampled_scores_sum_to_one_and_sit_at_patch_centres():
    rng = np.random.default_rng(0)
    grid = rng.random((3, 4, 7)).astype(np.float32)
    grid /= grid.sum(2, keepdims=True)
    up = upsample_scores(grid, (48, 64))  # 16 px patches: centres at 8 + 16 i
    assert up.shape == (48, 64, 7)
    np.testing.assert_allclose(up.sum(2), 1.0, rtol=1e-5)
    for i in range(3):
        for j in range(4):
            # bilinear halfway between pixel centres 7 and 8 of a patch
            centre = up[16 * i + 7 : 16 * i + 9, 16 * j + 7 : 16 * j + 9].mean((0, 1))
            np.testing.assert_allclose(centre, grid[i, j], atol=0.06)


@pytest.mark.parametrize("C", [2, 5, 27])
def test_crf_without_pairwise_weight_is_the_argmax_of_the_unaries(C):
    rng = np.random.default_rng(C)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    prob = rng.random((20, 30, C)).astype(np.float32) + 0.01
    prob /= prob.sum(2, keepdims=True)
    got = crf_multilabel(image, prob, NO_PAIRWISE)
    assert got.dtype == np.uint8
    assert np.array_equal(got, np.argmax(prob, axis=2))


def test_crf_follows_a_colour_edge_the_scores_blur():
    # left half red, right half blue; scores a soft ramp from class 0 to class 2 with a
    # third class everywhere low: the CRF puts the class change on the colour edge
    h, w = 40, 60
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2 :] = (30, 30, 200)
    ramp = np.clip((np.arange(w) - 15) / 30, 0, 1)[None, :].repeat(h, 0)
    prob = np.stack([0.9 * (1 - ramp) + 0.05, 0.05 + 0 * ramp, 0.9 * ramp + 0.05], axis=2)
    got = crf_multilabel(image, prob.astype(np.float32), PARAMS)
    assert (got[:, : w // 2] == 0).mean() > 0.95
    assert (got[:, w // 2 :] == 2).mean() > 0.95


def test_argmax_path_and_working_resolution():
    rng = np.random.default_rng(3)
    grid = rng.random((4, 6, 3)).astype(np.float32)
    image = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    full = refine_scene(image, grid, crf=False, params=PARAMS, max_side=None)
    assert full.shape == (64, 96)
    assert np.array_equal(full, np.argmax(upsample_scores(grid, (64, 96)), axis=2))
    # working side 48: computed at 32 x 48, brought back by nearest-neighbour resizing
    small = refine_scene(image, grid, crf=True, params=PARAMS, max_side=48)
    assert small.shape == (64, 96) and small.dtype == np.uint8
    work = refine_scene(
        cv2.resize(image, (48, 32), interpolation=cv2.INTER_AREA),
        grid,
        crf=True,
        params=PARAMS,
        max_side=None,
    )
    assert np.array_equal(small, cv2.resize(work, (96, 64), interpolation=cv2.INTER_NEAREST_EXACT))
