"""One way to write and read every lcseg Zarr store.

Per-patch arrays of a shard are stored flat ("ragged"): an array of shape
``(patches_in_shard, dim)`` plus ``offsets`` ``(images + 1,)`` int64 and ``grid``
``(images, 2)`` int32 (rows, cols), so image ``i`` owns rows
``offsets[i]:offsets[i + 1]`` laid out row-major on ``grid[i]``.

Pixel-level stores (refine, objects, segment) are ragged over pixels: a flat array plus
``pixel_offsets`` ``(images + 1,)`` and ``sizes`` ``(images, 2)`` (height, width), image
``i`` owning ``flat[pixel_offsets[i]:pixel_offsets[i + 1]]`` reshaped to ``sizes[i]``.

Stores are written to a temporary sibling and renamed into place when complete, so a
killed job never leaves a half store that looks finished.

Every array ends its codecs with a CRC32C of each chunk and has every chunk on disk, and
:func:`open_store` hands out arrays that raise :class:`StoreDamagedError` on a damaged
chunk (:mod:`lcseg_steps.stores.checks`, docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from lcseg_steps import __version__
from lcseg_steps.stores.atomic_write import tmp_sibling
from lcseg_steps.stores.checks import (
    StoreDamagedError,
    checked_group,
    chunk_keys,
    missing_chunks,
)

if TYPE_CHECKING:
    from lcseg_steps.data.image_table import ImageRecord

DEFAULT_CHUNK_ROWS = 16384
# Arrays written with raw=True (the feature stores' q/k/v and CLS attention) are not
# compressed: zstd saved ~9 % on float16 q/k/v, whose low mantissa bits are noise, at twice
# the write time and three times the read time of every later pass over them. Everything
# else keeps Zarr's default (zstd, level 0): masks, labels and scores compress well.
# Every array then ends with a CRC32C of each chunk (4 bytes), and every chunk is written,
# fill-valued ones too (Zarr skips those by default), so that a missing chunk file is
# damage, not zeros: lcseg_steps.stores.checks reads them back.
_RAW_CODECS = (Crc32cCodec(),)
_COMPRESSED_CODECS = (ZstdCodec(level=0, checksum=False), Crc32cCodec())
_WRITE_EVERY_CHUNK = {"write_empty_chunks": True}

__all__ = ["StoreDamagedError"]  # raised by reads of open_store's arrays

# Snakemake drops a .snakemake_timestamp file into directory() outputs; zarr warns about
# it on every listing of a store.
warnings.filterwarnings("ignore", message=".*snakemake_timestamp")


def _jsonable(value: Any) -> Any:
    """Zarr attrs must be JSON: turn numpy scalars, paths and tuples into plain types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def balanced_chunk_rows(n_rows: int, chunk_rows: int) -> int:
    """Rows per chunk for ``n_rows``: as few chunks as ``chunk_rows`` allows, of equal length.

    An uncompressed array stores its last chunk whole, so ``n_rows = 14.06 * chunk_rows``
    would waste most of a chunk; 15 equal chunks waste under 15 rows.
    """
    n_chunks = max(1, -(-int(n_rows) // int(chunk_rows)))
    return max(1, -(-int(n_rows) // n_chunks))


def _row_chunks(shape: tuple[int, ...], chunk_rows: int) -> tuple[int, ...]:
    return (max(1, min(chunk_rows, max(shape[0], 1))),) + tuple(shape[1:])


class StoreWriter:
    """Builds a store at :func:`tmp_sibling` and renames it to ``path`` on ``close``.

    Use as a context manager: on an exception the temporary store is removed and any
    previous complete store at ``path`` is left untouched.
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_sibling(self.path)
        self.group = zarr.open_group(str(self.tmp), mode="w")
        self.update_attrs({"lcseg_version": __version__, **dict(attrs or {})})

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        # one metadata write for all of them (``attrs.update`` writes once per key)
        self.group.update_attributes(_jsonable(dict(attrs)))

    def write(
        self, name: str, data: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS, raw: bool = False
    ) -> None:
        """Write a whole array at once, chunked along its first axis (``raw``: see above)."""
        data = np.asarray(data)
        dtype = data.dtype
        if dtype.kind in "UO":
            # variable-length UTF-8 has a Zarr v3 spec; fixed-width numpy unicode does not
            dtype, data = str, data.astype(object)
        arr = self.create(name, data.shape, dtype, chunk_rows, raw)
        if data.size:
            arr[...] = data

    def create(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        raw: bool = False,
    ) -> zarr.Array:
        """A preallocated array (zeros), chunked along its first axis, to fill by slices.

        Raw arrays get chunks of equal length (:func:`balanced_chunk_rows`): their last
        chunk is stored whole, padding and all.
        """
        if raw and len(shape):
            chunk_rows = balanced_chunk_rows(shape[0], chunk_rows)
        return self.group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=_row_chunks(shape, chunk_rows) if len(shape) else (),
            compressors=_RAW_CODECS if raw else _COMPRESSED_CODECS,
            config=_WRITE_EVERY_CHUNK,
        )

    def create_growing(
        self, name: str, tail_shape: tuple[int, ...], dtype, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> zarr.Array:
        """An array that starts with 0 rows and grows by ``append``."""
        return self.group.create_array(
            name,
            shape=(0, *tail_shape),
            dtype=dtype,
            chunks=(chunk_rows, *tail_shape),
            compressors=_COMPRESSED_CODECS,
            config=_WRITE_EVERY_CHUNK,
        )

    def append(self, name: str, data: np.ndarray) -> None:
        self.group[name].append(np.asarray(data))

    def fill_chunks(self) -> None:
        """Write the chunks no write reached (an array created and left at its fill
        value, an appended chunk of fill values) so that every chunk key is on disk."""
        for _name, array in self.group.arrays():
            missing = set(missing_chunks(self.tmp, array))
            if not missing:
                continue
            # the write_empty_chunks of create() is a setting of that Array object only
            array = array.with_config(_WRITE_EVERY_CHUNK)
            for coords, key in chunk_keys(array):
                if key in missing:
                    array.blocks[coords] = array.blocks[coords]

    def close(self) -> Path:
        self.fill_chunks()
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_store(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Path:
    """Write ``arrays`` and ``attrs`` as one complete store (atomically renamed)."""
    with StoreWriter(path, attrs) as w:
        for name, data in arrays.items():
            w.write(name, data, chunk_rows)
    return Path(path)


def open_store(path: str | os.PathLike) -> zarr.Group:
    """Open a finished store read-only, with a clear error when it is missing or not Zarr.

    Its arrays check themselves (:class:`lcseg_steps.stores.checks.CheckedArray`): taking
    one from the group with a chunk file missing, or reading a chunk whose checksum or
    length is wrong, raises :class:`StoreDamagedError` naming the store, the array, the
    chunk and the ``snakemake --forcerun`` that rewrites it.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such store")
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise ValueError(f"{p}: not a readable Zarr store ({exc})") from exc
    return checked_group(group, p)


def offsets_from_sizes(sizes) -> np.ndarray:
    """``(n,)`` patch counts -> ``(n + 1,)`` int64 offsets starting at 0."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def image_rows(store: zarr.Group, name: str, i: int) -> np.ndarray:
    """Rows of ragged array ``name`` owned by image ``i``, shape ``(patches_i, ...)``."""
    off = store["offsets"]
    lo, hi = int(off[i]), int(off[i + 1])
    return np.asarray(store[name][lo:hi])


def image_grid_array(store: zarr.Group, name: str, i: int) -> np.ndarray:
    """Image ``i``'s rows of ragged array ``name`` reshaped to its grid ``(rows, cols, ...)``."""
    rows = image_rows(store, name, i)
    gh, gw = (int(x) for x in store["grid"][i])
    return rows.reshape(gh, gw, *rows.shape[1:])


class RowBlock:
    """Rows ``lo:hi`` of a Zarr array, read only when used (``np.asarray(block)``, or
    ``block[sel]`` which reads the block then selects): a consumer that already holds
    those rows skips the read and the decompression, and a worker thread can do them."""

    def __init__(self, array: zarr.Array, lo: int, hi: int):
        self.array, self.lo, self.hi = array, lo, hi
        self.shape = (hi - lo, *array.shape[1:])
        self.dtype = np.dtype(array.dtype)

    def __array__(self, dtype=None, copy=None):
        rows = np.asarray(self.array[self.lo : self.hi])
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __getitem__(self, sel):
        return np.asarray(self)[sel]


def iter_row_blocks(
    array: zarr.Array, block_rows: int | None = None, *, lazy: bool = False
) -> Iterator[np.ndarray] | Iterator[RowBlock]:
    """Stream a 2-D array in blocks aligned to its chunks (memory bounded by one block):
    NumPy arrays, or :class:`RowBlock` s read when used if ``lazy``."""
    step = block_rows or array.chunks[0]
    for lo in range(0, array.shape[0], step):
        hi = min(lo + step, array.shape[0])
        yield RowBlock(array, lo, hi) if lazy else np.asarray(array[lo:hi])


def read_ids(store: zarr.Group, name: str = "image_ids") -> np.ndarray:
    """A string array of a store as a ``(n,)`` object array of Python ``str``."""
    return np.array([str(x) for x in np.asarray(store[name][:])], dtype=object)


def image_index(store: zarr.Group, image_id: str) -> int:
    ids = list(read_ids(store))
    with contextlib.suppress(ValueError):
        return ids.index(str(image_id))
    raise KeyError(f"image {image_id!r} is not in this store (it holds {len(ids)} images)")


def records_in_order(store: zarr.Group, records: Sequence[ImageRecord], path) -> list[ImageRecord]:
    """The index records of the images of ``store`` (at ``path``), in the store's order."""
    by_id = {r.image_id: r for r in records}
    ids = read_ids(store)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise KeyError(f"{path}: images {missing[:3]} are not in the index")
    return [by_id[i] for i in ids]


PIXEL_CHUNK = 1 << 22  # pixels per chunk of a flat pixel array


def pack_masks(
    masks: Sequence[np.ndarray], dtype=np.uint8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged store of pixel masks (or any per-pixel maps, e.g. uint16 region ids).

    ``n`` maps ``(H_i, W_i)`` -> flat ``(sum H_i * W_i,)`` of ``dtype`` (each map row-major),
    offsets ``(n + 1,)`` int64, sizes ``(n, 2)`` int32 ``(H_i, W_i)``; mask ``i`` is
    ``flat[offsets[i]:offsets[i + 1]].reshape(sizes[i])``.
    """
    for i, m in enumerate(masks):
        if np.ndim(m) != 2:
            raise ValueError(f"mask {i} must be 2-D, got shape {np.shape(m)}")
    sizes = np.array([m.shape for m in masks], dtype=np.int32).reshape(len(masks), 2)
    offsets = offsets_from_sizes(sizes[:, 0].astype(np.int64) * sizes[:, 1])
    if masks:
        flat = np.concatenate([np.asarray(m, dtype=dtype).ravel() for m in masks])
    else:
        flat = np.zeros(0, dtype=dtype)
    return flat, offsets, sizes


def unpack_mask(flat, offsets, sizes, i: int) -> np.ndarray:
    """Mask ``i`` ``(H_i, W_i)`` uint8 from ``pack_masks`` output (numpy or Zarr arrays)."""
    lo, hi = int(offsets[i]), int(offsets[i + 1])
    h, w = (int(v) for v in np.asarray(sizes[i]))
    if hi - lo != h * w:
        raise ValueError(f"mask {i}: {hi - lo} stored pixels but size is {h}x{w}")
    return np.asarray(flat[lo:hi], dtype=np.uint8).reshape(h, w)


def pixel_layout(masks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Flat pixel array (in the maps' own dtype), ``pixel_offsets`` and ``sizes``."""
    dtype = np.result_type(*masks) if masks else np.uint8
    flat, offsets, sizes = pack_masks(masks, dtype=dtype)
    return {"flat": flat, "pixel_offsets": offsets, "sizes": sizes}


def write_pixel_store(
    out: str | os.PathLike,
    name: str,
    maps: Sequence[np.ndarray],
    image_ids: np.ndarray,
    attrs: dict,
    **arrays: np.ndarray,
) -> Path:
    """One store of per-image ``(H, W)`` maps as the flat array ``name`` (plus ``arrays``)."""
    lay = pixel_layout(maps)
    return write_store(
        out,
        {
            **arrays,
            name: lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": image_ids,
        },
        attrs,
        chunk_rows=PIXEL_CHUNK,
    )


def pixel_map(store: zarr.Group, name: str, i: int) -> np.ndarray:
    """Image ``i``'s ``(H, W)`` map of the flat pixel array ``name``."""
    lo, hi = (int(x) for x in store["pixel_offsets"][i : i + 2])
    h, w = (int(x) for x in store["sizes"][i])
    return np.asarray(store[name][lo:hi]).reshape(h, w)


# ---------------------------------------------------------------- feature stores


# the facts of a features store that the stores downstream of it carry on (as
# attrs["extraction"]: objects, then segment) up to the scores
EXTRACTION_FACTS = ("backbone", "weights", "weights_warning", "layer")


def extraction_facts(attrs: Mapping) -> dict:
    """The backbone facts of a features store's attrs (``EXTRACTION_FACTS``, None if absent)."""
    return {key: attrs.get(key) for key in EXTRACTION_FACTS}


# the extraction facts of the features stores that a model records (and checks)
MODEL_FACTS = ("weights", "weights_warning", "layer", "patch_size", "long_side", "precision")


def extraction_attrs(stores: Sequence, backbone: Mapping) -> dict:
    """What a model records of the features it was fitted on, from its features stores
    (what extraction really used: the resolved weights and precision), not from the
    config: ``n_images``, ``backbone`` (name, weights, and the config's ``seed`` and
    ``overrides``), the :data:`MODEL_FACTS` facts and ``qkv_dim``. Shards extracted
    differently are an error."""
    facts = [
        {k: dict(s.attrs).get(k) for k in (*MODEL_FACTS, "backbone", "qkv_dim")} for s in stores
    ]
    if any(f != facts[0] for f in facts[1:]):
        raise ValueError(
            f"features stores were extracted differently ({facts[0]} vs another shard); "
            "rerun extract"
        )
    fact = facts[0]
    return {
        "n_images": sum(int(s["image_ids"].shape[0]) for s in stores),
        "backbone": {
            "name": fact["backbone"],
            "weights": fact["weights"],
            "seed": backbone["seed"],
            "overrides": dict(backbone["overrides"] or {}),
        },
        **{k: fact[k] for k in MODEL_FACTS if k != "weights"},
        "qkv_dim": fact["qkv_dim"],
    }


def feature_array(store: zarr.Group, path: str | os.PathLike, feature: str) -> zarr.Array:
    """The ``feature`` rows of a feature store, or an error naming the config keys."""
    if feature not in store:
        raise ValueError(
            f"{path}: has no '{feature}' features (clustering.feature={feature!r}); add it to "
            f"extract.store_features or choose one of "
            f"{[f for f in ('q', 'k', 'v') if f in store]}"
        )
    return store[feature]


def check_finite(store: zarr.Group, path: str | os.PathLike, feature: str, X=None) -> None:
    """Raise ``ValueError`` naming the store, the feature and the first image whose
    ``feature`` rows hold NaN or inf (a corrupt store: extract writes finite rows only).

    ``X``: the rows already in memory; otherwise the array is read block by block.
    """
    blocks = [np.asarray(X)] if X is not None else iter_row_blocks(store[feature])
    start = 0
    for block in blocks:
        bad = ~np.isfinite(block).all(axis=tuple(range(1, block.ndim)))
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            n_bad = int(bad.sum())
            if X is None:  # count the rest too
                for rest in blocks:
                    n_bad += int((~np.isfinite(rest).all(axis=tuple(range(1, rest.ndim)))).sum())
            offsets = np.asarray(store["offsets"][:])
            image = int(np.searchsorted(offsets, row, side="right")) - 1
            raise ValueError(
                f"{path}: '{feature}' features hold NaN or inf in {n_bad} patch row(s), first "
                f"in row {row} (image {read_ids(store)[image]!r}); the store is corrupt, "
                "delete it and rerun extract"
            )
        start += len(block)


def patch_layout(store: zarr.Group) -> dict[str, np.ndarray]:
    """A feature store's ragged layout: ``offsets``, ``grid`` and ``image_ids``."""
    return {
        "offsets": np.asarray(store["offsets"][:]),
        "grid": np.asarray(store["grid"][:]),
        "image_ids": read_ids(store),
    }


def feature_shards(paths: Sequence[str | os.PathLike], feature: str) -> list:
    """``(path, store, feature array)`` of each feature store in ``paths``."""
    stores = [(p, open_store(p)) for p in paths]
    return [(p, s, feature_array(s, p, feature)) for p, s in stores]


def read_fg(path: str | os.PathLike) -> np.ndarray:
    """The per-patch foreground mask ``(patches,)`` uint8 of an ``image_level`` store."""
    return np.asarray(open_store(path)["fg"][:])
