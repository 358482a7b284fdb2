"""Object regions (``lcseg_steps.perimage.regions``): connected components against
scipy's labelling, boxes and crops, the masked-key descriptor against a brute-force patch
coverage, and ``regions: split`` on planted patch features: two touching blobs drawn from
two well-separated prototypes are cut exactly along their shared edge; one object with
internal texture or plain noise is not cut. The references are the planted blobs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lcseg_steps.perimage.regions import (
    masked_key_descriptor,
    object_regions,
    patch_index,
    region_box,
    region_crop,
    split_region,
)
from tests.schema_defaults import default_config

PATCH = 8
GH, GW, D = 10, 14, 48
SPLIT = default_config()["objects"]["split"]


def _unit(rng, n):
    v = rng.standard_normal((n, D))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _planted(seed: int, texture: str | None = None):
    """Two touching blobs A (patch cols 2-6) and B (cols 7-11), rows 2-7, on a
    background; pixel masks ``(GH*PATCH, GW*PATCH)`` and features ``(GH, GW, D)``.
    ``texture``: one object instead (A = B's prototype), whose patches alternate between
    two directions in stripes or a checkerboard, or carry only noise."""
    rng = np.random.default_rng(seed)
    bg, pa, pb, tex = _unit(rng, 4)
    feats = np.broadcast_to(bg, (GH, GW, D)).copy()
    a = np.zeros((GH, GW), bool)
    b = np.zeros((GH, GW), bool)
    a[2:8, 2:7] = True
    b[2:8, 7:12] = True
    feats[a] = pa
    feats[b] = pb
    if texture is not None:
        feats[a | b] = pa
        ii, jj = np.mgrid[0:GH, 0:GW]
        alt = {"stripes": ii % 2, "checker": (ii + jj) % 2, "noise": np.zeros_like(ii)}[texture]
        feats[(a | b) & (alt == 1)] += 1.5 * tex
    feats += 0.15 * rng.standard_normal(feats.shape)
    up = np.ones((PATCH, PATCH), bool)
    return np.kron(a, up), np.kron(b, up), feats.astype(np.float16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_returns_the_two_planted_blobs_exactly(seed):
    a, b, feats = _planted(seed)
    fg = a | b
    (whole,) = object_regions(fg, regions="components")
    assert np.array_equal(whole, fg)
    parts = object_regions(fg, regions="split", features_grid=feats, split=SPLIT)
    assert len(parts) == 2
    assert {parts[0].tobytes(), parts[1].tobytes()} == {a.tobytes(), b.tobytes()}


@pytest.mark.parametrize("texture", ["stripes", "checker", "noise"])
def test_one_object_with_internal_texture_is_not_split(texture):
    a, b, feats = _planted(3, texture)
    (part,) = object_regions(a | b, regions="split", features_grid=feats, split=SPLIT)
    assert np.array_equal(part, a | b)


def test_split_is_deterministic_per_seed_and_keeps_every_pixel():
    a, b, feats = _planted(4)
    # a full-resolution size that is no multiple of the grid: pixels follow their patch
    fg = np.zeros((97, 131), bool)
    rows, cols = patch_index(fg.shape, (GH, GW))
    fg[:] = (a | b)[rows * PATCH][:, cols * PATCH]
    runs = [split_region(fg, feats, **{**SPLIT, "seed": 7}) for _ in range(2)]
    assert [r.tobytes() for r in runs[0]] == [r.tobytes() for r in runs[1]]
    assert len(runs[0]) == 2
    assert np.array_equal(runs[0][0] | runs[0][1], fg) and not (runs[0][0] & runs[0][1]).any()


def test_split_stops_at_max_parts_and_a_too_small_side():
    a, b, feats = _planted(5)
    fg = a | b
    assert len(split_region(fg, feats, **{**SPLIT, "max_parts": 1})) == 1
    # each side is ~half of the component: a 0.6 share cannot be met
    assert len(split_region(fg, feats, **{**SPLIT, "min_share": 0.6})) == 1
    assert len(split_region(fg, feats, **SPLIT, min_px=fg.sum())) == 1


def test_split_needs_features_and_settings():
    a, b, feats = _planted(0)
    with pytest.raises(ValueError, match="features_grid"):
        object_regions(a | b, regions="split")
    assert object_regions(np.zeros_like(a), regions="split", features_grid=feats, split=SPLIT) == []


# ---------------------------------------------------------------------------------------
# components, boxes, crops and the masked-key descriptor


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
