"""Generated COCO-Stuff-27 and Cityscapes-27 trees in their usual layouts, for the dataset
and workflow tests (small random images and labels, nothing downloaded)."""

from pathlib import Path

import numpy as np
from PIL import Image

COCO_IDS = ("000000000139", "000000000285", "000000000632")
CITY_IDS = {"frankfurt": ("frankfurt_000000_000294", "frankfurt_000000_000576"),
            "lindau": ("lindau_000000_000019",)}  # fmt: skip


def _jpg(path: Path, h: int, w: int, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path)


def cocostuff_tree(root: Path, curated: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/images/val2017``, ``root/annotations/stuffthingmaps_trainval2017/val2017`` and
    (``curated``) ``root/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt`` listing the
    first two ids. Returns the fine label map of every id."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, image_id in enumerate(COCO_IDS):
        h, w = 40 + 3 * i, 52 - 2 * i
        _jpg(root / "images" / "val2017" / f"{image_id}.jpg", h, w, rng)
        fine = rng.integers(0, 182, (h, w)).astype(np.uint8)
        fine[:3] = 255
        _png(
            root / "annotations" / "stuffthingmaps_trainval2017" / "val2017" / f"{image_id}.png",
            fine,
        )
        out[image_id] = fine
    if curated:
        lst = root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("".join(f"{i}\n" for i in COCO_IDS[:2]))
    return out


def cityscapes_tree(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/leftImg8bit/val/<city>`` and ``root/gtFine/val/<city>``; returns the labelIds
    of every id."""
    rng = np.random.default_rng(seed)
    out = {}
    for city, ids in CITY_IDS.items():
        for image_id in ids:
            h, w = 32, 64
            img = root / "leftImg8bit" / "val" / city / f"{image_id}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img)
            ids_map = rng.integers(0, 34, (h, w)).astype(np.uint8)
            _png(root / "gtFine" / "val" / city / f"{image_id}_gtFine_labelIds.png", ids_map)
            out[image_id] = ids_map
    return out
