"""Tiny on-disk datasets for the data-layer tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lcseg_steps.data.palette import write_label_png

# id -> (height, width, grayscale)
VOC_IMAGES = {
    "2007_000032": (37, 53, False),
    "2007_000039": (41, 29, True),
    "2008_000123": (30, 30, False),
    "2009_000500": (25, 44, False),
    "2010_001000": (33, 21, False),
}
VOC_VAL = ["2007_000032", "2007_000039", "2008_000123"]
VOC_EXTRA = ["2009_000500", "2007_000032", "2010_001000"]  # one id repeats a val id


def make_voc(root: Path, seed: int = 0) -> Path:
    """A VOC-layout root with JPEGs (one grayscale), label PNGs for the val ids, a val
    split and an extra list ``extra.txt``. Returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for image_id, (h, w, gray) in VOC_IMAGES.items():
        shape = (h, w) if gray else (h, w, 3)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), img)
        if image_id in VOC_VAL:
            labels = rng.integers(0, 21, (h, w)).astype(np.uint8)
            labels[0, :] = 255
            write_label_png(root / "SegmentationClass" / f"{image_id}.png", labels)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (root / "extra.txt").write_text("\n".join(VOC_EXTRA) + "\n\n")
    return root


def asymmetric_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 image that no flip or turn maps onto itself:
    smooth gradients, a block in one corner and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([255 * y / max(1, height - 1), 255 * x / max(1, width - 1), 128 + 0 * x], -1)
    img[: height // 3, : width // 4] = (250, 20, 40)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_exif_jpeg(path: Path, rgb: np.ndarray, orientation: int | None) -> Path:
    """``rgb`` (the raw, stored pixels) as a JPEG whose EXIF says ``orientation`` (tag
    0x0112; None: no EXIF at all), as a camera writes it."""
    from PIL import Image

    im = Image.fromarray(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is None:
        im.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, quality=95, exif=exif.tobytes())
    return path
