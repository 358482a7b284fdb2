"""Extract stage against a bare timm forward pass of the same ViT on the same inputs.

Ours is :func:`lcseg_steps.stages.extract.extract_shard` (the stage's whole core with
``num_workers=0``: decoding, the ``attn.qkv`` hook, the q/k/v split, CLS attention, float16
conversion, the chunked Zarr writes; a new store each call) on JPEG files. The reference is
``model.forward_features`` on the same images already decoded, resized and normalised,
in the same batches, at the same precision: what ``precision: auto`` picks on this
machine (bfloat16 autocast where the CPU has native bf16, else float32), given to ours
explicitly; the one-off cost of auto's check (one image in both precisions) is reported
apart (``auto_check_s``). Decoding is not isolated inside ``extract_shard``, so it
is measured on its own and reported (``decode_s``); ``ratio_excluding_decode`` charges
ours without it. So is the CRC32C of every chunk written (``checksum_s``, its share of
ours ``checksum_share_of_ours``; docs/reliability.md). Kind "speedup": ratio = bare time /
ours, target >= 0.9.

``run_datapath`` measures the data path alone (a stand-in backbone) against decoding.
``run_checksums`` measures the stores' checksums alone, writing and streaming back a
features-sized array with and without them.

Also measured once (in ``extra``): q/k/v under ``torch.autocast("cpu", bfloat16)`` against
float32 (cosine similarity per patch row, and the time of each), on two images.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from benchmarks.bench_refine import write_scenes
from benchmarks.harness import Context, Result, interleaved, time_call


def _decode_all(paths, patch: int, long_side: int) -> list[np.ndarray]:
    from lcseg_steps.data.images import normalize, read_rgb, resize_for_backbone

    return [normalize(resize_for_backbone(read_rgb(p), patch, long_side)) for p in paths]


def extract_on_cpu(records, model, info, out, *, long_side, batch, precision, layer=-1):
    """``extract_shard`` as the benchmarks run it: on the CPU, no DataLoader workers,
    quiet."""
    from lcseg_steps.stages.extract import extract_shard

    return extract_shard(
        records,
        model,
        info,
        out,
        layer=layer,
        long_side=long_side,
        batch_size=batch,
        num_workers=0,
        device="cpu",
        precision=precision,
        log=lambda _m: None,
    )


def fresh_paths(folder, stem: str):
    """A new store path for every call (``stem_1.zarr``, ``stem_2.zarr``, ...): the stage
    never overwrites a store (Snakemake removes a job's outputs before it runs), so the
    timed calls do not remove the previous call's store either."""
    count = iter(range(1, 1 << 30))
    return lambda: folder / f"{stem}_{next(count)}.zarr"


def bf16_check(model, x: torch.Tensor) -> dict:
    """Cosine similarity of bf16-autocast q/k/v to float32 ones, and both times (1 run)."""
    from lcseg_steps.perimage.qkv import qkv_features

    t32, ref = time_call(lambda: qkv_features(model, x))

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return qkv_features(model, x)

    bf16()  # the first bf16 call pays one-off kernel selection
    t16, low = time_call(bf16)
    out = {"fp32_s": t32, "bf16_s": t16, "bf16_slowdown": t16 / t32}
    for name in ("q", "k", "v", "cls"):
        a = ref[name].reshape(-1, ref[name].shape[-1]).double()
        b = low[name].reshape(-1, low[name].shape[-1]).double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        out[f"cos_{name}_min"] = float(cos.min())
        out[f"cos_{name}_mean"] = float(cos.mean())
    out["qkv_cos_min_ge_0.9999"] = all(out[f"cos_{f}_min"] >= 0.9999 for f in "qkv")
    return out


def checksum_seconds(store) -> tuple[float, int]:
    """Median seconds of CRC32C over every chunk file of ``store`` (what its checksums
    add to writing it, and again to each full read; robust to a busy machine, unlike the
    difference of two whole runs) and the bytes summed."""
    import google_crc32c

    blobs = [p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"]
    times = [time_call(lambda: [google_crc32c.value(b) for b in blobs])[0] for _ in range(5)]
    return statistics.median(times), sum(len(b) for b in blobs)


def run(ctx: Context) -> list[Result]:
    from lcseg_steps.data.image_table import ImageRecord
    from lcseg_steps.perimage.backbone import load_backbone
    from lcseg_steps.perimage.qkv import BF16_MIN_COS, bf16_fidelity, native_bf16

    long_side = ctx.pick(480, 224, 64)
    n = ctx.pick(16, 8, 2)
    batch = ctx.pick(8, 4, 2)
    h, w = 375, 500  # a typical VOC image; resized to long_side by both sides
    overrides = ctx.pick({}, {}, {"depth": 2})
    model, info = load_backbone("dino_vits16", "random", overrides=overrides)
    scenes = write_scenes(ctx.tmp / "images", n, h, w, seed=1)
    paths = [p for p, _, _ in scenes]
    records = [ImageRecord(f"img_{i:04d}", str(p), "", h, w) for i, p in enumerate(paths)]
    inputs = _decode_all(paths, info.patch_size, long_side)
    batches = [torch.from_numpy(np.stack(inputs[i : i + batch])) for i in range(0, n, batch)]
    store_path = fresh_paths(ctx.tmp, "features")
    last = {}
    # what precision "auto" settles on here (the check as extract_shard runs it)
    cpu = torch.device("cpu")
    bf16_check_s, auto_cos = time_call(lambda: bf16_fidelity(model, batches[0][:1]))
    bf16 = native_bf16(cpu) and auto_cos >= BF16_MIN_COS
    precision = "bfloat16" if bf16 else "float32"
    ctx.log(
        f"extract: {n} images {h}x{w} -> {tuple(inputs[0].shape[1:])}, batch {batch}, "
        f"{info.timm_name} random, {torch.get_num_threads()} torch threads, {precision}"
    )

    def ours():
        last["out"] = store_path()
        return extract_on_cpu(
            records, model, info, last["out"], long_side=long_side, batch=batch, precision=precision
        )

    def reference():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return [model.forward_features(x) for x in batches]

    t = interleaved(ours, reference, ctx.repeats, log=ctx.log)
    decode = statistics.median(
        time_call(lambda: _decode_all(paths, info.patch_size, long_side))[0] for _ in range(3)
    )
    crc_s, crc_bytes = checksum_seconds(last["out"])
    extra = {
        "checksum_s": crc_s,
        "checksum_mib": crc_bytes / 2**20,
        "checksum_share_of_ours": crc_s / t.ours_s,
        "decode_s": decode,
        "ratio_excluding_decode": t.reference_s / max(t.ours_s - decode, 1e-9),
        "ours_images_per_s": n / t.ours_s,
        "bare_images_per_s": n / t.reference_s,
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "native_bf16": native_bf16(cpu),
        "auto_check_s": bf16_check_s,
        "auto_check_min_cos": auto_cos,
        "auto_check_share_of_a_256_image_shard": bf16_check_s / (bf16_check_s + 256 * t.ours_s / n),
        "weights": info.weights,
        **t.summary(),
    }
    if ctx.scale != "tiny":
        extra["bf16"] = bf16_check(model, batches[0][:2])
        ctx.log(f"  bf16 vs fp32: {extra['bf16']}")
    return [
        Result(
            name="extract",
            kind="speedup",
            ours_s=t.ours_s,
            reference_s=t.reference_s,
            target=0.9,
            runs=ctx.repeats,
            sizes={
                "images": n,
                "image_hw": [h, w],
                "input_hw": list(inputs[0].shape[1:]),
                "long_side": long_side,
                "batch_size": batch,
                "backbone": info.timm_name,
                "precision": precision,
            },
            extra=extra,
        )
    ]


def run_datapath(ctx: Context) -> list[Result]:
    """The extraction data path alone: ``extract_shard`` with a stand-in backbone so cheap
    (one block, width 16) that its forward is negligible, against the floor of decoding,
    resizing and normalising the same JPEGs alone in one loop. Independent of the real
    backbone's speed, it shows what reading, copying and writing around the forward cost.
    Kind "speedup": ratio = decode floor / ours, target >= 0.8."""
    from lcseg_steps.data.image_table import ImageRecord
    from lcseg_steps.perimage.backbone import load_backbone

    long_side = ctx.pick(480, 224, 64)
    n = ctx.pick(32, 16, 4)
    batch = ctx.pick(8, 8, 2)
    h, w = 375, 500
    model, info = load_backbone(
        "vit_small_patch16_224",
        "random",
        overrides={"depth": 1, "embed_dim": 16, "num_heads": 1},
    )
    scenes = write_scenes(ctx.tmp / "datapath_images", n, h, w, seed=2)
    paths = [p for p, _, _ in scenes]
    records = [ImageRecord(f"img_{i:04d}", str(p), "", h, w) for i, p in enumerate(paths)]
    store_path = fresh_paths(ctx.tmp, "datapath")
    ctx.log(f"extract_datapath: {n} JPEGs {h}x{w}, long side {long_side}, stand-in ViT")

    def ours():
        return extract_on_cpu(
            records,
            model,
            info,
            store_path(),
            long_side=long_side,
            batch=batch,
            precision="float32",
        )

    def floor():
        return _decode_all(paths, info.patch_size, long_side)

    t = interleaved(ours, floor, ctx.repeats, log=ctx.log)
    return [
        Result(
            name="extract_datapath",
            kind="speedup",
            ours_s=t.ours_s,
            reference_s=t.reference_s,
            target=0.8,
            runs=ctx.repeats,
            sizes={"images": n, "image_hw": [h, w], "long_side": long_side, "batch_size": batch},
            extra={
                "ours_images_per_s": n / t.ours_s,
                "decode_floor_images_per_s": n / t.reference_s,
                "torch_threads": torch.get_num_threads(),
                **t.summary(),
            },
        )
    ]


def run_checksums(ctx: Context) -> list[Result]:
    """What the stores' checksums cost (docs/reliability.md): a features-sized float16
    ``(rows, 384)`` array written and then streamed back chunk by chunk as lcseg does
    (``StoreWriter``, then ``open_store`` and ``iter_row_blocks``: CRC32C per chunk, every
    chunk written, the missing-chunk walk on first use) against the same array written
    and read the way stores were before (raw chunks, plain Zarr, no checksum). Files sit
    in the page cache, so this is the CPU cost alone, its largest share. Kind
    "speedup": ratio = before / ours, target >= 0.9 each."""
    import zarr

    from lcseg_steps.stores.layout import (
        DEFAULT_CHUNK_ROWS,
        StoreWriter,
        iter_row_blocks,
        open_store,
    )

    rows, dim = ctx.pick(262144, 65536, 2048), ctx.pick(384, 384, 32)
    data = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16)
    ours_path, plain_path = ctx.tmp / "checksummed.zarr", ctx.tmp / "plain.zarr"
    ctx.log(f"extract_checksums: {rows} x {dim} float16 ({data.nbytes / 2**20:.0f} MiB)")

    def write_ours():
        with StoreWriter(ours_path) as w:
            w.write("k", data, raw=True)

    def write_plain():
        g = zarr.open_group(str(plain_path), mode="w")
        chunks = (min(DEFAULT_CHUNK_ROWS, rows), dim)
        g.create_array("k", shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=None)
        g["k"][...] = data

    def read(group):
        return sum(float(b[0, 0]) for b in iter_row_blocks(group["k"]))

    tw = interleaved(write_ours, write_plain, ctx.repeats, log=ctx.log)
    tr = interleaved(
        lambda: read(open_store(ours_path)),
        lambda: read(zarr.open_group(str(plain_path), mode="r")),
        ctx.repeats,
        log=ctx.log,
    )
    if tr.last["ours"] != tr.last["reference"]:
        raise AssertionError("extract_checksums: the two stores read back differently")
    sizes = {"rows": rows, "dim": dim, "dtype": "float16", "mib": data.nbytes / 2**20}
    return [
        Result(
            name=f"extract_checksums_{what}",
            kind="speedup",
            ours_s=t.ours_s,
            reference_s=t.reference_s,
            target=0.9,
            runs=ctx.repeats,
            sizes=sizes,
            extra={"ours_gib_per_s": data.nbytes / 2**30 / t.ours_s, **t.summary()},
        )
        for what, t in (("write", tw), ("read", tr))
    ]
