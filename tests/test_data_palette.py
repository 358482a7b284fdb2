"""Tests of lcseg_steps.data.palette: the VOC palette's known colours, label PNGs written
as palette PNGs and read back as indices (palette, grayscale or colour-coded)."""

import numpy as np
import pytest
from PIL import Image

from lcseg_steps.data.palette import read_label_png, voc_palette, write_label_png


def test_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # colours of the official VOC palette
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal.tolist()}) == 256


def test_label_png_round_trip_is_palette_png(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 21, (23, 31)).astype(np.uint8)
    labels[3:7, 4:9] = 255
    path = tmp_path / "sub" / "x.png"
    write_label_png(path, labels)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert (
            np.frombuffer(bytes(im.getpalette()[: 256 * 3]), np.uint8).reshape(256, 3).tolist()
            == voc_palette().tolist()
        )
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_read_label_png_grayscale_and_colour(tmp_path):
    labels = np.array([[0, 1, 2], [15, 20, 255]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), labels)
    # a colour-coded PNG maps back through the palette instead of giving RGB
    Image.fromarray(voc_palette()[labels]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "rgb.png"), labels)
    bad = voc_palette()[labels]
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="bad.png.*not in the VOC palette"):
        read_label_png(tmp_path / "bad.png")


def test_write_label_png_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_label_png(tmp_path / "x.png", np.zeros((3, 3), np.int32))
