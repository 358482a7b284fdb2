"""The colour palette and palette label PNGs: the predicted masks of every dataset, the
report's colours, and the ground truth of VOC, the demo and own-image folders (VOC's
palette, which they all share).

Label PNGs store class ids as palette indices (mode ``P``) with 255 = void; they must
be read as indices, never as colours.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lcseg_steps.data.records import ImageRecord


def voc_palette() -> np.ndarray:
    """The VOC colour palette, ``(256, 3)`` uint8: index i's RGB colour (255 = cream void)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        # the bits of the index are spread over the high bits of r, g, b in turn
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def open_label_png(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """A label PNG's PIL mode and its stored array, as read (no mapping). A missing file
    raises ``FileNotFoundError``, an unreadable one ``ValueError``, both naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label PNG not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.mode, np.array(im)
    except OSError as err:
        raise ValueError(f"{path}: not a readable label PNG ({err})") from err


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as ``(H, W)`` uint8 class ids.

    Palette (``P``) and grayscale (``L``) PNGs give their stored indices. An RGB PNG is
    mapped back through the VOC palette; a colour not in it is a ``ValueError``.
    """
    path = Path(path)
    mode, arr = open_label_png(path)
    if mode in ("P", "L"):
        return arr.astype(np.uint8, copy=False)
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3].astype(np.int32)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pal = voc_palette().astype(np.int32)
        pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        order = np.argsort(pal_codes)
        pos = np.clip(np.searchsorted(pal_codes[order], codes), 0, 255)
        found = pal_codes[order][pos] == codes
        if not found.all():
            bad = tuple(int(v) for v in rgb[~found][0])
            raise ValueError(f"{path}: colour {bad} is not in the VOC palette")
        return order[pos].astype(np.uint8)
    raise ValueError(f"{path}: label PNG has mode {mode!r}; expected P (palette) or L")


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write ``(H, W)`` uint8 class ids as a palette PNG with the VOC palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(
            f"{path}: labels must be (H, W) uint8, got shape {labels.shape} {labels.dtype}"
        )
    h, w = labels.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(labels).tobytes())
    im.putpalette(voc_palette().tobytes())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG")


def write_label_pngs(folder: str | os.PathLike, ids, maps) -> Path:
    """One palette PNG per image, ``folder/<id>.png`` (:func:`write_label_png`), the whole
    folder built under a temporary sibling and renamed into place, so a killed job never
    leaves a folder that looks complete."""
    import shutil

    from lcseg_steps.stores.atomic_write import tmp_sibling

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(folder)
    tmp.mkdir()
    for image_id, labels in zip(ids, maps, strict=True):
        write_label_png(tmp / f"{image_id}.png", labels)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def owns_label_png(gt: str) -> bool:
    """A ground-truth reference that is a plain label image path (no ``#key``)."""
    return "#" not in gt


def read_gt_png(record: ImageRecord) -> np.ndarray:
    """The label PNG of ``record``; a missing one raises ``FileNotFoundError`` naming it."""
    if not os.path.isfile(record.gt):
        raise FileNotFoundError(
            f"{record.gt}: ground-truth file of image {record.image_id} not found"
        )
    return read_label_png(record.gt)
