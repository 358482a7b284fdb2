import cv2
import numpy as np
import pytest

from lcseg_steps.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    normalize,
    patch_grid_size,
    read_rgb,
    resize_for_backbone,
)


def test_read_rgb_colour_gray_rgba(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200  # red channel
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    out = read_rgb(tmp_path / "c.png")
    assert out.shape == (5, 7, 3) and out[0, 0].tolist() == [200, 0, 0]

    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 6), 77, np.uint8))
    g = read_rgb(tmp_path / "g.png")
    assert g.shape == (4, 6, 3) and (g == 77).all()

    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 2] = 90  # red in BGRA order
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [90, 0, 0]


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"", "empty"), (b"\xff\xd8 this is not a jpeg", "not a decodable")],
)
def test_read_rgb_errors_name_the_file(tmp_path, content, message):
    p = tmp_path / "bad.jpg"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageError, match=message) as err:
        read_rgb(p)
    assert "bad.jpg" in str(err.value)


@pytest.mark.parametrize(
    "h, w, patch, long_side, expected",
    [
        (375, 500, 16, 480, (352, 480)),  # 375 * 0.96 = 360 -> 352
        (500, 333, 14, 480, (476, 308)),  # 480 -> 476, 319.68 -> 320 -> 308
        (203, 397, 8, None, (200, 392)),
        (100, 100, 16, 480, (480, 480)),
    ],
)
def test_patch_grid_size_odd_sizes(h, w, patch, long_side, expected):
    out = patch_grid_size(h, w, patch, long_side)
    assert out == expected
    assert out[0] % patch == 0 and out[1] % patch == 0
    # aspect ratio is kept up to the rounding to whole patches
    assert abs(out[0] / out[1] - h / w) < 2 * patch / min(out)


def test_too_small_for_a_patch():
    with pytest.raises(ImageError, match="smaller than one 16px patch"):
        patch_grid_size(10, 400, 16, None)
    with pytest.raises(ImageError, match="smaller than one"):
        patch_grid_size(4, 600, 16, 480)


def test_resize_and_normalize():
    img = np.random.default_rng(0).integers(0, 256, (203, 397, 3), dtype=np.uint8)
    r = resize_for_backbone(img, 16, 240)
    assert r.shape == (112, 240, 3) and r.dtype == np.uint8
    x = normalize(r)
    assert x.shape == (3, 112, 240) and x.dtype == np.float32
    np.testing.assert_allclose(
        x[:, 5, 7], (r[5, 7] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6
    )


# the raw pixels turned by hand, as EXIF orientation 1..8 says (independent of cv2)
BY_HAND = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),  # clockwise
    7: lambda a: np.rot90(a[:, ::-1], -1),
    8: lambda a: np.rot90(a, 1),  # counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_as_viewers_show(tmp_path, orientation):
    from PIL import Image, ImageOps

    from lcseg_steps.data.images import exif_orientation, oriented_size
    from tests.fixtures_data import asymmetric_rgb, write_exif_jpeg

    path = write_exif_jpeg(tmp_path / "p.jpg", asymmetric_rgb(24, 40), orientation)
    raw = read_rgb(path)  # the default: the stored pixels, whatever the tag
    assert raw.shape == (24, 40, 3)
    assert exif_orientation(path) == orientation
    shown = read_rgb(path, "exif")
    assert shown.shape[:2] == oriented_size(24, 40, orientation)
    np.testing.assert_array_equal(shown, BY_HAND[orientation](raw))
    np.testing.assert_array_equal(read_rgb(path, orientation), shown)
    # PIL's own reading of the tag, from PIL's decode of the same file
    with Image.open(path) as im:
        pil_raw = np.asarray(im.convert("RGB"))
        pil_shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(pil_shown, BY_HAND[orientation](pil_raw))


def test_exif_orientation_missing_or_odd_is_1(tmp_path):
    from lcseg_steps.data.images import exif_orientation, orient
    from tests.fixtures_data import asymmetric_rgb, write_exif_jpeg

    img = asymmetric_rgb(8, 12)
    assert exif_orientation(write_exif_jpeg(tmp_path / "none.jpg", img, None)) == 1
    assert exif_orientation(write_exif_jpeg(tmp_path / "odd.jpg", img, 9)) == 1
    cv2.imwrite(str(tmp_path / "p.png"), img)
    assert exif_orientation(tmp_path / "p.png") == 1
    assert exif_orientation(tmp_path / "missing.jpg") == 1
    with pytest.raises(ValueError, match="1..8"):
        orient(img, 0)
