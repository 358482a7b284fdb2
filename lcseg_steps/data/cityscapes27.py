"""Cityscapes-27: the fine annotations of Cityscapes mapped to 27 classes, as STEGO and
CAUSE score it.

Layout under ``dataset.root`` (Cityscapes' own)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Image ids are ``<city>_<seq>_<frame>``, listed by city and name. The labelIds go through
``cityscapes27.csv``: label ids 7..33 are classes 0..26, everything else is ignored; there
is no background class. ``dataset.split`` is ``val`` by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lcseg_steps.data.label_maps import label_map, read_mapped_png
from lcseg_steps.data.records import Dataset, ImageRecord, gt_file

NAME = "cityscapes27"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
GT_KEY = "#" + NAME  # ground-truth references are "<labelIds png>#cityscapes27"


def cityscapes_paths(dataset: dict) -> tuple[Path, Path]:
    """``(<root>/leftImg8bit/<split>, <root>/gtFine/<split>)``."""
    root, split = Path(dataset["root"]), dataset.get("split") or "val"
    return root / "leftImg8bit" / split, root / "gtFine" / split


def list_cityscapes27(dataset: dict) -> list[ImageRecord]:
    """Every ``*_leftImg8bit.png`` of the split, sorted by city then file name, with its
    ``gtFine`` labelIds as ``"<png>#cityscapes27"``."""
    root = Path(dataset["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Cityscapes root directory not found (check dataset.root)")
    images, labels = cityscapes_paths(dataset)
    for folder, what in ((images, "leftImg8bit"), (labels, "gtFine")):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: Cityscapes {what} folder not found (check dataset.root and "
                "dataset.split)"
            )
    records = []
    for city in sorted(e.name for e in os.scandir(images) if e.is_dir()):
        names = sorted(n for n in os.listdir(images / city) if n.endswith(IMAGE_SUFFIX))
        for name in names:
            image_id = name[: -len(IMAGE_SUFFIX)]
            records.append(
                ImageRecord(
                    image_id=image_id,
                    path=str(images / city / name),
                    gt=f"{labels / city / (image_id + LABEL_SUFFIX)}{GT_KEY}",
                )
            )
    if not records:
        raise FileNotFoundError(f"{images}: no <city>/*{IMAGE_SUFFIX} image found")
    return records


def cityscapes27_inputs(dataset: dict) -> list[str]:
    """The split's image and label folders: what the index of a Cityscapes run reads."""
    return [str(p) for p in cityscapes_paths(dataset)]


def owns_cityscapes27_gt(gt: str) -> bool:
    return gt.endswith(GT_KEY)


def read_cityscapes27_gt(record: ImageRecord) -> np.ndarray:
    """The labelIds PNG of ``record`` mapped to the 27 classes, 255 ignored."""
    return read_mapped_png(gt_file(record.gt), label_map(NAME))


DATASET = Dataset(
    name=NAME,
    inputs=cityscapes27_inputs,
    list_images=list_cityscapes27,
    class_names=lambda ds: list(label_map(NAME).class_names),
    owns_gt=owns_cityscapes27_gt,
    read_gt=read_cityscapes27_gt,
    background=False,
)
