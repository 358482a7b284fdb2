"""PASCAL VOC 2012: id lists, the colour palette and palette label PNGs.

Label PNGs store class ids as palette indices (mode ``P``) with 255 = void; they must
be read as indices, never as colours.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from lcseg_steps.data.records import Dataset, ImageRecord

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


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


def _read_id_list(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found (check {key})")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        # VOC's per-class lists carry a second column (-1/1); the id is the first word
        words = line.split()
        if words:
            ids.append(words[0])
    return ids


def list_voc(
    root: str | os.PathLike, split: str, extra_lists: Iterable[str | os.PathLike] = ()
) -> list[ImageRecord]:
    """Records of ``{root}/ImageSets/Segmentation/{split}.txt`` in file order, with gt PNGs
    ``SegmentationClass/<id>.png``, then the ids of ``extra_lists`` not already listed,
    unlabelled (gt ``""``). Extra list paths are relative to ``root`` unless absolute.

    An id repeated in the split file is kept once (first occurrence) with a
    ``UserWarning`` naming the file and the ids; a split file listing no id is a
    ``ValueError`` (there would be nothing to score).
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: VOC root directory not found (check dataset.root)")
    split_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    split_ids = _read_id_list(split_file, "dataset.split and dataset.root")
    if not split_ids:
        raise ValueError(f"{split_file}: split file lists no image ids (check dataset.split)")
    records = []
    seen: set[str] = set()
    repeated: list[str] = []
    for image_id in split_ids:
        if image_id in seen:
            repeated.append(image_id)
            continue
        seen.add(image_id)
        records.append(
            ImageRecord(
                image_id=image_id,
                path=str(base / "JPEGImages" / f"{image_id}.jpg"),
                gt=str(base / "SegmentationClass" / f"{image_id}.png"),
            )
        )
    if repeated:
        warnings.warn(
            f"{split_file}: {len(repeated)} repeated image id(s) ignored, each image is "
            f"used once: {sorted(set(repeated))[:5]}",
            stacklevel=2,
        )
    for extra in extra_lists:
        extra_path = Path(extra)
        if not extra_path.is_absolute():
            extra_path = base / extra_path
        for image_id in _read_id_list(extra_path, "dataset.extra_lists"):
            if image_id in seen:
                continue
            seen.add(image_id)
            records.append(
                ImageRecord(
                    image_id=image_id, path=str(base / "JPEGImages" / f"{image_id}.jpg"), gt=""
                )
            )
    return records


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as ``(H, W)`` uint8 class ids.

    Palette (``P``) and grayscale (``L``) PNGs give their stored indices. An RGB PNG is
    mapped back through the VOC palette; a colour not in it is a ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label PNG not found")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except OSError as err:
        raise ValueError(f"{path}: not a readable label PNG ({err})") from err
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


def voc_inputs(dataset: dict) -> list[str]:
    """The split file and the extra id lists: what the index of a VOC run reads."""
    root = dataset["root"]
    split = os.path.join(root, "ImageSets", "Segmentation", f"{dataset.get('split', 'val')}.txt")
    return [split] + [os.path.join(root, p) for p in dataset.get("extra_lists") or ()]


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


DATASET = Dataset(
    name="voc12",
    inputs=voc_inputs,
    list_images=lambda ds: list_voc(
        ds["root"], ds.get("split", "val"), ds.get("extra_lists") or ()
    ),
    class_names=lambda ds: list(VOC_CLASSES),
    owns_gt=owns_label_png,
    read_gt=read_gt_png,
)
