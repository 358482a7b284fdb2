"""PASCAL VOC 2012: the class names and id lists. Its palette label PNGs, which every
dataset uses, are ``lcseg_steps.data.palette``'s.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from lcseg_steps.data.palette import owns_label_png, read_gt_png
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


def voc_inputs(dataset: dict) -> list[str]:
    """The split file and the extra id lists: what the index of a VOC run reads."""
    root = dataset["root"]
    split = os.path.join(root, "ImageSets", "Segmentation", f"{dataset.get('split', 'val')}.txt")
    return [split] + [os.path.join(root, p) for p in dataset.get("extra_lists") or ()]


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
