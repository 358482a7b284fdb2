"""Bounded memory: the dataset-level fit's peak RSS does not grow with the number of
patches, and extraction keeps at most one decoded batch per DataLoader worker ahead."""

import json
import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lcseg_steps.stages.extract as extract_mod
from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.perimage.backbone import load_backbone
from tests.helpers import REPO

# A streamed fit in a fresh interpreter (its own peak RSS), over n_blocks float16 blocks of
# 16,384 x 384 rows made on the fly (each block a column-rotation of one random block, so
# the data never exists whole), with the streaming driver's default 1 GiB float32 cache.
FIT = r"""
import json, sys
import numpy as np
from lcseg_steps.clustering.kmeans import kmeans_stream

def vmhwm_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

n_blocks = int(sys.argv[1])
base = np.random.default_rng(0).standard_normal((16384, 384)).astype(np.float16)
blocks = lambda: (np.roll(base, i, axis=1) for i in range(n_blocks))
before = vmhwm_mb()
fit = kmeans_stream(blocks, 8, init_sample=100_000, max_iter=2, tol=0.0, device="cpu",
                       threads=2)
print(json.dumps({"rows": len(fit.labels), "before_mb": before, "peak_mb": vmhwm_mb()}))
"""


def _fit_peak(n_blocks: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-c", FIT, str(n_blocks)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_dataset_fit_peak_memory_is_flat_from_1m_to_4m_patches():
    small, large = _fit_peak(61), _fit_peak(244)  # 999,424 and 3,997,696 rows
    assert (small["rows"], large["rows"]) == (61 * 16384, 244 * 16384)
    # all rows as float32 would be 1.5 GB and 6 GB; the fit holds a bounded cache instead
    assert large["peak_mb"] < 2200, large
    assert large["peak_mb"] / small["peak_mb"] < 1.3, (small, large)


def test_extraction_holds_one_decoded_batch_per_worker(tmp_path, monkeypatch):
    """Images decoded (in the worker) minus images that reached the forward pass never
    exceed the batch being computed plus one batch per worker."""
    import cv2

    decoded = mp.get_context("fork").Value("i", 0)
    seen = {"fed": 0, "worst": 0}
    dataset_getitem = extract_mod._ImageDataset.__getitem__

    def counting_getitem(self, i):
        out = dataset_getitem(self, i)
        with decoded.get_lock():
            decoded.value += 1
        return out

    qkv = extract_mod.qkv_features

    def counting_qkv(model, x, layer=-1, *args):
        seen["fed"] += x.shape[0]
        seen["worst"] = max(seen["worst"], decoded.value - seen["fed"] + x.shape[0])
        return qkv(model, x, layer, *args)

    monkeypatch.setattr(extract_mod._ImageDataset, "__getitem__", counting_getitem)
    monkeypatch.setattr(extract_mod, "qkv_features", counting_qkv)
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        path = tmp_path / f"im{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
        records.append(ImageRecord(f"im{i}", str(path), "", 40, 56, "s0"))
    model, info = load_backbone(
        "vit_small_patch8_224", "random", overrides={"depth": 1, "embed_dim": 16, "num_heads": 2}
    )
    torch.set_num_threads(1)
    extract_mod.extract_shard(
        records,
        model,
        info,
        tmp_path / "f.zarr",
        long_side=56,
        batch_size=2,
        num_workers=1,
        precision="float32",
        log=lambda _m: None,
    )
    assert seen["fed"] == 24 and decoded.value == 24
    # the batch being computed (2) plus one batch prefetched by the one worker (2)
    assert seen["worst"] <= 4, seen
