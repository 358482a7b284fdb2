"""A disk scene shared by the CRF and refine tests (test_crf.py, test_refine.py): a
bright disk on a dark noisy background, its patch-grid coverage, the IoU of two masks
and refine's schema defaults."""

import cv2
import numpy as np

from tests.schema_defaults import crf_params

# refine's schema defaults: CRF on, threshold, the CRF parameters
DEFAULT = {"crf": True, "threshold": 0.5, "params": crf_params()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


def disk_scene(seed: int = 0, h: int = 96, w: int = 128):
    """A bright disk on a dark noisy background and its 16 px patch-grid coverage."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 45) ** 2 + (xx - 70) ** 2 < 28**2
    img = np.where(disk[..., None], 200.0, 40.0) + rng.normal(0, 10, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    cover = cv2.resize(disk.astype(np.float32), (w // 16, h // 16), interpolation=cv2.INTER_AREA)
    return img, disk, cover, rng
