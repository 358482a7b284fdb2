"""Large JPEGs decoded at a reduced scale where a step brings them down anyway (issue 27:
work per image that does not grow with megapixels): the refinement, the index's check
and the report's gallery. Images under twice the size asked for decode byte-identically
to ``read_rgb``; a reduced copy has the turned full size, the right orientation and
the content of a full decode brought down by ``INTER_AREA``."""

import cv2
import numpy as np
import pytest

from benchmarks.bench_photo import photo
from lcseg_steps.data.image_table import CHECK_SIDE, check_image
from lcseg_steps.data.images import decodes_reduced, orient, read_rgb, read_rgb_reduced
from lcseg_steps.data.records import ImageRecord
from lcseg_steps.perimage.crf import CRFParams, refine_input, refine_mask
from tests.fixtures_data import write_exif_jpeg

PARAMS = CRFParams(
    iterations=5,
    gauss_sxy=3.0,
    gauss_compat=3.0,
    bilateral_sxy=50.0,
    bilateral_srgb=13.0,
    bilateral_compat=5.0,
    clip=1e-5,
)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 1800x2400 photo-like JPEG (raw pixels) and its EXIF-6 twin."""
    d = tmp_path_factory.mktemp("big")
    rgb = photo(1800, 2400, seed=3)
    return write_exif_jpeg(d / "big.jpg", rgb, None), write_exif_jpeg(d / "turned.jpg", rgb, 6)


@pytest.mark.parametrize("shape", [(375, 500), (600, 800), (1000, 1599)])
def test_images_under_twice_the_size_decode_as_read_rgb(tmp_path, shape):
    path = write_exif_jpeg(tmp_path / "a.jpg", photo(*shape), 6)
    assert not decodes_reduced(path, 800)
    img, size = read_rgb_reduced(path, "exif", 800)
    ref = read_rgb(path, "exif")
    assert size == ref.shape[:2] and img.dtype == np.uint8
    np.testing.assert_array_equal(img, ref)


def test_a_large_png_decodes_in_full(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), photo(1800, 2400)[..., ::-1])
    assert not decodes_reduced(path, 800)
    np.testing.assert_array_equal(read_rgb_reduced(path, 1, 800)[0], read_rgb(path))


@pytest.mark.parametrize("min_side, scale", [(1200, 2), (600, 4), (300, 8), (100, 8)])
def test_a_large_jpeg_decodes_at_the_smallest_scale_above_min_side(big, min_side, scale):
    path, _ = big
    assert decodes_reduced(path, min_side)
    img, size = read_rgb_reduced(path, 1, min_side)
    assert size == (1800, 2400)
    assert img.shape == (-(-1800 // scale), -(-2400 // scale), 3) and img.dtype == np.uint8
    assert max(img.shape[:2]) >= min_side
    full = read_rgb(path)
    ref = cv2.resize(full, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)
    diff = np.abs(img.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16


def test_a_reduced_copy_is_turned_by_its_orientation(big):
    raw, turned = big
    img, size = read_rgb_reduced(turned, "exif", 600)
    assert size == (2400, 1800)  # as viewers show it
    np.testing.assert_array_equal(img, orient(read_rgb_reduced(raw, 1, 600)[0], 6))
    rec = ImageRecord("t", str(turned), "", 2400, 1800, orientation=6)
    assert check_image(rec, 16, 480) == (2400, 1800, "")
    assert max(size) >= 2 * CHECK_SIDE  # the check above decoded it reduced


@pytest.mark.parametrize("crf", [False, True])
def test_refining_from_a_reduced_copy_gives_the_full_size_mask(big, crf):
    """From the reduced decode the mask has the full size and matches the refinement of
    the full decode: exactly without the CRF (the mask is the thresholded score), in all
    but a few pixels with it."""
    path, _ = big
    rng = np.random.default_rng(0)
    grid = cv2.GaussianBlur(rng.random((24, 32)).astype(np.float32), (5, 5), 0)
    grid = (grid - grid.min()) / (grid.max() - grid.min())
    kw = {"crf": crf, "threshold": 0.5, "params": PARAMS, "max_side": 600}
    work, size = refine_input(path, 1, 600)
    assert work.shape[:2] == (450, 600) and size == (1800, 2400)  # 1/4 is the working size
    got = refine_mask(work, grid, **kw, size=size)
    ref = refine_mask(read_rgb(path), grid, **kw)
    assert got.shape == ref.shape == (1800, 2400)
    if crf:
        assert (got != ref).mean() < 0.01
    else:
        np.testing.assert_array_equal(got, ref)
    # a longer side under twice max_side: refine_input is the full decode
    small, small_size = refine_input(path, 1, 1300)
    assert small_size == (1800, 2400) and small.shape[:2] == (1800, 2400)
