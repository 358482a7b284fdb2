"""Fingerprints of a whole ``results/`` folder, to compare two runs of the pipeline.

A snapshot holds, for every Zarr store (a ``*.zarr`` directory; the ``*.zarr.tmp-<host>-<pid>``
siblings a killed writer leaves behind are not stores): the dtype, shape and sha256 of
every array's bytes, and the store attrs with absolute paths and timings masked. Every
other output file is fingerprinted too: JSON files by their parsed values, the rest by
their bytes. Logs (which hold elapsed times) and Snakemake's ``.snakemake_timestamp``
markers are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcseg_steps.stores.layout import open_store
from tests.helpers import snakemake

TIMING_KEY = re.compile(r"(^|_)(time|times|seconds|elapsed|duration|timestamp|date)($|_)")


def array_digest(arr) -> tuple[str, tuple[int, ...], str, int]:
    """(dtype, shape, sha256 of the contents, bytes hashed) of one Zarr array."""
    data = np.asarray(arr[...])
    if data.dtype.kind in "OTU":
        # variable-width strings: NumPy's in-memory bytes of a StringDType array are not
        # its contents, so hash the values themselves
        blob = json.dumps([str(x) for x in data.ravel()]).encode("utf-8")
    else:
        blob = np.ascontiguousarray(data).tobytes()
    return str(data.dtype), tuple(data.shape), hashlib.sha256(blob).hexdigest(), len(blob)


def mask_attrs(value):
    """Attrs with what may legitimately differ between runs masked: absolute paths and
    timings. Everything else is compared as is."""
    if isinstance(value, dict):
        return {
            k: "<timing>" if TIMING_KEY.search(str(k).lower()) else mask_attrs(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_attrs(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return "<absolute path>"
    return value


def _walk_arrays(group, prefix=""):
    for name, arr in sorted(group.arrays()):
        yield prefix + name, arr
    for name, sub in sorted(group.groups()):
        yield from _walk_arrays(sub, f"{prefix}{name}/")


def is_store(path: Path) -> bool:
    return path.is_dir() and path.name.endswith(".zarr")


def store_digest(path: Path) -> tuple[dict, dict]:
    """({array name: array_digest}, masked attrs) of one store."""
    with warnings.catch_warnings():
        # Snakemake's .snakemake_timestamp in a directory() output is no Zarr member
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp")
        group = open_store(path)
        arrays = {name: array_digest(arr) for name, arr in _walk_arrays(group)}
        return arrays, mask_attrs(dict(group.attrs))


@dataclass
class Snapshot:
    arrays: dict[str, tuple[str, tuple[int, ...], str, int]] = field(default_factory=dict)
    attrs: dict[str, dict] = field(default_factory=dict)
    files: dict[str, object] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)  # *.tmp-<host>-<pid> trees of killed writers
    array_bytes: int = 0

    @property
    def stores(self) -> list[str]:
        return sorted(self.attrs)


def snapshot(results: Path) -> Snapshot:
    """Fingerprint everything under ``results`` (a run's ``results/`` folder)."""
    results = Path(results)
    snap = Snapshot()
    for dirpath, dirnames, filenames in os.walk(results):
        here = Path(dirpath)
        rel = here.relative_to(results)
        if "logs" in rel.parts:
            dirnames[:] = []
            continue
        for d in sorted(dirnames):
            if ".zarr.tmp-" in d:
                snap.leftovers.append(str(rel / d))
            elif is_store(here / d):
                arrays, attrs = store_digest(here / d)
                key = str(rel / d)
                snap.attrs[key] = attrs
                for name, dig in arrays.items():
                    snap.arrays[f"{key}::{name}"] = dig
                    snap.array_bytes += dig[3]
        dirnames[:] = [d for d in dirnames if not d.endswith(".zarr") and ".zarr.tmp-" not in d]
        for f in filenames:
            if f == ".snakemake_timestamp":
                continue
            p = here / f
            if f.endswith(".json"):
                snap.files[str(rel / f)] = json.loads(p.read_text())
            else:
                snap.files[str(rel / f)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def differences(a: Snapshot, b: Snapshot, limit: int = 20) -> list[str]:
    """Human-readable differences between two snapshots (empty when they agree)."""
    out = []
    for what, da, db in (("array", a.arrays, b.arrays), ("attrs of", a.attrs, b.attrs)):
        for k in sorted(set(da) | set(db)):
            if k not in db:
                out.append(f"{what} {k}: only in the first run")
            elif k not in da:
                out.append(f"{what} {k}: only in the second run")
            elif da[k] != db[k]:
                out.append(f"{what} {k}: {str(da[k])[:200]} != {str(db[k])[:200]}")
    for k in sorted(set(a.files) | set(b.files)):
        if a.files.get(k, "<missing>") != b.files.get(k, "<missing>"):
            out.append(f"file {k} differs")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def store_kinds(snap: Snapshot) -> set[str]:
    """Store kinds present, e.g. ``features``, ``dataset_level``, ``patch_masks``."""
    return {
        Path(s).stem if Path(s).parent.name.startswith("seed") else Path(s).parent.name
        for s in snap.stores
    }


_RUNS: dict[str, Path] = {}


def reference_run(tmp_path_factory, config: dict) -> Path:
    """The working directory of one uninterrupted run of ``config``, run once per test
    session and shared by the modules that ask for the same config. Read it, never
    write into it."""
    key = json.dumps(config, sort_keys=True)
    if key not in _RUNS:
        wd = tmp_path_factory.mktemp("reference")
        r = snakemake(wd, config)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        _RUNS[key] = wd
    return _RUNS[key]
