import numpy as np
import pytest
from scipy import ndimage

from lcseg_steps.objects import masked_key_descriptor, object_regions, region_box, region_crop


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
    regions = object_regions(mask, mode="components", min_area=0.01)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    ref = [labels == k for k in range(1, n + 1)]
    ref = sorted((r for r in ref if r.sum() >= 100), key=lambda r: -r.sum())
    assert len(regions) == len(ref) == 2
    for got, want in zip(regions, ref, strict=True):
        assert got.dtype == bool and got.shape == mask.shape
        np.testing.assert_array_equal(got, want)
    assert [int(r.sum()) for r in regions] == [400, 152]


def test_min_area_zero_keeps_everything():
    regions = object_regions(_three_blobs(), min_area=0.0)
    assert [int(r.sum()) for r in regions] == [400, 152, 9]


def test_whole_and_empty():
    mask = _three_blobs()
    (whole,) = object_regions(mask, mode="whole")
    np.testing.assert_array_equal(whole, mask.astype(bool))
    empty = np.zeros((10, 10), np.uint8)
    assert object_regions(empty) == [] and object_regions(empty, mode="whole") == []
    with pytest.raises(ValueError, match="mode"):
        object_regions(mask, mode="blobs")


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
