"""The image index: which images a run covers, where their ground truth is, their sizes
and the shard each one belongs to.

``list_images`` is called while Snakemake parses the workflow, so it only reads id
lists and annotation metadata, never pixels. ``index_dataset`` (the ``index`` rule)
decodes every image once to find all those ``extract`` would refuse, before any forward
pass, adds the image sizes and shard names, and reports or skips the bad images
(``dataset.on_bad_image``); ``write_index``/``read_index`` keep the result as a TSV that
every later stage reads, ``write_skipped``/``read_skipped`` the skipped images.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lcseg_steps.data.image_list import filter_by_image_list
from lcseg_steps.data.images import (
    ImageError,
    exif_orientation,
    orient,
    oriented_size,
    patch_grid_size,
    read_record_reduced,
)
from lcseg_steps.data.records import ImageRecord, gt_file
from lcseg_steps.data.registry import dataset_for_gt, get_dataset
from lcseg_steps.stores.atomic_write import tmp_sibling

INDEX_COLUMNS = ("id", "path", "gt", "height", "width", "shard", "orientation")
# images.tsv written before the orientation column: every image as stored (orientation 1)
OLD_INDEX_COLUMNS = INDEX_COLUMNS[:-1]
PROGRESS_EVERY = 1000


def list_images(dataset: dict) -> list[ImageRecord]:
    """Records of the configured dataset in a deterministic order, without decoding pixels.

    ``dataset`` is the validated ``dataset`` config section; the listing is the registered
    dataset's (``lcseg_steps.data.registry``). For ``demo`` the ids follow from
    ``dataset.demo.n_images`` so this works before the demo data are generated.
    A missing root, split file or annotation file raises ``FileNotFoundError`` naming the
    path and the config key. A set ``dataset.image_list`` keeps only the images it names
    (``lcseg_steps.data.image_list``).
    """
    root = dataset.get("root")
    if not root:
        raise ValueError("dataset.root is empty: set it to the dataset directory")
    records = get_dataset(dataset.get("name")).list_images(dataset)
    return filter_by_image_list(records, dataset.get("image_list"))


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


# formats that may hold several frames or pages; a JPEG never does here (a camera's MPO
# file is a JPEG with a second, smaller picture that every viewer ignores)
_MULTI_FRAME_EXTENSIONS = (".png", ".webp", ".tif", ".tiff", ".gif")


def animation_frames(path: str) -> int:
    """How many frames (or pages) the image file holds, from its header; 1 for a still."""
    if os.path.splitext(path)[1].lower() not in _MULTI_FRAME_EXTENSIONS:
        return 1
    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1  # the decoder read it; the header reader's opinion does not matter


BAD_IMAGE_POLICIES = ("error", "skip")
SKIPPED_COLUMNS = ("id", "path", "reason")


@dataclass(frozen=True)
class SkippedImage:
    """An image the index left out (``dataset.on_bad_image: skip``), or a file of a
    user's folder that is not an image (``image_id`` empty), and why."""

    image_id: str
    path: str
    reason: str


class BadImagesError(ImageError):
    """Images that ``extract`` would refuse, every one of them, with ``dataset.on_bad_image:
    error``; ``problems`` holds one ``SkippedImage`` per file."""

    def __init__(self, dataset_name: str, n_images: int, problems: Sequence[SkippedImage]):
        self.problems = list(problems)
        lines = "".join(f"\n  {p.path}: {p.reason}" for p in self.problems)
        super().__init__(
            f"dataset {dataset_name!r}: {len(self.problems)} of {n_images} images cannot be "
            "used (dataset.on_bad_image: error; set it to skip to leave them out and list them "
            f"in skipped.tsv):{lines}"
        )


def on_bad_image(dataset: dict) -> str:
    """``dataset.on_bad_image``, or the registered dataset's default when it is null."""
    policy = dataset.get("on_bad_image") or get_dataset(dataset.get("name")).on_bad_image
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"dataset.on_bad_image: {policy!r}; expected one of {BAD_IMAGE_POLICIES}")
    return policy


# check_image decodes a JPEG of at least twice this size at a reduced scale
CHECK_SIDE = 1024


def check_image(
    rec: ImageRecord, patch_size: int | None, long_side: int | None
) -> tuple[int, int, str]:
    """``(height, width, problem)`` of one image as ``extract`` will see it.

    The file is decoded with the decoder ``extract`` uses (``read_record``: turned by
    ``rec.orientation``; a JPEG of at least twice ``CHECK_SIDE`` px at a reduced scale,
    ``read_record_reduced``, which still reads every byte of its compressed data and
    takes the size from the header), so a missing, empty, corrupt or truncated file is caught here,
    not after GPU work; the decoded (turned) size must match a size the listing already
    knows (COCO's json), and with a ``patch_size`` the resize policy (``patch_grid_size``
    at ``long_side``) must leave at least one patch per side. ``problem`` is ``""`` for a
    usable image, else the reason.
    """
    prefix = f"{rec.path}: "
    try:
        h, w = read_record_reduced(rec, CHECK_SIDE)[1]
        frames = animation_frames(rec.path)
        if frames > 1:
            return (
                h,
                w,
                (
                    f"an animation of {frames} frames (lcseg segments still images; save the "
                    "frame you want as PNG)"
                ),
            )
        if rec.height > 0 and rec.width > 0 and (h, w) != (rec.height, rec.width):
            return (
                h,
                w,
                (f"decodes to {h}x{w} (HxW) but the dataset listing says {rec.height}x{rec.width}"),
            )
        if patch_size:
            patch_grid_size(h, w, patch_size, long_side)
    except ImageError as err:
        reason = str(err)
        return rec.height, rec.width, reason[len(prefix) :] if reason.startswith(prefix) else reason
    return h, w, ""


def assign_shards_over(
    records: Sequence[ImageRecord], shard_size: int, n_shards: int
) -> list[ImageRecord]:
    """Records into exactly ``n_shards`` shards of at most ``shard_size`` images.

    The workflow fixes the shard list from the listing before the index runs, so when
    skipped images would leave fewer shards than listed, the kept images are spread over
    all of them (consecutive blocks, sizes differing by at most one); otherwise this is
    ``assign_shards``. Fewer images than shards is a ``ValueError``.
    """
    if len(shard_names(len(records), shard_size)) == n_shards:
        return assign_shards(records, shard_size)
    if len(records) < n_shards:
        raise ValueError(
            f"only {len(records)} usable image(s) remain for the {n_shards} shards the listing "
            f"gave (shard_size: {shard_size}); raise shard_size or fix the skipped images"
        )
    names = shard_names(n_shards, 1)
    base, extra = divmod(len(records), n_shards)
    out, start = [], 0
    for k, name in enumerate(names):
        size = base + (k < extra)
        out += [replace(r, shard=name) for r in records[start : start + size]]
        start += size
    return out


def index_dataset(
    dataset: dict,
    shard_size: int,
    log: Callable[[str], None] = print,
    *,
    patch_size: int | None = None,
    long_side: int | None = None,
    threads: int = 1,
) -> tuple[list[ImageRecord], list[SkippedImage]]:
    """``list_images`` plus checked image sizes and shard names, and the skipped images.

    Every image is checked with ``check_image`` (a full decode, on ``threads`` threads,
    with progress in the log) before anything else runs. The images that fail are all
    reported at once: with ``dataset.on_bad_image: error`` (see ``on_bad_image``) as one
    ``BadImagesError`` listing every file and its reason; with ``skip`` they are left out
    and returned as ``SkippedImage``s, and the kept images fill the shards the listing
    gave (``assign_shards_over``). A missing ground-truth file raises
    ``FileNotFoundError`` naming it. For a dataset that orients its images
    (``Dataset.orient``: folder) each record gets its file's EXIF orientation, and its
    size is that of the turned image.
    """
    policy = on_bad_image(dataset)
    records = list_images(dataset)
    orients = get_dataset(dataset.get("name")).orient
    if not records:
        raise ValueError(f"dataset {dataset.get('name')!r} at {dataset.get('root')}: no images")
    log(
        f"index: {len(records)} images in dataset {dataset.get('name')!r}; decoding each "
        f"on {threads} thread(s) (on_bad_image: {policy})"
    )
    checked_gt: set[str] = set()
    for rec in records:
        gt_path = gt_file(rec.gt)
        if gt_path and gt_path not in checked_gt:
            if not os.path.isfile(gt_path):
                raise FileNotFoundError(
                    f"{gt_path}: ground-truth file of image {rec.image_id} not found"
                )
            checked_gt.add(gt_path)

    def check(rec: ImageRecord) -> tuple[ImageRecord, tuple[int, int, str]]:
        if orients:
            rec = replace(rec, orientation=exif_orientation(rec.path))
        return rec, check_image(rec, patch_size, long_side)

    kept, bad = [], []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(check, records)
        for n, (rec, (h, w, problem)) in enumerate(results, 1):
            if problem:
                bad.append(SkippedImage(rec.image_id, rec.path, problem))
                log(f"index: {rec.path}: {problem}")
            else:
                kept.append(replace(rec, height=h, width=w))
            if n % PROGRESS_EVERY == 0 or n == len(records):
                rate = n / max(time.perf_counter() - t0, 1e-9)
                log(f"index: {n}/{len(records)} images checked ({rate:.0f}/s), {len(bad)} bad")
    if bad and policy == "error":
        raise BadImagesError(dataset.get("name"), len(records), bad)
    if bad:
        log(f"index: {len(bad)} image(s) skipped (dataset.on_bad_image: skip)")
    left_out = get_dataset(dataset.get("name")).left_out
    if left_out is not None:
        others = [SkippedImage("", path, reason) for path, reason in left_out(dataset)]
        for s in others:
            log(f"index: {s.path}: left out: {s.reason}")
        bad += others
    if not kept:
        raise ValueError(f"dataset {dataset.get('name')!r}: every image was skipped")
    n_shards = len(shard_names(len(records), shard_size))
    return assign_shards_over(kept, shard_size, n_shards), bad


def build_index(
    dataset: dict, shard_size: int, log: Callable[[str], None] = print, **checks
) -> list[ImageRecord]:
    """The kept records of ``index_dataset`` (``checks``: its keyword arguments)."""
    return index_dataset(dataset, shard_size, log, **checks)[0]


def write_cleaned_tsv(
    path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> Path:
    """A TSV with header ``columns`` and one line per row, tabs and newlines inside a
    field turned into spaces (reasons quote decoder messages), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    clean = str.maketrans("\t\n\r", "   ")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(v).translate(clean) for v in row) + "\n")
    os.replace(tmp, path)
    return path


def write_skipped(skipped: Iterable[SkippedImage], path: str | os.PathLike) -> None:
    """``skipped.tsv``: header ``id path reason``, one row per skipped image (written
    atomically; header only when none)."""
    write_cleaned_tsv(path, SKIPPED_COLUMNS, ((s.image_id, s.path, s.reason) for s in skipped))


def n_images_skipped(skipped: Iterable[SkippedImage]) -> int:
    """How many of ``skipped`` are images (the rest, without an id, are other files of a
    folder)."""
    return sum(bool(s.image_id) for s in skipped)


def read_skipped(path: str | os.PathLike) -> list[SkippedImage]:
    """Rows of a ``skipped.tsv`` written by ``write_skipped``."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if tuple(lines[0].split("\t")) != SKIPPED_COLUMNS:
        raise ValueError(f"{path}: header must be {' '.join(SKIPPED_COLUMNS)} (tab-separated)")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        if line:
            fields = line.split("\t")
            if len(fields) != len(SKIPPED_COLUMNS):
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields")
            out.append(SkippedImage(*fields))
    return out


def write_index(records: Iterable[ImageRecord], path: str | os.PathLike) -> None:
    """Write records as a TSV with header ``id path gt height width shard orientation``.

    Written to a temporary sibling then renamed, so a killed job leaves no half index.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    rows = []
    for r in records:
        row = (r.image_id, r.path, r.gt, str(r.height), str(r.width), r.shard, str(r.orientation))
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
    naming it and the line. An index written before the ``orientation`` column reads as
    orientation 1 (the stored pixels, as it was used then)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image index not found")
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    header = tuple(lines[0].split("\t")) if lines else ()
    if header not in (INDEX_COLUMNS, OLD_INDEX_COLUMNS):
        raise ValueError(f"{path}: header must be {' '.join(INDEX_COLUMNS)} (tab-separated)")
    for lineno, line in enumerate(lines[1:], 2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(
                f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        image_id, img_path, gt, height, width, shard = fields[:6]
        try:
            h, w = int(height), int(width)
            turn = int(fields[6]) if len(fields) > 6 else 1
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: height/width/orientation must be integers") from err
        if turn not in range(1, 9):
            raise ValueError(f"{path}:{lineno}: orientation must be 1..8, got {turn}")
        records.append(ImageRecord(image_id, img_path, gt, h, w, shard, turn))
    return records


def load_ground_truth(record: ImageRecord) -> np.ndarray | None:
    """Ground truth of ``record`` as ``(H, W)`` uint8 class ids, 255 = void.

    ``None`` when ``record.gt`` is empty. A missing gt file raises ``FileNotFoundError``;
    a map whose size differs from the image's (``record.height/width`` when known, else
    the image header, turned by ``record.orientation``) raises ``ValueError``, both naming
    the file.

    Orientation: the ground truth is in the convention of the image as the stages see it
    (turned by ``record.orientation``); a map whose size fits only the stored pixels
    (orientation 5..8 of a non-square image: its height and width swapped) is turned by
    the image's orientation. Orientations 2..4 keep the size, so such a map is taken as
    already turned. VOC and COCO records have orientation 1: their annotations are in
    stored pixels, and so are their images.
    """
    if not record.gt:
        return None
    labels = dataset_for_gt(record.gt).read_gt(record)
    if record.height > 0 and record.width > 0:
        expected = (record.height, record.width)
    else:
        expected = oriented_size(*_header_size(record.path), record.orientation)
    raw = oriented_size(*expected, record.orientation)  # the stored pixels' size
    if labels.shape != expected and labels.shape == raw:
        labels = orient(labels, record.orientation)
    if labels.shape != expected:
        raise ValueError(
            f"{gt_file(record.gt)}: ground truth of image {record.image_id} is "
            f"{labels.shape[0]}x{labels.shape[1]} but the image is {expected[0]}x{expected[1]}"
        )
    return labels


def class_names(dataset: dict) -> list[str]:
    """Ground-truth class names of a dataset, index = class id (0 is background)."""
    return get_dataset(dataset["name"]).class_names(dataset)
