"""Fine-to-coarse label tables shipped as package data (``cocostuff27.csv``,
``cityscapes27.csv``) and the reading of a label PNG through one.

Each table maps every value a label PNG may hold (its ``fine_id`` column) to a class
``coarse_id`` in ``[0, n_classes)`` or to 255, ignored. A value the table does not list is
not a label of the dataset: reading a PNG that holds one is an error naming the file. The
header comments of each CSV name the peer code the table was taken from.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

IGNORE = 255


@dataclass(frozen=True)
class LabelMap:
    """A fine-to-coarse table: ``lut`` ``(256,)`` uint8 (coarse class or 255), ``known``
    ``(256,)`` bool (the values the table lists), ``class_names`` (index = coarse id)."""

    name: str
    lut: np.ndarray
    known: np.ndarray
    class_names: tuple[str, ...]


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


@functools.cache
def label_map(name: str) -> LabelMap:
    """The table ``lcseg_steps/data/<name>.csv`` (columns ``fine_id``, one id or a range
    ``a-b``, ``coarse_id`` and ``coarse_name``). Class names are those of the coarse ids
    ``0..n - 1``, which must all occur; a fine id listed twice is an error."""
    where = f"lcseg_steps/data/{name}.csv"
    rows = _rows(resources.files("lcseg_steps.data").joinpath(f"{name}.csv").read_text())
    lut = np.full(256, IGNORE, np.uint8)
    known = np.zeros(256, bool)
    names: dict[int, str] = {}
    for row in rows:
        first, _, last = row["fine_id"].partition("-")  # one id, or a range "a-b"
        fines, coarse = range(int(first), int(last or first) + 1), int(row["coarse_id"])
        if fines.start < 0 or fines.stop > 256 or known[fines.start : fines.stop].any():
            raise ValueError(f"{where}: fine id {row['fine_id']} is out of 0..255 or listed twice")
        known[fines.start : fines.stop] = True
        lut[fines.start : fines.stop] = coarse
        if coarse != IGNORE:
            if names.setdefault(coarse, row["coarse_name"]) != row["coarse_name"]:
                raise ValueError(f"{where}: coarse id {coarse} has two names")
    n = len(names)
    if sorted(names) != list(range(n)):
        raise ValueError(f"{where}: coarse ids are not 0..{n - 1}")
    return LabelMap(name, lut, known, tuple(names[c] for c in range(n)))


def read_mapped_png(path: str | os.PathLike, table: LabelMap) -> np.ndarray:
    """A label PNG (grayscale ``L`` or palette indices ``P``) as ``(H, W)`` uint8 coarse
    classes, 255 = ignored. A missing file raises ``FileNotFoundError``; another mode, or
    a value the table does not list, ``ValueError``, both naming the file."""
    from lcseg_steps.data.palette import open_label_png

    path = Path(path)
    mode, raw = open_label_png(path)
    if mode not in ("L", "P"):
        raise ValueError(f"{path}: label PNG has mode {mode!r}; expected L (grayscale) or P")
    raw = raw.astype(np.uint8, copy=False)
    unknown = ~table.known[raw]
    if unknown.any():
        raise ValueError(
            f"{path}: value {int(raw[unknown][0])} is not a label of {table.name} "
            f"(lcseg_steps/data/{table.name}.csv)"
        )
    return table.lut[raw]
