"""Tiny on-disk datasets for the data-layer tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lcseg_steps.data.voc import write_label_png

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
