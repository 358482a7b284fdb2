"""The image index: which images a run covers, where their ground truth is, their sizes
and the shard each one belongs to.

``list_images`` is called while Snakemake parses the workflow, so it only reads id
lists and annotation metadata, never pixels. ``build_index`` adds image sizes from
file headers and shard names; ``write_index``/``read_index`` keep the result as a TSV
that every later stage reads.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lcseg_steps.atomic_write import tmp_sibling
from lcseg_steps.data.records import ImageRecord, gt_file
from lcseg_steps.data.registry import dataset_for_gt, get_dataset

INDEX_COLUMNS = ("id", "path", "gt", "height", "width", "shard")
PROGRESS_EVERY = 1000


def list_images(dataset: dict) -> list[ImageRecord]:
    """Records of the configured dataset in a deterministic order, without decoding pixels.

    ``dataset`` is the validated ``dataset`` config section; the listing is the registered
    dataset's (``lcseg_steps.data.registry``). For ``demo`` the ids follow from
    ``dataset.demo.n_images`` so this works before the demo data are generated.
    A missing root, split file or annotation file raises ``FileNotFoundError`` naming the
    path and the config key.
    """
    root = dataset.get("root")
    if not root:
        raise ValueError("dataset.root is empty: set it to the dataset directory")
    return get_dataset(dataset.get("name")).list_images(dataset)


def shard_names(n_images: int, shard_size: int) -> list[str]:
    """``["s0000", "s0001", ...]``: one name per block of ``shard_size`` images."""
    if shard_size <= 0:
        raise ValueError(f"shard size must be positive, got {shard_size}")
    if n_images < 0:
        raise ValueError(f"number of images must be >= 0, got {n_images}")
    return [f"s{i:04d}" for i in range(-(-n_images // shard_size))]


def assign_shards(records: Sequence[ImageRecord], shard_size: int) -> list[ImageRecord]:
    """Put records into consecutive blocks of ``shard_size`` in listing order."""
    names = shard_names(len(records), shard_size)
    return [replace(r, shard=names[i // shard_size]) for i, r in enumerate(records)]


def _header_size(path: str) -> tuple[int, int]:
    """``(height, width)`` from the image header only; the pixels are not decoded."""
    # here, not at the top: the workflow imports this module while Snakemake builds the
    # DAG, and lcseg_steps.images imports OpenCV (~40 ms)
    from lcseg_steps.images import ImageError

    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: image file is empty")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from err
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: image header gives an empty size {height}x{width}")
    return height, width


def build_index(
    dataset: dict, shard_size: int, log: Callable[[str], None] = print
) -> list[ImageRecord]:
    """``list_images`` plus image sizes and shard names.

    Sizes the listing does not know are read from image headers; a missing image or
    ground-truth file raises ``FileNotFoundError`` and an unreadable image ``ImageError``,
    each naming the file.
    """
    records = list_images(dataset)
    if not records:
        raise ValueError(f"dataset {dataset.get('name')!r} at {dataset.get('root')}: no images")
    log(f"index: {len(records)} images in dataset {dataset.get('name')!r}")
    checked_gt: set[str] = set()
    out = []
    for n, rec in enumerate(records, 1):
        if rec.height > 0 and rec.width > 0:
            if not os.path.isfile(rec.path):
                raise FileNotFoundError(f"{rec.path}: image file not found (dataset.root)")
        else:
            h, w = _header_size(rec.path)
            rec = replace(rec, height=h, width=w)
        gt_path = gt_file(rec.gt)
        if gt_path and gt_path not in checked_gt:
            if not os.path.isfile(gt_path):
                raise FileNotFoundError(
                    f"{gt_path}: ground-truth file of image {rec.image_id} not found"
                )
            checked_gt.add(gt_path)
        out.append(rec)
        if n % PROGRESS_EVERY == 0:
            log(f"index: {n}/{len(records)} images checked")
    return assign_shards(out, shard_size)


def write_index(records: Iterable[ImageRecord], path: str | os.PathLike) -> None:
    """Write records as a TSV with header ``id path gt height width shard``.

    Written to a temporary sibling then renamed, so a killed job leaves no half index.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    rows = []
    for r in records:
        row = (r.image_id, r.path, r.gt, str(r.height), str(r.width), r.shard)
        for field in row:
            if any(c in field for c in "\t\n\r"):
                raise ValueError(
                    f"{path}: field {field!r} of image {r.image_id} holds a tab or newline"
                )
        rows.append(row)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, path)


def read_index(path: str | os.PathLike) -> list[ImageRecord]:
    """Read a TSV written by ``write_index``; a malformed file raises ``ValueError``
    naming it and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image index not found")
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if not lines or tuple(lines[0].split("\t")) != INDEX_COLUMNS:
        raise ValueError(f"{path}: header must be {' '.join(INDEX_COLUMNS)} (tab-separated)")
    for lineno, line in enumerate(lines[1:], 2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(INDEX_COLUMNS):
            raise ValueError(
                f"{path}:{lineno}: expected {len(INDEX_COLUMNS)} tab-separated fields, "
                f"got {len(fields)}"
            )
        image_id, img_path, gt, height, width, shard = fields
        try:
            h, w = int(height), int(width)
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: height/width must be integers") from err
        records.append(ImageRecord(image_id, img_path, gt, h, w, shard))
    return records


def load_ground_truth(record: ImageRecord) -> np.ndarray | None:
    """Ground truth of ``record`` as ``(H, W)`` uint8 class ids, 255 = void.

    ``None`` when ``record.gt`` is empty. A missing gt file raises ``FileNotFoundError``;
    a map whose size differs from the image's (``record.height/width`` when known, else
    the image header) raises ``ValueError``, both naming the file.
    """
    if not record.gt:
        return None
    labels = dataset_for_gt(record.gt).read_gt(record)
    if record.height > 0 and record.width > 0:
        expected = (record.height, record.width)
    else:
        expected = _header_size(record.path)
    if labels.shape != expected:
        raise ValueError(
            f"{gt_file(record.gt)}: ground truth of image {record.image_id} is "
            f"{labels.shape[0]}x{labels.shape[1]} but the image is {expected[0]}x{expected[1]}"
        )
    return labels


def class_names(dataset: dict) -> list[str]:
    """Ground-truth class names of a dataset, index = class id (0 is background)."""
    return get_dataset(dataset["name"]).class_names(dataset)
