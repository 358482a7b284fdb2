"""``dataset.image_list``: restrict any dataset's listing to the images named in a text file.

Published numbers are often computed on a subset of a split (a curated COCO list, for
instance), so a run can be scored on exactly that subset. The filter runs after the
dataset's own listing and knows nothing of the dataset: it compares names only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lcseg_steps.data.records import ImageRecord

SHOWN_MISSING = 5  # how many ids not found an error names


def read_image_list(path: str | os.PathLike) -> list[str]:
    """Entries of an image list: one per line, surrounding blanks stripped; empty lines
    and lines starting with ``#`` skipped; repeats kept once, in first-seen order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image list not found (check dataset.image_list)")
    entries: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.setdefault(entry, None)
    if not entries:
        raise ValueError(f"{path}: image list names no image (check dataset.image_list)")
    return list(entries)


def _names(record: ImageRecord) -> tuple[str, ...]:
    """What a list entry may be: the image id, the file name, or the file stem."""
    file_name = record.path.replace("\\", "/").rpartition("/")[2]
    return record.image_id, file_name, os.path.splitext(file_name)[0]


def filter_by_image_list(
    records: Sequence[ImageRecord], image_list: str | os.PathLike | None
) -> list[ImageRecord]:
    """The records named in the file ``image_list``, in the dataset's listing order.

    An entry matches a record by its image id (``2007_000033``, ``000000397133``), its
    file name (``000000397133.jpg``) or its file stem. ``None`` or ``""`` keeps every
    record. An entry that matches no record is an error naming the list file, how many
    entries were not found and the first of them.
    """
    if not image_list:
        return list(records)
    wanted = read_image_list(image_list)
    wanted_set = set(wanted)
    found: set[str] = set()
    kept = []
    for record in records:
        hits = wanted_set.intersection(_names(record))
        if hits:
            kept.append(record)
            found.update(hits)
    missing = [entry for entry in wanted if entry not in found]
    if missing:
        raise ValueError(
            f"{image_list}: {len(missing)} of {len(wanted)} listed images are not in the "
            f"dataset listing (check dataset.image_list, dataset.root and dataset.split); "
            f"first not found: {', '.join(missing[:SHOWN_MISSING])}"
        )
    return kept
