"""Stores that check themselves: a CRC32C per chunk, every chunk present, clear errors.

Every array :class:`lcseg_steps.stores.layout.StoreWriter` writes ends its codecs with Zarr v3's
``crc32c`` codec (4 bytes, little-endian, after the chunk's payload) and has every chunk
on disk, fill-valued ones included, so the chunk keys of an array follow from its shape
and chunk shape. :func:`checked_group` (what ``open_store`` returns) turns a read of a
damaged chunk (a changed byte, a chunk cut short, a missing chunk file) into one
:class:`StoreDamagedError` naming the store, the array, the chunk and the
``snakemake --forcerun`` that rewrites it; :func:`verify` reads every chunk of a run.

Arrays without the codec were written before checksums: they are read as before (a
missing chunk there is a fill-valued one), and :func:`verify` reports them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

# Snakemake drops a .snakemake_timestamp file into directory() outputs; zarr warns about
# it on every listing of a store (lcseg verify lists whole runs).
warnings.filterwarnings("ignore", message=".*snakemake_timestamp")

# The stage that writes each store, by the store's name or its folder (the output
# templates of lcseg_steps.pipeline; tests/test_store_checks.py holds the two together):
# the fallback for stores whose attrs do not name their rule.
STAGE_OF_STORE = {
    "features": "extract",
    "image_level": "image_level",
    "dataset_level": "fit_dataset",
    "category_level": "fit_category",
    "patch_masks": "merge",
    "pixel_masks": "refine",
    "objects": "objects",
    "classes": "assign",
    "semantic": "segment",
    "model": "model",
    "scene_dataset": "scene_dataset",
    "scene_levels": "scene_levels",
}


class StoreDamagedError(ValueError):
    """A chunk of a store that fails its checks; ``store``, ``array``, ``chunk`` (the
    chunk key, e.g. ``c/3/0``) and ``stage`` (the rule to rerun) say which."""

    def __init__(self, store: Path, array: str, chunk: str, problem: str, stage: str | None):
        self.store, self.array, self.chunk = store, array, chunk
        self.problem, self.stage = problem, stage
        rerun = (
            f"rerun the rule that wrote it: snakemake --forcerun {stage}"
            if stage
            else "rerun the rule that wrote it: snakemake --forcerun <rule>"
        )
        super().__init__(
            f"{store}: array {array!r}, chunk {chunk}: {problem}; the store is damaged, {rerun}"
        )

    def __reduce__(self):
        # a worker process's error reaches its parent whole (ValueError's own reduce
        # would call __init__ with the message alone)
        return type(self), (self.store, self.array, self.chunk, self.problem, self.stage)


def stage_of(path: str | os.PathLike, attrs) -> str | None:
    """The rule that wrote the store at ``path``: its attrs' ``rule``, else the stage its
    name or a folder above it stands for (:data:`STAGE_OF_STORE`), else None."""
    rule = attrs.get("rule") if attrs is not None else None
    if isinstance(rule, str) and rule:
        return rule
    p = Path(path)
    for name in (p.name.removesuffix(".zarr"), *(q.name for q in p.parents)):
        if name in STAGE_OF_STORE:
            return STAGE_OF_STORE[name]
    return None


def is_checksummed(array: zarr.Array) -> bool:
    """Whether ``array`` was written with the crc32c codec (and so with every chunk)."""
    return any(isinstance(c, Crc32cCodec) for c in array.compressors)


def chunk_keys(array: zarr.Array) -> Iterator[tuple[tuple[int, ...], str]]:
    """``(chunk coords, chunk key)`` of every chunk of ``array`` (none when it is empty)."""
    for coords in np.ndindex(*array.cdata_shape):
        yield coords, array.metadata.encode_chunk_key(coords)


def stored_keys(root: Path, array: zarr.Array) -> set[str]:
    """The chunk keys on disk of ``array`` in the store at ``root`` (one directory walk)."""
    base = root / array.path
    out = set()
    for dirpath, _dirs, files in os.walk(base / "c"):
        rel = Path(dirpath).relative_to(base).as_posix()
        out.update(f"{rel}/{f}" for f in files)
    if (base / "c").is_file():  # a 0-d array's one chunk
        out.add("c")
    return out


def missing_chunks(root: Path, array: zarr.Array) -> list[str]:
    """Chunk keys of a checksummed ``array`` absent from disk (``[]`` for an old array,
    whose fill-valued chunks were never written)."""
    if not is_checksummed(array):
        return []
    have = stored_keys(root, array)
    return [key for _, key in chunk_keys(array) if key not in have]


def _fixed_size(array: zarr.Array) -> int | None:
    """Bytes of one stored chunk of an uncompressed fixed-width array (payload + CRC)."""
    if array.compressors[:-1] or array.filters or not isinstance(array.serializer, BytesCodec):
        return None
    return int(np.prod(array.chunks)) * np.dtype(array.dtype).itemsize + 4


def chunk_problem(root: Path, array: zarr.Array, coords: tuple[int, ...]) -> str | None:
    """What is wrong with one chunk of ``array`` (None if it reads back): missing, cut
    short, a checksum mismatch, or a decoding error (``array``: a plain ``zarr.Array``)."""
    key = array.metadata.encode_chunk_key(coords)
    path = root / array.path / key
    checksummed = is_checksummed(array)
    if not path.is_file():
        return "the chunk file is missing" if checksummed else None
    if checksummed:
        data = path.read_bytes()
        want = _fixed_size(array)
        if want is not None and len(data) != want:
            return (
                f"the chunk file is cut short ({len(data)} of {want} bytes)"
                if len(data) < want
                else f"the chunk file has {len(data)} bytes, not {want}"
            )
        crc = google_crc32c.value(data[:-4]).to_bytes(4, "little")  # as zarr's codec
        if len(data) < 4 or crc != data[-4:]:
            return f"checksum mismatch ({len(data)} bytes on disk: changed or cut short)"
    try:
        zarr.Array.get_block_selection(array, coords)
    except Exception as exc:  # whatever the codecs raise on bytes they cannot decode
        return f"cannot be decoded ({type(exc).__name__}: {exc})"
    return None


class CheckedArray(zarr.Array):
    """A ``zarr.Array`` whose reads raise :class:`StoreDamagedError` on a damaged chunk.

    Every read of ``zarr.Array`` (``a[...]``, ``np.asarray(a)``, ``oindex``, ``blocks``)
    goes through one of the ``get_*_selection`` methods overridden here; a failing read
    is then diagnosed chunk by chunk (the failure path only: a good read costs nothing).
    """

    _root: Path
    _attrs: dict

    def _damaged(self, exc: Exception):
        for coords, key in chunk_keys(self):
            problem = chunk_problem(self._root, self, coords)
            if problem:
                raise StoreDamagedError(
                    self._root, self.basename, key, problem, stage_of(self._root, self._attrs)
                ) from exc
        raise exc

    def get_basic_selection(self, *args, **kwargs):
        try:
            return super().get_basic_selection(*args, **kwargs)
        except Exception as exc:
            self._damaged(exc)

    def get_orthogonal_selection(self, *args, **kwargs):
        try:
            return super().get_orthogonal_selection(*args, **kwargs)
        except Exception as exc:
            self._damaged(exc)

    def get_mask_selection(self, *args, **kwargs):
        try:
            return super().get_mask_selection(*args, **kwargs)
        except Exception as exc:
            self._damaged(exc)

    def get_coordinate_selection(self, *args, **kwargs):
        try:
            return super().get_coordinate_selection(*args, **kwargs)
        except Exception as exc:
            self._damaged(exc)

    def get_block_selection(self, *args, **kwargs):
        try:
            return super().get_block_selection(*args, **kwargs)
        except Exception as exc:
            self._damaged(exc)


class CheckedGroup(zarr.Group):
    """A read-only store's ``zarr.Group`` handing out :class:`CheckedArray` s.

    An array is checked for missing chunks when first taken from the group (one
    directory walk) and then kept, so the streaming loops that ask for the same array
    once per image pay neither the walk nor Zarr's metadata read again.
    """

    _root: Path
    _cache: dict

    def _checked(self, name: str, array: zarr.Array) -> CheckedArray:
        if name not in self._cache:
            out = CheckedArray(array._async_array)
            out._root, out._attrs = self._root, dict(self.attrs)
            missing = missing_chunks(self._root, out)
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise StoreDamagedError(
                    self._root,
                    out.basename,
                    missing[0],
                    f"the chunk file is missing{more}",
                    stage_of(self._root, out._attrs),
                )
            self._cache[name] = out
        return self._cache[name]

    def __getitem__(self, path: str):
        if path in self._cache:
            return self._cache[path]
        obj = super().__getitem__(path)
        if isinstance(obj, zarr.Array):
            return self._checked(path, obj)
        return checked_group(obj, self._root)

    def arrays(self):
        for name, array in super().arrays():
            yield name, self._checked(name, array)

    def groups(self):
        for name, group in super().groups():
            yield name, checked_group(group, self._root)


def checked_group(group: zarr.Group, root: str | os.PathLike) -> CheckedGroup:
    """``group`` (of the store at ``root``) as a :class:`CheckedGroup`."""
    out = CheckedGroup(group._async_group)
    # zarr.Group is a frozen dataclass: these are plain attributes beside its one field
    object.__setattr__(out, "_root", Path(root))
    object.__setattr__(out, "_cache", {})
    return out


# ---------------------------------------------------------------- lcseg verify


@dataclass(frozen=True)
class Finding:
    """The state of one store: ``status`` is ``"ok"``, ``"damaged"`` or
    ``"no checksum"``; ``detail`` says what (the first damaged chunk, or the arrays
    written before checksums)."""

    store: Path
    status: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:<11}  {self.store}" + (f": {self.detail}" if self.detail else "")


def find_stores(path: str | os.PathLike) -> list[Path]:
    """``path`` if it is a ``*.zarr`` store, else every ``*.zarr`` store under it (not
    looking inside stores), sorted."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.name.endswith(".zarr") and p.is_dir():
        return [p]
    out = []
    for dirpath, dirs, _files in os.walk(p):
        stores = [d for d in dirs if d.endswith(".zarr")]
        out += [Path(dirpath) / d for d in stores]
        dirs[:] = sorted(d for d in dirs if not d.endswith(".zarr"))
    return sorted(out)


def _walk(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, array in sorted(group.arrays()):
        yield prefix + name, array
    for name, sub in sorted(group.groups()):
        yield from _walk(sub, f"{prefix}{name}/")


def verify_store(path: str | os.PathLike) -> Finding:
    """Read every chunk of every array of the store at ``path``: the first damaged chunk
    (missing, cut short, checksum mismatch, undecodable), else whether it has checksums."""
    p = Path(path)
    try:
        group = zarr.open_group(str(p), mode="r")
        attrs = dict(group.attrs)
        arrays = list(_walk(group))
    except Exception as exc:  # zarr raises several types for a damaged store
        return Finding(p, "damaged", f"not a readable Zarr store ({exc})")
    stage = stage_of(p, attrs)
    rerun = f"; rerun: snakemake --forcerun {stage}" if stage else ""
    unchecked, chunks = [], 0
    for name, array in arrays:
        if not is_checksummed(array):
            unchecked.append(name)
        for coords, key in chunk_keys(array):
            problem = chunk_problem(p, array, coords)
            if problem:
                return Finding(p, "damaged", f"array {name!r}, chunk {key}: {problem}{rerun}")
            chunks += 1
    if unchecked:
        return Finding(
            p,
            "no checksum",
            f"written before checksums ({len(unchecked)} of {len(arrays)} arrays: "
            f"{', '.join(unchecked[:4])}{', ...' if len(unchecked) > 4 else ''}); its chunks "
            "decode, but damage inside one cannot be told",
        )
    return Finding(p, "ok", f"{len(arrays)} arrays, {chunks} chunks")


def verify(path: str | os.PathLike) -> list[Finding]:
    """:func:`verify_store` of every store :func:`find_stores` finds under ``path``."""
    return [verify_store(s) for s in find_stores(path)]
