"""COCO-Stuff-27: COCO 2017 images with the COCO-Stuff label PNGs mapped to 27 classes,
on the curated image list the field scores on (STEGO, PiCIE, CAUSE).

Layout under ``dataset.root``::

    images/val2017/<id>.jpg
    annotations/stuffthingmaps_trainval2017/val2017/<id>.png   (fine ids 0..181, 255)
    curated/val2017/Coco164kFull_Stuff_Coarse_7.txt            (one id per line)

The label PNGs are COCO-Stuff's ``stuffthingmaps_trainval2017.zip``; the fine ids go
through ``cocostuff27.csv`` (STEGO's table) to 27 classes, things and stuff, with no
background class; 255 is ignored. The curated list is not part of COCO: it is IIC's, in
``COCOStuff164kCurated.tar.gz``; ``dataset.curated_list`` may name it elsewhere. The
listing runs while Snakemake builds the DAG, so a missing list, root or folder stops the
run before any job, naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lcseg_steps.data.label_maps import label_map, read_mapped_png
from lcseg_steps.data.records import Dataset, ImageRecord, gt_file

NAME = "cocostuff27"
CURATED_FILE = "Coco164kFull_Stuff_Coarse_7.txt"
LABEL_DIR = "stuffthingmaps_trainval2017"
GT_KEY = "#" + NAME  # ground-truth references are "<label png>#cocostuff27"
SPLITS = {"val": "val2017", "val2017": "val2017", "train": "train2017", "train2017": "train2017"}


def coco_split(dataset: dict) -> str:
    """``dataset.split`` as COCO's folder name: ``val`` (the schema default) is
    ``val2017``, ``train`` is ``train2017``."""
    split = dataset.get("split") or "val"
    if split not in SPLITS:
        raise ValueError(f"dataset.split: {split!r} is not a COCO-Stuff split ({sorted(SPLITS)})")
    return SPLITS[split]


def cocostuff_paths(dataset: dict) -> dict[str, Path]:
    """The image folder, the label folder and the curated list of the configured split."""
    root, split = Path(dataset["root"]), coco_split(dataset)
    curated = dataset.get("curated_list")
    return {
        "root": root,
        "images": root / "images" / split,
        "labels": root / "annotations" / LABEL_DIR / split,
        "curated": Path(curated) if curated else root / "curated" / split / CURATED_FILE,
    }


def missing_curated_message(path: Path) -> str:
    return (
        f"{path}: the curated COCO-Stuff image list is missing. It is IIC's list of the "
        f"images STEGO, PiCIE and CAUSE score COCO-Stuff-27 on ({CURATED_FILE}); it is not "
        "part of COCO or COCO-Stuff but comes in IIC's COCOStuff164kCurated.tar.gz "
        "(curated/<split>/ inside it); a copy of the val2017 list (2,175 ids) is in the "
        "repository PaulCouairon/DiffCut at dataloader/coco/val2017/. Put it at "
        f"<dataset.root>/curated/<split>/{CURATED_FILE} or set dataset.curated_list to its "
        "path."
    )


def read_curated(path: Path) -> list[str]:
    """Image ids of a curated list: one per line, blanks stripped, empty lines and ``#``
    lines skipped, repeats kept once."""
    if not path.is_file():
        raise FileNotFoundError(missing_curated_message(path))
    ids: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            ids.setdefault(os.path.splitext(entry)[0], None)
    if not ids:
        raise ValueError(f"{path}: the curated image list names no image")
    return list(ids)


def list_cocostuff27(dataset: dict) -> list[ImageRecord]:
    """Records of the curated list's images, in its order; ``gt`` is
    ``"<label png>#cocostuff27"``."""
    p = cocostuff_paths(dataset)
    if not p["root"].is_dir():
        raise FileNotFoundError(
            f"{p['root']}: COCO-Stuff root directory not found (check dataset.root)"
        )
    for key, what in (("images", "COCO 2017 image"), ("labels", "COCO-Stuff label")):
        if not p[key].is_dir():
            raise FileNotFoundError(
                f"{p[key]}: {what} folder not found (check dataset.root and dataset.split)"
            )
    ids = read_curated(p["curated"])
    images, labels = os.path.join(str(p["images"]), ""), os.path.join(str(p["labels"]), "")
    return [
        ImageRecord(image_id=i, path=f"{images}{i}.jpg", gt=f"{labels}{i}.png{GT_KEY}") for i in ids
    ]


def cocostuff27_inputs(dataset: dict) -> list[str]:
    """The curated list: what the index of a COCO-Stuff-27 run reads."""
    return [str(cocostuff_paths(dataset)["curated"])]


def owns_cocostuff27_gt(gt: str) -> bool:
    return gt.endswith(GT_KEY)


def read_cocostuff27_gt(record: ImageRecord) -> np.ndarray:
    """The label PNG of ``record`` mapped to the 27 classes, 255 ignored."""
    return read_mapped_png(gt_file(record.gt), label_map(NAME))


DATASET = Dataset(
    name=NAME,
    inputs=cocostuff27_inputs,
    list_images=list_cocostuff27,
    class_names=lambda ds: list(label_map(NAME).class_names),
    owns_gt=owns_cocostuff27_gt,
    read_gt=read_cocostuff27_gt,
    background=False,
)
