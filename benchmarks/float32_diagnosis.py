"""Where do a CPU and a device ``extract`` in float32 part ways? (issue 23)

    python -m benchmarks.float32_diagnosis --device cuda --json out.json
    python -m benchmarks.float32_diagnosis --device cpu     # CPU against CPU: all equal

The tiny demo pipeline in float32 on CUDA gave merged masks differing from the CPU run's
on 5 of 68 patches. This walks the chain one step at a time on the same tiny random-weight
ViT (the tests' 2-block one) and the same demo images:

1. ``extract`` on the CPU and on ``--device``, both float32, with cuDNN/cuBLAS TF32 as
   torch leaves them (``tf32_default``) and again with TF32 off (``tf32_off``): per feature
   (q, k, v, cls) the cosine of each row against the CPU's row (min, mean, rows below
   0.9999) and the largest absolute difference, on the float16 rows the store holds (what
   every later stage reads);
2. per level, the k-means labels computed from each side's stored features with the
   *same* initial centroids on the same engine (NumPy): the image level (k = 2 per image)
   and the dataset level (one fit over every row), as the fraction of equal labels.

A level whose labels differ although the features agree to ~1e-6 points at near ties; a
difference that shrinks with TF32 off points at TF32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

FEATURES = ("q", "k", "v", "cls")
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # tests/helpers.py TINY's backbone


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-30)


def _set_tf32(enabled: bool | None) -> dict:
    """Set torch's TF32 switches (None leaves them); returns what they are now."""
    import torch

    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
    return {
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


def compare_features(a, b) -> dict:
    """Per feature of two feature stores: cosine of each row against the other's."""
    out = {}
    for name in FEATURES:
        x, y = a[name][:], b[name][:]
        cos = _cos_rows(x, y)
        out[name] = {
            "rows": int(x.shape[0]),
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
            "rows_below_0.9999": int(np.sum(cos < 0.9999)),
            "max_abs_diff": float(np.max(np.abs(x.astype(np.float32) - y.astype(np.float32)))),
            "equal_fraction": float(np.mean(np.all(x == y, axis=1))),
        }
    return out


def level_agreement(a, b, feature: str = "k", seed: int = 0) -> dict:
    """Equal-label fractions of the image level and the dataset level, each side's labels
    computed from its own stored ``feature`` rows with the same initial centroids."""
    from lcseg_steps.clustering.kmeans import kmeans, kmeans_plusplus, kmeans_ranges

    off = a["offsets"][:]
    xa, xb = a[feature][:], b[feature][:]
    init = np.stack(
        [kmeans_plusplus(xa[off[i] : off[i + 1]], 2, seed, stream=i) for i in range(len(off) - 1)]
    )
    kw = {"offsets": off, "init": init, "max_iter": 50, "tol": 0.0, "device": "cpu"}
    ia, ib = kmeans_ranges(xa, 2, **kw), kmeans_ranges(xb, 2, **kw)
    c0 = kmeans_plusplus(xa, 4, seed)
    da = kmeans(xa, 4, init=c0, max_iter=50, tol=0.0, device="cpu")
    db = kmeans(xb, 4, init=c0, max_iter=50, tol=0.0, device="cpu")
    per_image = [
        float(np.mean(ia.labels[off[i] : off[i + 1]] == ib.labels[off[i] : off[i + 1]]))
        for i in range(len(off) - 1)
    ]
    return {
        "feature": feature,
        "image_level_equal_fraction": float(np.mean(ia.labels == ib.labels)),
        "image_level_images_differing": int(sum(f < 1.0 for f in per_image)),
        "image_level_objective_max_abs_diff": float(np.max(np.abs(ia.objective - ib.objective))),
        "dataset_level_equal_fraction": float(np.mean(da.labels == db.labels)),
        "dataset_level_objective_abs_diff": float(np.max(np.abs(da.objective - db.objective))),
    }


def diagnose(device: str, n_images: int = 8, long_side: int = 64, tmp: Path | None = None) -> dict:
    import cv2

    from lcseg_steps.data.demo import generate_demo, list_demo
    from lcseg_steps.perimage.backbone import load_backbone
    from lcseg_steps.stages.extract import extract_shard
    from lcseg_steps.stores.layout import open_store

    t0 = time.perf_counter()
    tmp = Path(tmp or tempfile.mkdtemp(prefix="float32_diagnosis_"))
    generate_demo(tmp / "demo", n_images, seed=1, min_size=64, max_size=100, log=lambda _m: None)
    records = [
        replace(r, height=h, width=w)
        for r in list_demo({"root": str(tmp / "demo"), "demo": {"n_images": n_images}})
        for h, w in [cv2.imread(r.path).shape[:2]]
    ]
    model, info = load_backbone("vit_small_patch16_224", "random", seed=0, overrides=TINY_VIT)
    kw = {"long_side": long_side, "batch_size": 4, "num_workers": 0, "log": lambda _m: None}

    def extract(where: str, name: str):
        path = extract_shard(
            records, model, info, tmp / f"{name}.zarr", device=where, precision="float32", **kw
        )
        return open_store(path)

    cpu = extract("cpu", "cpu")
    saved = _set_tf32(None)
    result: dict = {"device": device, "images": n_images, "long_side": long_side, "runs": {}}
    for label, tf32 in (("tf32_default", None), ("tf32_off", False)):
        switches = _set_tf32(tf32)
        dev = extract(device, f"dev_{label}")
        np.testing.assert_array_equal(cpu["offsets"][:], dev["offsets"][:])
        result["runs"][label] = {
            "tf32": switches,
            "features": compare_features(cpu, dev),
            "levels": {f: level_agreement(cpu, dev, f) for f in ("k", "v")},
        }
    import torch

    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_allow_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_allow_tf32"]
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.float32_diagnosis", description=__doc__)
    ap.add_argument("--device", default="cuda", help="device compared with the CPU (cuda)")
    ap.add_argument("--images", type=int, default=8, help="demo images (8)")
    ap.add_argument("--long-side", type=int, default=64, help="resize long side (64)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    result = diagnose(args.device, args.images, args.long_side)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
