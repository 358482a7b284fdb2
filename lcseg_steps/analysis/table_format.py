"""The layout of the analysis table's CSV (``table.csv``): written by the stage
``lcseg_steps.stages.table``, read back by the stage ``lcseg_steps.stages.report``.

One row per variant: ``variant``, ``kind`` (one of :data:`KINDS`), one column per varying
config key (dotted name, a short string; ``""`` when the variant has no such key), the
:data:`METRIC_COLUMNS` and one ``iou/<class>`` column per class (:data:`IOU_PREFIX`), all
fractions in [0, 1]. Floats are written at full precision (``repr``), NaN (and a class a
row lacks) as an empty cell.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lcseg_steps.stores.atomic_write import write_text_atomic

KINDS = ("method", "baseline")
METRIC_COLUMNS = ("miou_mean", "miou_std", "n_seeds", "pixel_accuracy_mean")
# The fixed columns; the others are the varying config keys and the per-class columns.
FIXED_COLUMNS = ("variant", "kind", *METRIC_COLUMNS)
IOU_PREFIX = "iou/"
REQUIRED_COLUMNS = ("variant", "kind", "miou_mean")  # what a reader cannot do without


def columns(rows: Sequence[Mapping]) -> list[str]:
    """Every key of ``rows`` in first-seen order (rows may differ in their classes)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def key_columns(cols: Sequence[str]) -> list[str]:
    """The varying config keys among a table's columns ``cols``, in their order."""
    return [c for c in cols if c not in FIXED_COLUMNS and not c.startswith(IOU_PREFIX)]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # repr: the float round-trips
    return str(value)


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """``rows`` -> CSV with a header of :func:`columns`; floats at full precision, NaN (and
    a class a row lacks) as an empty cell."""
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow([_cell(r.get(c, math.nan)) for c in cols])
    return write_text_atomic(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """A table written by :func:`write_csv` -> (the varying keys (:func:`key_columns`), the
    rows as dicts of strings). A table without one of :data:`REQUIRED_COLUMNS` is a
    ValueError."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = list(reader.fieldnames or [])
        rows = [dict(r) for r in reader]
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"{path}: analysis table has no column {', '.join(missing)}")
    return key_columns(cols), rows


def changes(rows: Sequence[Mapping], varying: Sequence[str]) -> list[str]:
    """Per row, what it changes from the ``base`` row (``key=value, ...`` over ``varying``,
    the cells that differ; ``-`` for the base itself, empty for a baseline): the one column
    a reader needs, where the CSV has one per key."""
    base = next((r for r in rows if r.get("variant") == "base"), None)
    out = []
    for r in rows:
        if r.get("kind") == "baseline" or base is None:
            out.append("")
        elif r is base:
            out.append("-")
        else:
            diff = [k for k in varying if str(r.get(k, "")) != str(base.get(k, ""))]
            out.append(", ".join(f"{k}={r.get(k, '')}" for k in diff))
    return out
