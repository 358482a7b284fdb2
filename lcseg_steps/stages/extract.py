"""Stage ``extract``: per-patch q/k/v attention features, CLS token and CLS attention of
a frozen ViT, ``images.tsv`` (one shard's images) -> ``features/{shard}.zarr``.

``qkv_features`` runs one forward pass and reads q, k, v from a hook on the chosen
block's ``attn.qkv`` projection. ``extract_shard`` does that for every image of a shard
and writes a ragged feature store (layout in ``lcseg_steps.stores.layout``).

The data path of ``extract_shard``, batch by batch:

1. decoding: ``num_workers`` worker processes (a DataLoader that lives for the whole
   shard), or this process itself when it is 0, decode, check and resize each image
   (OpenCV, on uint8) and hand over ``(B, h, w, 3)`` uint8, a quarter of float32's bytes;
2. where the forward runs (the device): the batch is normalised by torch
   (:func:`normaliser`, byte for byte ``images.normalize``) and goes through the model;
3. the features the store asks for (``store_features``, CLS, CLS attention) are packed
   into one float16 buffer (:class:`_Packet`); on CUDA one asynchronous copy on a stream
   of its own brings it to a reused pinned host buffer while the next batch's forward
   runs; on the CPU the buffer is the host buffer;
4. a writer thread takes the host buffers from a bounded queue (``N_BUFFERS``), waits for
   each copy, scatters the rows into whole-chunk buffers and hands completed chunks to a
   write thread, then releases the buffer for reuse.

The stores hold the same bytes as when every image was decoded, resized and normalised
on its own and its features cast by ``as_stored`` (tested).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lcseg_steps import __version__
from lcseg_steps.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    normalize,
    patch_grid_size,
    read_record,
    resize_for_backbone,
)
from lcseg_steps.perimage.qkv import (
    BF16_MIN_COS,
    FEATURES,
    PRECISIONS,
    autocast,
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
    """Decodes, checks and resizes record ``i`` -> ``(i, (h, w, 3) uint8)``: the backbone
    input before normalisation, which runs where the forward does (:func:`normaliser`).

    The resize stays here, on uint8 with OpenCV (``images.resize_for_backbone``): a resize
    in torch would not give OpenCV's bytes, and the stores must not change."""

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
        return i, resize_for_backbone(img, self.patch, self.long_side)


def _collate(items: list[tuple[int, np.ndarray]]) -> tuple[list[int], torch.Tensor]:
    return [i for i, _ in items], torch.from_numpy(np.stack([x for _, x in items]))


def _decoded_batches(
    dataset, batches, num_workers: int, pin: bool
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(image indices, (B, h, w, 3) uint8)`` of each batch, in order: decoded by
    ``num_workers`` worker processes that live for the whole shard (each one batch
    ahead), or by this process, batch by batch, when ``num_workers`` is 0."""
    if not num_workers:
        # inline: a decoding thread beside the forward's torch threads would take a core
        # from them mid-operation (measured: the stand-in's tiny ops ran several times slower)
        for b in batches:
            idx, x = _collate([dataset[i] for i in b])
            yield idx, x.pin_memory() if pin else x
        return
    yield from torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin,
        # one decoded batch per worker ahead of the forward pass, not torch's default two
        prefetch_factor=1,
    )


def _normalise_arithmetic(x: torch.Tensor) -> torch.Tensor:
    """``(B, h, w, 3)`` uint8 -> ``(B, 3, h, w)`` float32, contiguous: ``images.normalize``'s
    operations in its order, on ``x``'s device."""
    mean = torch.from_numpy(IMAGENET_MEAN).to(x.device).view(1, 3, 1, 1)
    std = torch.from_numpy(IMAGENET_STD).to(x.device).view(1, 3, 1, 1)
    y = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return y.div_(255.0).sub_(mean).div_(std)


def _normalise_table(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The same by lookup in ``table``, ``images.normalize`` of every value of each channel
    (``(3 * 256,)`` float32 on ``x``'s device)."""
    offsets = (torch.arange(3, device=x.device) * 256).view(1, 3, 1, 1)
    return table[
        x.permute(0, 3, 1, 2).to(torch.long, memory_format=torch.contiguous_format) + offsets
    ]


_NORMALISERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def normaliser(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images.normalize`` for a batch ``(B, h, w, 3)`` uint8 already on ``device``,
    byte for byte: torch's arithmetic where it gives ``normalize``'s bytes for all 256
    values of each channel on this device (checked once per device: a uint8 input has no
    other values), else a lookup table of ``normalize``'s own values."""
    key = str(device)
    if key not in _NORMALISERS:
        values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]
        want = normalize(values)  # (3, 1, 256)
        got = _normalise_arithmetic(torch.from_numpy(values[None]).to(device))
        if got[0].cpu().numpy().tobytes() == want.tobytes():
            _NORMALISERS[key] = _normalise_arithmetic
        else:
            table = torch.from_numpy(np.ascontiguousarray(want.reshape(-1))).to(device)
            _NORMALISERS[key] = partial(_normalise_table, table=table)
    return _NORMALISERS[key]


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


class _Packet:
    """Where a batch's stored features lie in one float16 buffer, so that one copy brings
    them from the device: per image a row of ``cls_attn`` (float32, as 2N halves), ``cls``
    (float32, as 2E halves), then each stored q/k/v ``(N, D)`` in turn, padded to an even
    length so that every row's float32 parts stay aligned."""

    def __init__(self, n: int, embed: int, n_feats: int, dim: int):
        self.n, self.embed, self.n_feats, self.dim = n, embed, n_feats, dim
        self.feat_at = 2 * n + 2 * embed
        self.row = self.feat_at + n_feats * n * dim
        self.row += self.row % 2

    def pack(self, out: Mapping[str, torch.Tensor], feats: Sequence[str], dest: torch.Tensor):
        """``qkv_features``' tensors into ``dest`` ``(B, row)`` float16, on their device: the
        q/k/v cast to float16 by torch as ``as_stored`` does, the rest bit for bit."""
        b, n = dest.shape[0], self.n
        dest[:, : 2 * n].view(torch.float32).copy_(out["cls_attn"])
        dest[:, 2 * n : self.feat_at].view(torch.float32).copy_(out["cls"])
        at = dest[:, self.feat_at : self.feat_at + self.n_feats * n * self.dim]
        at = at.view(b, self.n_feats, n, self.dim)
        for fi, name in enumerate(feats):
            at[:, fi].copy_(out[name])

    def unpack(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``buf`` ``(B, row)`` float16 on the host -> ``cls_attn`` ``(B, N)`` float32,
        ``cls`` ``(B, E)`` float32, features ``(B, n_feats, N, D)`` float16 (views)."""
        b, n = buf.shape[0], self.n
        feats = buf[:, self.feat_at : self.feat_at + self.n_feats * n * self.dim]
        return (
            buf[:, : 2 * n].view(np.float32),
            buf[:, 2 * n : self.feat_at].view(np.float32),
            feats.reshape(b, self.n_feats, n, self.dim),
        )


class _Writer(threading.Thread):
    """Takes each batch's host buffer from a bounded queue, in order, waits for its copy,
    scatters its rows into the ``_ChunkWriter``s (which hand whole chunks to the write
    thread) and releases the buffer. A failure is kept in ``error`` (the caller raises
    it); the thread then only releases buffers, so the forward loop never blocks on it."""

    def __init__(self, *, writers, cls, offsets, feats, packets, host, events, windows):
        super().__init__(name="lcseg-extract-writer", daemon=True)
        self.work: queue.Queue = queue.Queue(maxsize=len(host))
        self.free: queue.Queue = queue.Queue()
        for slot in range(len(host)):
            self.free.put(slot)
        self.writers, self.cls, self.offsets, self.feats = writers, cls, offsets, feats
        self.packets, self.host, self.events = packets, host, events
        self.last_of_window, self.window_end_row = windows
        self.error: BaseException | None = None

    def run(self) -> None:
        win = 0
        for bi, slot, idx in iter(self.work.get, None):
            try:
                if self.error is None:
                    if self.events[slot] is not None:
                        self.events[slot].synchronize()
                    win = self._scatter(bi, slot, idx, win)
            except BaseException as exc:  # raised by the forward loop
                self.error = exc
            finally:
                self.free.put(slot)

    def _scatter(self, bi: int, slot: int, idx: list[int], win: int) -> int:
        packet = self.packets[bi]
        buf = self.host[slot][: len(idx) * packet.row].reshape(len(idx), packet.row)
        cls_attn, cls, feats = packet.unpack(buf)
        for j, i in enumerate(idx):
            lo = int(self.offsets[i])
            for fi, name in enumerate(self.feats):
                self.writers[name].put(lo, feats[j, fi])
            self.writers["cls_attn"].put(lo, cls_attn[j])
            self.cls[i] = cls[j]
        if bi == self.last_of_window[win]:
            win += 1
            for cw in self.writers.values():
                cw.flush()
                if win < len(self.window_end_row):
                    cw.extend(self.window_end_row[win])
        return win

    def take_slot(self) -> int:
        """A free buffer (waiting for the writer to release one); the writer's error."""
        slot = self.free.get()
        self.raise_error()
        return slot

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


# Host buffers of batches in flight: one being filled, one being copied, one being written.
N_BUFFERS = 3


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
    about ``batch_size * WINDOW_BATCHES`` images' rows plus one chunk, ``N_BUFFERS``
    batches' packed features, and one decoded batch ahead per worker.
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
    last_of_window = [int(x) for x in np.cumsum([len(w) for w in windows]) - 1]
    window_end_row = [int(offsets[max(max(b) for b in w) + 1]) for w in windows]
    embed = int(info.embed_dim)
    packets = [_Packet(int(grid[b[0], 0] * grid[b[0], 1]), embed, len(feats), dim) for b in batches]
    buffer_halves = max((len(b) * p.row for b, p in zip(batches, packets, strict=True)), default=0)
    cuda = dev.type == "cuda"
    # the host buffers, reused: pinned on CUDA, so that the copy runs asynchronously
    host = [
        torch.empty(buffer_halves, dtype=torch.float16, pin_memory=cuda)
        for _ in range(N_BUFFERS if batches else 0)
    ]
    # where a batch is packed: on the device (then copied to host on a copy stream, while
    # the next batch's forward runs), or on the CPU the host buffer itself
    staging = (
        [torch.empty(buffer_halves, dtype=torch.float16, device=dev) for _ in host]
        if cuda
        else host
    )
    events = [torch.cuda.Event() if cuda else None for _ in host]
    copy_stream = torch.cuda.Stream(dev) if cuda else None
    normalise = normaliser(dev)
    cls = np.zeros((n, embed), dtype=np.float16)

    with StoreWriter(out_path, store_attrs) as w, ThreadPoolExecutor(1) as io:
        # uncompressed, in equal chunks (raw): see lcseg_steps.stores.layout
        writers = {
            name: _ChunkWriter(w.create(name, (total, dim), "float16", chunk_rows, raw=True), io)
            for name in feats
        }
        writers["cls_attn"] = _ChunkWriter(
            w.create("cls_attn", (total,), "float32", chunk_rows, raw=True), io
        )
        if windows:
            for cw in writers.values():
                cw.extend(window_end_row[0])
        writer = _Writer(
            writers=writers,
            cls=cls,
            offsets=offsets,
            feats=feats,
            packets=packets,
            host=[h.numpy() for h in host],
            events=events,
            windows=(last_of_window, window_end_row),
        )
        writer.start()
        t0, done = time.perf_counter(), 0
        source = _decoded_batches(
            _ImageDataset(records, patch, long_side), batches, num_workers, pin=cuda
        )
        try:
            for bi, (idx, x8) in enumerate(source):
                x = normalise(x8.to(dev, non_blocking=True))
                if check_bf16:
                    # on the first image only: its hundreds of patch rows settle the
                    # numerics at a fraction of a batch's cost
                    cos = bf16_fidelity(model, x[:1], layer)
                    check_bf16, bf16 = False, cos >= BF16_MIN_COS
                    w.update_attrs(
                        {"precision": "bfloat16" if bf16 else "float32", "bf16_min_cos": cos}
                    )
                    log(
                        f"extract: bf16 q/k/v rows within cosine {cos:.6f} of float32 on the "
                        f"first image ({'>=' if bf16 else '<'} {BF16_MIN_COS}): "
                        f"{'bfloat16 autocast' if bf16 else 'float32'}"
                    )
                with autocast(dev, bf16):
                    out = qkv_features(model, x, layer, feats)
                packet = packets[bi]
                if out["cls_attn"].shape[1] != packet.n:
                    i = idx[0]
                    raise RuntimeError(
                        f"{records[i].path}: backbone returned {out['cls_attn'].shape[1]} "
                        f"patches, expected {packet.n} for grid {tuple(grid[i])}"
                    )
                slot = writer.take_slot()
                size = len(idx) * packet.row
                packet.pack(out, feats, staging[slot][:size].view(len(idx), packet.row))
                if cuda:
                    # one copy per batch, on its own stream: it overlaps the next forward
                    copy_stream.wait_stream(torch.cuda.current_stream(dev))
                    with torch.cuda.stream(copy_stream):
                        host[slot][:size].copy_(staging[slot][:size], non_blocking=True)
                        events[slot].record(copy_stream)
                del out
                writer.work.put((bi, slot, idx))
                done += len(idx)
                if (bi + 1) % LOG_EVERY_BATCHES == 0 or bi + 1 == len(batches):
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    log(f"extract: {done}/{n} images, {rate:.1f} img/s")
        finally:
            source.close()
            writer.work.put(None)
            writer.join()
        writer.raise_error()
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
