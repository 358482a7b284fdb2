"""The report's pictures (``lcseg_steps.figures.overlays``): overlays of labels and
patch masks, region outlines, legends, matched labels and PNG data URIs."""

import numpy as np
import pytest

from lcseg_steps.figures.overlays import (
    label_legend,
    matched_labels,
    overlay,
    patch_mask_image,
    png_data_uri,
    region_outlines,
    thumbnail_size,
)


def test_overlay_by_hand():
    img = np.array([[[10, 20, 30], [100, 101, 102], [0, 0, 0]]], np.uint8)  # (1, 3, 3)
    labels = np.array([[0, 3, 255]])
    pal = np.zeros((256, 3), np.uint8)
    pal[3] = (200, 0, 51)
    out = overlay(img, labels, pal, alpha=0.25)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])  # background untouched
    # 0.75 * (100, 101, 102) + 0.25 * (200, 0, 51) = (125, 75.75, 89.25)
    np.testing.assert_array_equal(out[0, 1], [125, 76, 89])
    # void blends with white: 0.25 * 255 = 63.75
    np.testing.assert_array_equal(out[0, 2], [64, 64, 64])
    with pytest.raises(ValueError, match="shape"):
        overlay(img, labels[:, :2], pal)


def test_overlay_background_unchanged_large():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    labels = rng.integers(0, 21, size=(20, 30))
    pal = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    out = overlay(img, labels, pal, alpha=0.5)
    np.testing.assert_array_equal(out[labels == 0], img[labels == 0])
    ref = np.floor(0.5 * img.astype(float) + 0.5 * pal[labels].astype(float) + 0.5)
    np.testing.assert_array_equal(out[labels != 0], ref[labels != 0].astype(np.uint8))


def test_patch_mask_image_nearest_stretch():
    img = np.full((30, 40, 3), 128, np.uint8)
    grid = np.array([[1, 0], [0, 1]], bool)  # 2x2 patches of 15x20 px
    out = patch_mask_image(img, grid)
    assert out.shape == img.shape and out.dtype == np.uint8
    fg = np.zeros((30, 40), bool)
    fg[:15, :20] = fg[15:, 20:] = True
    # every pixel of a patch gets the same colour, fg and bg colours differ
    assert len(np.unique(out[fg], axis=0)) == 1 and len(np.unique(out[~fg], axis=0)) == 1
    assert not np.array_equal(out[0, 0], out[0, 39])
    assert out[0, 0, 0] > out[0, 0, 1]  # tinted red
    soft = patch_mask_image(img, np.array([[0.5, np.nan]]))
    assert soft.shape == img.shape
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        patch_mask_image(img, np.array([[2.0]]))


def test_patch_mask_geometry_matches_patch_rectangles():
    h, w, gh, gw = 31, 23, 3, 4
    rng = np.random.default_rng(2)
    grid = rng.random((gh, gw))
    img = np.full((h, w, 3), 90, np.uint8)
    out = patch_mask_image(img, grid)
    for y in range(h):
        for x in range(w):
            # brute force: the patch whose rectangle [i h/gh, (i+1) h/gh) holds the pixel
            i = next(i for i in range(gh) if i * h / gh <= y < (i + 1) * h / gh)
            j = next(j for j in range(gw) if j * w / gw <= x < (j + 1) * w / gw)
            ref = patch_mask_image(np.full((1, 1, 3), 90, np.uint8), grid[i : i + 1, j : j + 1])
            np.testing.assert_array_equal(out[y, x], ref[0, 0])


def test_label_legend_lists_present_ids_in_palette_colours():
    pal = np.zeros((256, 3), np.uint8)
    pal[2] = (128, 0, 64)
    pal[7] = (1, 2, 3)
    labels = np.array([[0, 2, 2], [7, 255, 0]])
    legend = label_legend(labels, pal, lambda i: f"c{i}", void="unmatched")
    assert legend == [("c2", "#800040"), ("c7", "#010203"), ("unmatched", "#ffffff")]
    assert label_legend(np.zeros((2, 2), np.uint8), pal, str) == [
        ("background only: nothing drawn", None)
    ]


def test_matched_labels_follow_the_mapping():
    pred = np.array([[0, 1, 2], [3, 4, 9]])
    # cluster 0 -> class 0, 1 -> 3, 2 unmatched, 3 -> 1, 4 -> 2; 9 is past the mapping
    out = matched_labels(pred, [0, 3, -1, 1, 2])
    np.testing.assert_array_equal(out, [[0, 3, 255], [1, 2, 255]])
    assert out.dtype == np.uint8


def test_region_outlines_widen_with_the_image_and_check_the_shape():
    """A cut between two regions is one pixel each side on an image of up to
    PANEL_MAX_SIDE, and widened to about one thumbnail pixel on a larger one."""
    for side in (64, 1024):
        img = np.zeros((side, side, 3), np.uint8)
        rmap = np.ones((side, side), np.int64)
        rmap[:, side // 2 :] = 2
        white = (region_outlines(img, rmap) == 255).all(axis=2)
        row = np.flatnonzero(white[side // 2])
        cut = row[(row > 8) & (row < side - 8)]  # leave the image's own edge out
        if side == 64:
            assert cut.tolist() == [31, 32]
        else:  # a 4-px line: side / PANEL_MAX_SIDE
            assert {511, 512} <= set(cut.tolist()) and 4 <= len(cut) <= 2 * 4
            assert np.all(np.diff(cut) == 1)
        # inside: red tint at 0.35 of MASK_RGB (255, 40, 40) over black
        out = region_outlines(img, rmap)
        np.testing.assert_array_equal(out[side // 4, side // 4], [89, 14, 14])
    with pytest.raises(ValueError, match="region_map shape"):
        region_outlines(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int64))


def test_png_data_uri_shrinks_to_the_thumbnail_size():
    import base64

    import cv2

    assert thumbnail_size(512, 384, 256) == (256, 192)
    assert thumbnail_size(60, 100, 256) == (60, 100)  # never upscaled
    img = np.zeros((512, 384, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    uri = png_data_uri(img)
    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    back = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == (256, 192, 3) and back[0, 0].tolist() == [0, 0, 200]  # BGR
    with pytest.raises(ValueError, match="uint8 RGB"):
        png_data_uri(np.zeros((4, 4), np.uint8))


def test_draw_zero_colours_class_0_as_any_other_class():
    """Scene mode: label 0 is a class, blended with its palette colour and listed in the
    legend; by default it is background, left as the picture and out of the legend."""
    img = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [0, 1]], np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    palette[0], palette[1] = (200, 0, 0), (0, 200, 0)
    plain = overlay(img, labels, palette)
    drawn = overlay(img, labels, palette, draw_zero=True)
    np.testing.assert_array_equal(plain[:, 0], img[:, 0])
    np.testing.assert_array_equal(drawn[:, 0], np.full((2, 3), (150, 50, 50)))
    np.testing.assert_array_equal(drawn[:, 1], plain[:, 1])
    names = [n for n, _ in label_legend(labels, palette, str, draw_zero=True)]
    assert names == ["0", "1"] and [n for n, _ in label_legend(labels, palette, str)] == ["1"]
