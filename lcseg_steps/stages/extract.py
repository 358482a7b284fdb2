"""Stage ``extract``: per-patch q/k/v attention features, CLS token and CLS attention of
a frozen ViT, ``images.tsv`` (one shard's images) -> ``features/{shard}.zarr``.

``qkv_features`` runs one forward pass and reads q, k, v from a hook on the chosen
block's ``attn.qkv`` projection. ``extract_shard`` does that for every image of a shard
and writes a ragged feature store (layout in ``lcseg_steps.stores.layout``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lcseg_steps import __version__
from lcseg_steps.data.images import ImageError, patch_grid_size, read_record
from lcseg_steps.perimage.qkv import (
    BF16_MIN_COS,
    FEATURES,
    PRECISIONS,
    as_stored,
    autocast,
    backbone_input,
    bf16_fidelity,
    native_bf16,
    qkv_dim,
    qkv_features,
)
from lcseg_steps.stores.layout import StoreWriter, offsets_from_sizes

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

LOG_EVERY_BATCHES = 10
# Images grouped for batching at once; their rows are held in memory until written in
# whole Zarr chunks (a partial-chunk write re-reads and re-compresses the whole chunk).
WINDOW_BATCHES = 4


# ---------------------------------------------------------------- shard extraction


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes, checks, resizes and normalises record ``i`` -> ``(i, (3, h, w) float32)``."""

    def __init__(self, records: Sequence[Any], patch: int, long_side: int | None):
        self.records, self.patch, self.long_side = records, patch, long_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        rec = self.records[i]
        img = read_record(rec)
        if img.shape[:2] != (int(rec.height), int(rec.width)):
            raise ImageError(
                f"{rec.path}: decoded image is {img.shape[0]}x{img.shape[1]} (HxW) but the "
                f"index says {rec.height}x{rec.width}; the file changed after indexing, "
                "rebuild the index"
            )
        return i, backbone_input(img, self.patch, self.long_side)


def _collate(items: list[tuple[int, np.ndarray]]) -> tuple[list[int], torch.Tensor]:
    return [i for i, _ in items], torch.from_numpy(np.stack([x for _, x in items]))


def plan_windows(grids: Sequence[tuple[int, int]], batch_size: int) -> list[list[list[int]]]:
    """Consecutive windows of images, each split into batches of equal grid.

    Returns ``windows[w][b]`` = image indices of batch ``b`` of window ``w``. Windows
    cover ``batch_size * WINDOW_BATCHES`` consecutive images, so the rows a window
    writes are contiguous and can be flushed in whole chunks, while same-grid images
    inside it still batch together (in order of first appearance).
    """
    span = max(1, batch_size * WINDOW_BATCHES)
    windows = []
    for lo in range(0, len(grids), span):
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(lo, min(lo + span, len(grids))):
            groups.setdefault(tuple(grids[i]), []).append(i)
        windows.append(
            [g[j : j + batch_size] for g in groups.values() for j in range(0, len(g), batch_size)]
        )
    return windows


class _ChunkWriter:
    """Rows of one preallocated Zarr array, written only in whole chunks (plus the tail).

    ``extend(end)`` makes rows up to ``end`` writable in memory; ``put`` fills them;
    ``flush`` hands every completed chunk to ``io`` (a one-thread executor, so compression
    and writing overlap the next forward passes) and keeps the partial one. The rows handed
    over are never touched again; ``wait`` re-raises the first failed write.
    """

    def __init__(self, array, io: ThreadPoolExecutor):
        self.array, self.chunk, self.io = array, int(array.chunks[0]), io
        self.start = 0  # first row not yet on disk, a chunk multiple until the final flush
        self.buf = np.zeros((0, *array.shape[1:]), dtype=array.dtype)
        self.pending: list = []

    def extend(self, end: int) -> None:
        grown = np.zeros((end - self.start, *self.buf.shape[1:]), dtype=self.buf.dtype)
        grown[: len(self.buf)] = self.buf
        self.buf = grown

    def put(self, lo: int, rows: np.ndarray) -> None:
        self.buf[lo - self.start : lo - self.start + len(rows)] = rows

    def flush(self, final: bool = False) -> None:
        self.wait()  # the previous window's writes: at most two windows held in memory
        n = len(self.buf) if final else len(self.buf) // self.chunk * self.chunk
        if n:
            rows = slice(self.start, self.start + n)
            self.pending.append(self.io.submit(self.array.__setitem__, rows, self.buf[:n]))
        self.buf, self.start = self.buf[n:].copy(), self.start + n

    def wait(self) -> None:
        for done in self.pending:
            done.result()
        self.pending = []


def extract_shard(
    records: Iterable[Any],
    model: torch.nn.Module,
    info: Any,
    out_path: str | Path,
    *,
    layer: int = -1,
    long_side: int | None = 480,
    store_features: Sequence[str] = FEATURES,
    batch_size: int = 8,
    num_workers: int,
    device: str = "cpu",
    chunk_rows: int = 16384,
    precision: str = "auto",
    attrs: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Extract features of ``records`` (``ImageRecord``s) into the store ``out_path``.

    ``precision``: ``float32``; ``bfloat16`` (autocast); or ``auto``: bf16 autocast on a
    device with native bf16 (:func:`native_bf16`) when the first image's q/k/v rows stay
    within ``BF16_MIN_COS`` of float32 (:func:`bf16_fidelity`), float32 otherwise. The
    choice and the measured similarity go into the store's attrs.

    ``info`` is the ``BackboneInfo`` of ``model`` (which is moved to ``device``). Store contents,
    in ``records`` order, P = total patches of the shard, n = images, D = q/k/v width:

    - ``q``/``k``/``v`` (those in ``store_features``): ``(P, D)`` float16, row-chunked;
    - ``cls``: ``(n, embed_dim)`` float16; ``cls_attn``: ``(P,)`` float32;
    - ``offsets`` ``(n + 1,)`` int64; ``grid`` ``(n, 2)`` int32 patch rows/cols;
      ``input_size`` ``(n, 2)`` int32 resized h/w in pixels; ``image_ids`` ``(n,)`` str.

    Grids follow from the indexed sizes, so the arrays are preallocated; a decoded image
    whose size differs from its record is an ``ImageError`` naming the file. Memory holds
    about ``batch_size * WINDOW_BATCHES`` images' rows plus one chunk.
    """
    from lcseg_steps.perimage.backbone import resolve_device

    records = list(records)
    feats = tuple(store_features)
    bad = [f for f in feats if f not in FEATURES]
    if bad or len(set(feats)) != len(feats):
        raise ValueError(f"store_features {list(feats)}: each must be one of {list(FEATURES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
    dev = torch.device(resolve_device(device))
    check_bf16 = precision == "auto" and native_bf16(dev)
    bf16 = precision == "bfloat16"
    model.to(dev)
    patch = int(info.patch_size)
    depth = len(model.blocks)
    layer_index = layer % depth if -depth <= layer < depth else layer
    dim = qkv_dim(model, layer)

    sizes_px = []
    for rec in records:
        try:
            sizes_px.append(patch_grid_size(int(rec.height), int(rec.width), patch, long_side))
        except ImageError as exc:
            raise ImageError(f"{rec.path}: {exc}") from exc
    input_size = np.array(sizes_px, dtype=np.int32).reshape(-1, 2)
    grid = (input_size // patch).astype(np.int32)
    offsets = offsets_from_sizes(grid[:, 0].astype(np.int64) * grid[:, 1])
    total = int(offsets[-1])
    n = len(records)

    store_attrs = {
        "stage": "extract",
        "backbone": info.name,
        "timm_name": info.timm_name,
        "weights": info.weights,
        "weights_warning": info.weights_warning,
        "layer": layer,
        "layer_index": layer_index,
        "patch_size": patch,
        "embed_dim": int(info.embed_dim),
        "num_heads": int(info.num_heads),
        "num_prefix_tokens": int(info.num_prefix_tokens),
        "qkv_dim": dim,
        "long_side": long_side,
        "precision": "bfloat16" if bf16 else "float32",
        "bf16_min_cos": None,
        "store_features": list(feats),
        "n_images": n,
        "n_patches": total,
        "lcseg_version": __version__,
        **dict(attrs or {}),
    }
    windows = plan_windows([tuple(g) for g in grid], batch_size)
    batches = [b for w in windows for b in w]
    last_of_window = np.cumsum([len(w) for w in windows]) - 1
    window_end_row = [int(offsets[max(max(b) for b in w) + 1]) for w in windows]

    loader = torch.utils.data.DataLoader(
        _ImageDataset(records, patch, long_side),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        # one decoded batch per worker ahead of the forward pass, not torch's default two
        prefetch_factor=1 if num_workers else None,
    )
    cls = np.zeros((n, int(info.embed_dim)), dtype=np.float16)

    with StoreWriter(out_path, store_attrs) as w, ThreadPoolExecutor(1) as io:
        # uncompressed, in equal chunks (raw): see lcseg_steps.stores.layout
        writers = {
            name: _ChunkWriter(w.create(name, (total, dim), "float16", chunk_rows, raw=True), io)
            for name in feats
        }
        writers["cls_attn"] = _ChunkWriter(
            w.create("cls_attn", (total,), "float32", chunk_rows, raw=True), io
        )
        t0, done, win = time.perf_counter(), 0, 0
        if windows:
            for cw in writers.values():
                cw.extend(window_end_row[0])
        for bi, (idx, x) in enumerate(loader):
            x = x.to(dev, non_blocking=True)
            if check_bf16:
                # on the first image only: its hundreds of patch rows settle the numerics
                # at a fraction of a batch's cost
                cos = bf16_fidelity(model, x[:1], layer)
                check_bf16, bf16 = False, cos >= BF16_MIN_COS
                w.update_attrs(
                    {"precision": "bfloat16" if bf16 else "float32", "bf16_min_cos": cos}
                )
                log(
                    f"extract: bf16 q/k/v rows within cosine {cos:.6f} of float32 on the first "
                    f"image ({'>=' if bf16 else '<'} {BF16_MIN_COS}): "
                    f"{'bfloat16 autocast' if bf16 else 'float32'}"
                )
            with autocast(dev, bf16):
                out = qkv_features(model, x, layer)
            out = as_stored(out, feats)
            for j, i in enumerate(idx):
                lo, hi = int(offsets[i]), int(offsets[i + 1])
                if out["cls_attn"].shape[1] != hi - lo:
                    raise RuntimeError(
                        f"{records[i].path}: backbone returned {out['cls_attn'].shape[1]} "
                        f"patches, expected {hi - lo} for grid {tuple(grid[i])}"
                    )
                for name in feats:
                    writers[name].put(lo, out[name][j])
                writers["cls_attn"].put(lo, out["cls_attn"][j])
                cls[i] = out["cls"][j]
            done += len(idx)
            if bi == last_of_window[win]:
                win += 1
                for cw in writers.values():
                    cw.flush()
                    if win < len(windows):
                        cw.extend(window_end_row[win])
            if (bi + 1) % LOG_EVERY_BATCHES == 0 or bi + 1 == len(batches):
                rate = done / max(time.perf_counter() - t0, 1e-9)
                log(f"extract: {done}/{n} images, {rate:.1f} img/s")
        for cw in writers.values():
            cw.flush(final=True)
        for cw in writers.values():
            cw.wait()
        w.write("cls", cls)
        w.write("offsets", offsets)
        w.write("grid", grid)
        w.write("input_size", input_size)
        w.write("image_ids", np.array([str(r.image_id) for r in records], dtype=object))
    return Path(out_path)


def run_extract(
    index: str | Path,
    shard: str,
    out: str | Path,
    *,
    backbone: Mapping[str, Any],
    extract: Mapping[str, Any],
    gpus: int = 0,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """One shard of ``images.tsv`` -> ``features/{shard}.zarr``, with the ``backbone`` and
    ``extract`` config blocks as they are (``gpus``: the job's GPUs, claimed first)."""
    from lcseg_steps.data.image_table import read_index
    from lcseg_steps.perimage.backbone import load_backbone, resolve_device
    from lcseg_steps.runner.gpus import claim_device

    records = [r for r in read_index(index) if r.shard == shard]
    if not records:
        raise ValueError(f"{index}: shard {shard} holds no images")
    if gpus:  # before CUDA starts: this job's own GPU(s)
        claim_device(int(gpus))
    device = resolve_device(extract["device"])
    model, info = load_backbone(
        backbone["name"],
        backbone["weights"],
        seed=backbone["seed"],
        overrides=backbone["overrides"],
        device=device,
    )
    log(f"extract: {len(records)} images, backbone {info.timm_name} ({info.weights}) on {device}")
    if info.weights_warning:
        log(f"WARNING: {info.weights_warning}")
    path = extract_shard(
        records,
        model,
        info,
        out,
        **{**extract, "store_features": tuple(extract["store_features"]), "device": device},
        attrs=attrs,
        log=log,
    )
    log("extract: done")
    return path


def run(job: Job) -> Path:
    """The rule ``extract`` (settings: the ``backbone`` and ``extract`` config blocks)."""
    return run_extract(
        job.input.index,
        job.wildcards.shard,
        job.output[0],
        **job.settings,
        gpus=job.resources.get("gpu", 0),
        attrs=job.attrs,
        log=job.log,
    )
