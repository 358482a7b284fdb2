import math
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lcseg_steps.stages.extract as extract_mod
from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.data.images import (
    ImageError,
    normalize,
    patch_grid_size,
    read_rgb,
    resize_for_backbone,
)
from lcseg_steps.perimage.backbone import load_backbone
from lcseg_steps.perimage.qkv import FEATURES, qkv_features
from lcseg_steps.stages.extract import extract_shard, plan_windows
from lcseg_steps.stores.layout import image_grid_array, image_rows, open_store

torch.set_num_threads(1)

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def vit8():
    return load_backbone("vit_small_patch8_224", "random", seed=0, overrides=TINY)


def _reference(model, x, layer):
    """q, k, v over ALL tokens, recomputed from the block input with norm1 + F.linear."""
    block = model.blocks[layer]
    seen = []
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        with torch.inference_mode():
            model.forward_features(x)
    finally:
        handle.remove()
    (tokens,) = seen
    with torch.inference_mode():
        qkv = F.linear(block.norm1(tokens), block.attn.qkv.weight, block.attn.qkv.bias)
    d = qkv.shape[-1] // 3
    return qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]


def _cls_attention_loop(q, k, heads, n_prefix):
    """Head-by-head CLS->token softmax, patch entries kept, averaged over heads."""
    b, t, d = q.shape
    hd = d // heads
    out = torch.zeros(b, t - n_prefix)
    for i in range(b):
        for h in range(heads):
            qc = q[i, 0, h * hd : (h + 1) * hd]
            logits = torch.stack([qc @ k[i, j, h * hd : (h + 1) * hd] for j in range(t)])
            out[i] += torch.softmax(logits / math.sqrt(hd), 0)[n_prefix:] / heads
    return out


@pytest.mark.parametrize("layer", [0, -1])
def test_qkv_features_match_independent_recomputation(vit8, layer):
    model, info = vit8
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    out = qkv_features(model, x, layer)
    q, k, v = _reference(model, x, layer)
    n = 3 * 5
    assert out["q"].shape == (2, n, 48) and out["cls_attn"].shape == (2, n)
    for name, ref in (("q", q), ("k", k), ("v", v)):
        torch.testing.assert_close(out[name], ref[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        out["cls_attn"], _cls_attention_loop(q, k, info.num_heads, 1), rtol=1e-5, atol=1e-6
    )
    with torch.inference_mode():
        torch.testing.assert_close(out["cls"], model.forward_features(x)[:, 0])
    assert not model.blocks[layer].attn.qkv._forward_hooks  # hook removed


def test_qkv_features_drop_register_tokens():
    model, info = load_backbone(
        "vit_small_patch14_reg4_dinov2", "random", seed=0, overrides={**TINY, "img_size": 56}
    )
    assert info.num_prefix_tokens == 5
    x = torch.randn(1, 3, 42, 56, generator=torch.Generator().manual_seed(2))
    out = qkv_features(model, x)
    q, k, v = _reference(model, x, -1)
    assert q.shape[1] == 5 + 12 and out["k"].shape == (1, 12, 48)
    torch.testing.assert_close(out["k"], k[:, 5:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["v"], v[:, 5:], rtol=1e-5, atol=1e-5)
    ref_attn = _cls_attention_loop(q, k, info.num_heads, 5)
    torch.testing.assert_close(out["cls_attn"], ref_attn, rtol=1e-5, atol=1e-6)
    assert float(out["cls_attn"].sum()) < 1.0  # registers took part of the softmax mass


def test_qkv_features_apply_qk_norm():
    model, info = load_backbone(
        "vit_small_patch8_224", "random", seed=0, overrides={**TINY, "qk_norm": True}
    )
    attn = model.blocks[-1].attn
    with torch.no_grad():  # non-trivial norm parameters so skipping them would show
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(1, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    out = qkv_features(model, x)
    q, k, v = _reference(model, x, -1)
    hd = 48 // info.num_heads
    with torch.inference_mode():
        qn = torch.cat([attn.q_norm(q[..., h * hd : (h + 1) * hd]) for h in range(2)], -1)
        kn = torch.cat([attn.k_norm(k[..., h * hd : (h + 1) * hd]) for h in range(2)], -1)
    torch.testing.assert_close(out["q"], qn[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["k"], kn[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["v"], v[:, 1:], rtol=1e-5, atol=1e-5)


def test_plan_windows_batches_equal_grids_in_contiguous_windows():
    grids = [(5, 8), (8, 5), (5, 8), (8, 8), (5, 8), (5, 8), (8, 5), (2, 8), (5, 8)]
    windows = plan_windows(grids, batch_size=2)
    span = 2 * extract_mod.WINDOW_BATCHES
    seen = []
    for w, batches in enumerate(windows):
        members = sorted(i for b in batches for i in b)
        assert members == list(range(w * span, min((w + 1) * span, len(grids))))
        for b in batches:
            assert 1 <= len(b) <= 2 and len({grids[i] for i in b}) == 1
        seen += members
    assert seen == list(range(len(grids)))


SIZES = [(37, 53), (50, 33), (40, 56), (64, 64), (20, 70)]  # first and third share a grid


def _write_images(root, sizes=SIZES):
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(sizes):
        path = root / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        records.append(ImageRecord(f"id{i}", str(path), "", h, w, "s0"))
    return records


@pytest.mark.parametrize(
    "batch_size,chunk_rows,window_batches,num_workers",
    [(2, 16, 1, 0), (8, 16384, 4, 1)],
)
def test_extract_shard_round_trip(
    tmp_path, vit8, monkeypatch, batch_size, chunk_rows, window_batches, num_workers
):
    monkeypatch.setattr(extract_mod, "WINDOW_BATCHES", window_batches)
    model, info = vit8
    records = _write_images(tmp_path)
    # reversed order: the store must keep the caller's order, not the batching order
    records = records[::-1]
    logs = []
    out = extract_shard(
        records,
        model,
        info,
        tmp_path / "s0.zarr",
        long_side=64,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        num_workers=num_workers,
        precision="float32",  # compared with float32 recomputation below
        attrs={"config_digest": "abc"},
        log=logs.append,
    )
    store = open_store(out)
    assert [str(s) for s in store["image_ids"][:]] == [r.image_id for r in records]
    assert store.attrs["config_digest"] == "abc" and store.attrs["backbone"] == info.name
    assert store.attrs["weights"] == "random:seed=0" and store.attrs["layer"] == -1
    assert store.attrs["patch_size"] == 8 and store.attrs["long_side"] == 64
    assert logs and logs[-1].startswith("extract: 5/5 images")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    n_rows = store["k"].shape[0]
    n_chunks = -(-n_rows // chunk_rows)
    assert store["k"].chunks[0] * n_chunks - n_rows < n_chunks  # balanced: little padding

    grids = [(r.height, r.width) for r in records]
    want_px = [patch_grid_size(h, w, 8, 64) for h, w in grids]
    np.testing.assert_array_equal(store["input_size"][:], want_px)
    np.testing.assert_array_equal(store["grid"][:], np.array(want_px) // 8)
    sizes = [h // 8 * (w // 8) for h, w in want_px]
    np.testing.assert_array_equal(store["offsets"][:], np.cumsum([0, *sizes]))
    assert store["k"].dtype == np.float16 and store["k"].shape == (sum(sizes), 48)
    assert store["cls_attn"].dtype == np.float32 and store["cls"].shape == (5, 48)

    for i, rec in enumerate(records):
        x = torch.from_numpy(normalize(resize_for_backbone(read_rgb(rec.path), 8, 64)))[None]
        ref = qkv_features(model, x)
        for name in ("q", "k", "v"):
            got = image_rows(store, name, i).astype(np.float32)
            np.testing.assert_allclose(got, ref[name][0].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(
            image_rows(store, "cls_attn", i), ref["cls_attn"][0].numpy(), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            store["cls"][i].astype(np.float32), ref["cls"][0].numpy(), rtol=2e-3, atol=2e-3
        )
        gh, gw = store["grid"][i]
        assert image_grid_array(store, "k", i).shape == (gh, gw, 48)


def test_extract_shard_store_features_subset(tmp_path, vit8):
    model, info = vit8
    records = _write_images(tmp_path, SIZES[:2])
    store = open_store(
        extract_shard(
            records,
            model,
            info,
            tmp_path / "k.zarr",
            long_side=64,
            store_features=("k",),
            num_workers=0,
            log=lambda _m: None,
        )
    )
    assert "k" in store and "q" not in store and "v" not in store
    assert store.attrs["store_features"] == ["k"]
    with pytest.raises(ValueError, match="store_features"):
        extract_shard(
            records, model, info, tmp_path / "bad.zarr", store_features=("x",), num_workers=0
        )


def test_extract_shard_size_mismatch_names_file(tmp_path, vit8):
    model, info = vit8
    records = _write_images(tmp_path, SIZES[:3])
    bad = records[1]
    records[1] = ImageRecord(bad.image_id, bad.path, "", bad.height + 1, bad.width, "s0")
    with pytest.raises(ImageError, match=r"img1\.png.*50x33.*51x33"):
        extract_shard(
            records,
            model,
            info,
            tmp_path / "s.zarr",
            long_side=64,
            num_workers=0,
            log=lambda _m: None,
        )
    assert not (tmp_path / "s.zarr").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def _cos_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("min_cos", [0.99, 1.5])
def test_extract_precision_auto_checks_bf16_on_the_first_batch(
    tmp_path, vit8, monkeypatch, native, min_cos
):
    """auto: bf16 only where native and within the threshold; the store says which."""
    monkeypatch.setattr(extract_mod, "native_bf16", lambda _dev: native)
    monkeypatch.setattr(extract_mod, "BF16_MIN_COS", min_cos)
    model, info = vit8
    records = _write_images(tmp_path)
    logs = []
    kw = {"long_side": 64, "batch_size": 2, "num_workers": 0, "log": logs.append}
    auto = open_store(extract_shard(records, model, info, tmp_path / "a.zarr", **kw))
    f32 = open_store(
        extract_shard(records, model, info, tmp_path / "f.zarr", precision="float32", **kw)
    )
    bf = open_store(
        extract_shard(records, model, info, tmp_path / "b.zarr", precision="bfloat16", **kw)
    )
    assert f32.attrs["precision"] == "float32" and bf.attrs["precision"] == "bfloat16"
    # bfloat16 keeps 8 significant bits: close to float32, never equal to it
    cos = _cos_rows(bf["k"][:], f32["k"][:])
    assert cos.min() > 0.999 and not np.array_equal(bf["k"][:], f32["k"][:])
    chose_bf16 = native and min_cos < 1
    assert auto.attrs["precision"] == ("bfloat16" if chose_bf16 else "float32")
    want = bf if chose_bf16 else f32
    for name in ("q", "k", "v", "cls_attn"):
        np.testing.assert_array_equal(auto[name][:], want[name][:])
    if native:
        # the recorded similarity is the smallest over the first image's q/k/v rows: at
        # least the smallest over all rows (up to the stores' float16 rounding), below 1
        low = min(_cos_rows(bf[f][:], f32[f][:]).min() for f in ("q", "k", "v"))
        assert low - 1e-4 <= auto.attrs["bf16_min_cos"] < 1.0
        assert any("bf16 q/k/v rows within cosine" in m for m in logs)
    else:
        assert auto.attrs["bf16_min_cos"] is None
    with pytest.raises(ValueError, match="precision 'half'"):
        extract_shard(records, model, info, tmp_path / "x.zarr", precision="half", **kw)


def test_chunk_writer_writes_whole_chunks_in_the_background_and_reraises():
    from concurrent.futures import ThreadPoolExecutor

    class Recorder:
        chunks, shape, dtype = (4,), (10,), np.float32

        def __init__(self, fail_at=None):
            self.data, self.writes, self.fail_at = np.zeros(10, np.float32), [], fail_at

        def __setitem__(self, rows, values):
            if rows.start == self.fail_at:
                raise OSError("disk full")
            self.writes.append((rows.start, rows.stop))
            self.data[rows] = values

    with ThreadPoolExecutor(1) as io:
        arr = Recorder()
        cw = extract_mod._ChunkWriter(arr, io)
        cw.extend(6)
        cw.put(0, np.arange(6, dtype=np.float32))
        cw.flush()  # rows 0:4 go, 4:6 stay for the next window
        cw.extend(10)
        cw.put(6, np.arange(6, 10, dtype=np.float32))
        cw.flush(final=True)
        cw.wait()
        assert arr.writes == [(0, 4), (4, 10)]
        np.testing.assert_array_equal(arr.data, np.arange(10))

        bad = extract_mod._ChunkWriter(Recorder(fail_at=0), io)
        bad.extend(8)
        bad.flush()
        with pytest.raises(OSError, match="disk full"):
            bad.wait()


def _old_path_store(records, model, info, *, long_side, batch_size, precision, feats):
    """The stores' contents the straightforward way, as extraction computed them before
    the data path was rebuilt: every image decoded, resized (OpenCV) and normalised
    (NumPy) on its own, stacked in ``plan_windows``' batches, one forward pass a batch,
    ``as_stored``, the rows put at their offsets."""
    from lcseg_steps.perimage.qkv import as_stored, autocast

    grids = [patch_grid_size(r.height, r.width, 8, long_side) for r in records]
    rows = [h // 8 * (w // 8) for h, w in grids]
    offsets = np.cumsum([0, *rows])
    dim = model.blocks[-1].attn.qkv.out_features // 3
    want = {f: np.zeros((offsets[-1], dim), np.float16) for f in feats}
    want["cls_attn"] = np.zeros(offsets[-1], np.float32)
    want["cls"] = np.zeros((len(records), info.embed_dim), np.float16)
    for batch in (b for w in plan_windows(grids, batch_size) for b in w):
        x = torch.from_numpy(
            np.stack(
                [
                    normalize(resize_for_backbone(read_rgb(records[i].path), 8, long_side))
                    for i in batch
                ]
            )
        )
        with autocast(torch.device("cpu"), precision == "bfloat16"):
            out = as_stored(qkv_features(model, x), feats)
        for j, i in enumerate(batch):
            lo, hi = offsets[i], offsets[i + 1]
            for f in (*feats, "cls_attn"):
                want[f][lo:hi] = out[f][j]
            want["cls"][i] = out["cls"][j]
    return want


@pytest.mark.parametrize(
    "precision,feats,num_workers,batch_size",
    [
        ("float32", ("q", "k", "v"), 0, 2),
        ("float32", ("k",), 1, 8),
        ("bfloat16", ("v", "q"), 0, 3),
        ("bfloat16", ("q", "k", "v"), 1, 2),
    ],
)
def test_extract_shard_stores_the_old_paths_bytes(
    tmp_path, vit8, precision, feats, num_workers, batch_size
):
    """The rebuilt data path (uint8 from the decoders, normalised in torch, packed into one
    buffer, scattered by the writer thread) stores exactly the bytes of the straightforward
    path, in both precisions, for subsets of q/k/v, with and without worker processes."""
    model, info = vit8
    # sizes shrunk, enlarged (INTER_CUBIC) and kept as they are, grids shared and not
    records = _write_images(tmp_path, [*SIZES, (64, 48), (37, 53), (90, 120)])
    store = open_store(
        extract_shard(
            records,
            model,
            info,
            tmp_path / "s.zarr",
            long_side=64,
            store_features=feats,
            batch_size=batch_size,
            num_workers=num_workers,
            chunk_rows=40,
            precision=precision,
            log=lambda _m: None,
        )
    )
    want = _old_path_store(
        records, model, info, long_side=64, batch_size=batch_size, precision=precision, feats=feats
    )
    assert sorted(k for k, _ in store.arrays() if k in want) == sorted(want)
    for name, arr in want.items():
        got = store[name][:]
        assert got.dtype == arr.dtype and got.shape == arr.shape, name
        assert got.tobytes() == arr.tobytes(), name


def test_normaliser_gives_normalize_bytes_for_every_value():
    """Both ways of normalising on a device give ``images.normalize``'s bytes for every
    uint8 value of each channel (so for every image), laid out (B, 3, h, w)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1).reshape(1, 16, 16, 3)
    table = torch.from_numpy(normalize(values.reshape(1, 256, 3)).reshape(-1).copy())
    for probe in (x, values):
        want = np.stack([normalize(img) for img in probe])
        for f in (
            extract_mod.normaliser(torch.device("cpu")),
            extract_mod._normalise_arithmetic,
            lambda t: extract_mod._normalise_table(t, table),
        ):
            got = f(torch.from_numpy(probe))
            assert got.is_contiguous() and got.dtype == torch.float32
            assert got.numpy().tobytes() == want.tobytes()


def test_extract_shard_writer_failure_is_raised_and_leaves_no_store(tmp_path, vit8, monkeypatch):
    """A chunk write that fails in the writer thread stops extraction with its error."""
    model, info = vit8
    records = _write_images(tmp_path)

    def fail(self, lo, rows):
        raise OSError("disk full")

    monkeypatch.setattr(extract_mod._ChunkWriter, "put", fail)
    with pytest.raises(OSError, match="disk full"):
        extract_shard(
            records,
            model,
            info,
            tmp_path / "s.zarr",
            long_side=64,
            batch_size=1,
            num_workers=0,
            log=lambda _m: None,
        )
    assert not (tmp_path / "s.zarr").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_extract_shard_decoding_failure_is_raised(tmp_path, vit8, num_workers):
    model, info = vit8
    records = _write_images(tmp_path, SIZES * 3)
    (tmp_path / "img3.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"img3\.png"):
        extract_shard(
            records,
            model,
            info,
            tmp_path / "s.zarr",
            long_side=64,
            batch_size=2,
            num_workers=num_workers,
            log=lambda _m: None,
        )
    assert not (tmp_path / "s.zarr").exists()


# ``extract`` on CUDA with bf16 autocast against the CPU in float32 (runs on a GPU only)
@pytest.mark.gpu
def test_cuda_bf16_features_match_cpu_float32(tmp_path):
    # a full-size ViT-S/16 (random weights): the depth over which bf16 rounding accumulates
    model, info = load_backbone("dino_vits16", "random", seed=0)
    records = _write_images(tmp_path, sizes=[(96, 128), (160, 112), (64, 64)])
    kw = {"long_side": 160, "batch_size": 2, "num_workers": 0, "log": lambda _m: None}
    cpu = open_store(
        extract_shard(
            records, model, info, tmp_path / "cpu.zarr", device="cpu", precision="float32", **kw
        )
    )
    gpu = open_store(
        extract_shard(
            records, model, info, tmp_path / "gpu.zarr", device="cuda", precision="bfloat16", **kw
        )
    )
    assert gpu.attrs["precision"] == "bfloat16"
    np.testing.assert_array_equal(cpu["offsets"][:], gpu["offsets"][:])
    for name in FEATURES:
        cos = _cos_rows(cpu[name][:], gpu[name][:])
        assert cos.min() >= 0.999, (name, float(cos.min()))
    assert _cos_rows(cpu["cls"][:], gpu["cls"][:]).min() >= 0.999
