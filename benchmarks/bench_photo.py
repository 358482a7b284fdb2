"""Work per image against megapixels: the same photo at 6000x4500 (27 MP) and resized to
600x450, segmented by ``lcseg segment`` and by ``snakemake apply`` (issue 27).

The photo is synthetic and photo-like (smooth colour gradients, a few shapes, pixel noise;
JPEG quality 90), drawn at the large size and resized (``INTER_AREA``) to the small one.
The model is a random-weight one built here (``write_model``: a 2-block ViT-S/16 of
width 48 at the default long side 480, random dataset centroids, the schema's default
image level, refine and objects settings): what both sizes share (the forward pass at
480 px, model loading, start-up) cancels in the difference, which is what the issue
bounds.

- ``photo_segment``: ``lcseg segment`` (``lcseg_steps.cli.main``, the same call as the
  command) on one photo in a fresh process per run, after a warm-up call on a small image
  in that process; ours is the large photo, the reference the small one. Kind
  "absolute": the budget is the small photo's time + 2 s, so ratio >= 1 meets the
  target. ``extra`` holds both peaks (``VmHWM`` after the warm-up, reset by
  ``clear_refs``), their difference against the 300 MB target, and the times.
- ``photo_apply``: ``snakemake apply --cores 2`` on a folder holding the one photo, every
  stage from index to report, large against small, interleaved, median of the repeats;
  the budget and peak difference as above, the peak being the largest ``max_rss`` any of
  the rules' benchmark files records (``extra`` also holds the largest peak RSS of any
  process of the run, and the seconds the rules themselves took).
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Context, Result, run_child, schema_defaults

TARGET_S = 2.0  # the large photo may take at most this much longer ...
TARGET_MB = 300.0  # ... and peak at most this much higher than the small one
OVERRIDES = {"depth": 2, "embed_dim": 48, "num_heads": 2}
REPO = Path(__file__).resolve().parents[1]


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like ``(height, width, 3)`` uint8 RGB image, built without float copies."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    s = min(height, width)
    for _ in range(6):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, centre, int(s * rng.uniform(0.05, 0.25)), colour, -1, cv2.LINE_AA)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(s * rng.uniform(0.1, 0.4)), int(s * rng.uniform(0.1, 0.4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), colour, -1)
    noise = rng.integers(0, 17, img.shape, dtype=np.uint8)
    cv2.add(img, noise, dst=img)
    cv2.subtract(img, np.full(3, 8.0), dst=img)
    return img


def write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    path.write_bytes(buf.tobytes())
    return path


def build_model(out: Path, n_classes: int = 4, seed: int = 0) -> Path:
    """A random-weight ``model.zarr`` with the schema's per-image settings."""
    from lcseg_steps.apply.model_zarr import write_model
    from lcseg_steps.perimage.backbone import load_backbone
    from lcseg_steps.perimage.qkv import qkv_dim

    model, info = load_backbone(
        "vit_small_patch16_224", "random", seed=seed, overrides=OVERRIDES, device="cpu"
    )
    dim = qkv_dim(model, -1)
    cl, refine, objects = (schema_defaults(s) for s in ("clustering", "refine", "objects"))
    rng = np.random.default_rng(seed)
    attrs = {
        "stage": "model",
        "run": "photo_bench",
        "seed": seed,
        "n_images": 0,
        "backbone": {
            "name": "vit_small_patch16_224",
            "weights": info.weights,
            "seed": seed,
            "overrides": OVERRIDES,
        },
        "layer": -1,
        "patch_size": int(info.patch_size),
        "long_side": schema_defaults("extract")["long_side"],
        "precision": "float32",
        "qkv_dim": dim,
        "feature": "k",
        "device": "cpu",
        "image_level": {
            **{k: cl[k] for k in ("image_clusterer", "k_image", "fg_rule", "max_iter", "tol")},
            "device": "cpu",
            "seed": seed,
        },
        "merge": {"levels": ["dataset", "image"], "consistency": "union", "min_levels": 1},
        "refine": refine,
        "objects": {**objects, "min_region_area": 0.0},
        "n_classes": n_classes,
        "class_names": None,
    }
    arrays = {
        "dataset_centroids": rng.standard_normal((8, dim)).astype(np.float32),
        "dataset_fg": np.arange(8) % 2 == 0,
        "class_prototypes": rng.standard_normal((n_classes, int(info.embed_dim))).astype(
            np.float32
        ),
    }
    return write_model(out, arrays, attrs)


def segment_child(model: str, image: str, warmup: str, out: str) -> dict:
    """One ``lcseg segment`` call, after a warm-up call in this process; its wall time
    and this process' peak RSS from just before it."""
    from benchmarks.harness import peak_rss_mb, reset_peak_rss, rss_mb
    from lcseg_steps.cli import main

    if main(["segment", "--model", model, warmup, "-o", out]) != 0:
        raise RuntimeError("warm-up segment failed")
    reset_ok = reset_peak_rss()
    before = rss_mb()
    t0 = time.perf_counter()
    if main(["segment", "--model", model, image, "-o", out]) != 0:
        raise RuntimeError(f"segment of {image} failed")
    return {
        "s": time.perf_counter() - t0,
        "peak_mb": peak_rss_mb(),
        "rss_before_mb": before,
        "reset": reset_ok,
    }


# runs a command and prints the largest peak RSS (kB) of any process under it: getrusage's
# RUSAGE_CHILDREN of a fresh, small process (Snakemake, each rule's script, the report)
_PEAK_OF_TREE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('@@PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(r.returncode)"
)


def _apply(ctx: Context, model: Path, folder: Path, name: str, tag: str) -> dict[str, float]:
    """``snakemake apply`` on ``folder``: its wall seconds (``s``), the seconds its rules'
    benchmark files add up to (``rules_s``, without Snakemake's own work between jobs),
    their largest ``max_rss`` (``peak_mb``) and the largest peak RSS of any of its
    processes (``tree_peak_mb``: Snakemake itself and the rules without a benchmark file,
    the report, included)."""
    import yaml

    wd = ctx.tmp / f"wd_{tag}"
    wd.mkdir()
    cfg = {
        "run": "photo_fit",
        "backbone": {"name": "vit_small_patch16_224", "weights": "random", "overrides": OVERRIDES},
        "extract": {"batch_size": 1, "num_workers": 0},
        "objects": {"min_region_area": 0.0},
        "report": {"gallery": 1},
        "apply": {"model": str(model), "images": str(folder), "name": name},
    }
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    cmd = [sys.executable, "-c", _PEAK_OF_TREE]
    cmd += [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(wd), "apply"]
    cmd += ["--configfile", str(wd / "config.yaml"), "--cores", "2", "-q"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"snakemake apply failed:\n{p.stderr[-3000:]}")
    tree_kb = [ln.split()[1] for ln in p.stderr.splitlines() if ln.startswith("@@PEAK_KB")]
    peak, rules_s = 0.0, 0.0
    for tsv in wd.rglob("logs/**/*.tsv"):
        with open(tsv) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                try:
                    peak = max(peak, float(row["max_rss"]))
                    rules_s += float(row["s"])
                except (KeyError, ValueError):
                    pass
    return {
        "s": wall,
        "rules_s": rules_s,
        "peak_mb": peak,
        "tree_peak_mb": float(tree_kb[-1]) / 1024 if tree_kb else float("nan"),
    }


def _budget_result(
    name: str,
    seconds: dict[str, float],
    peak_mb: dict[str, float],
    runs_s: dict[str, list[float]],
    ctx: Context,
    sizes: dict,
    **extra,
) -> Result:
    """The large photo against the small one (``seconds``, ``peak_mb``: ``"large"`` and
    ``"small"``): time as an absolute result whose budget is the small photo's time plus
    ``TARGET_S``, the memory budget ``TARGET_MB`` in the extras with ``extra``."""
    return Result(
        name=name,
        kind="absolute",
        ours_s=seconds["large"],
        reference_s=seconds["small"] + TARGET_S,
        target=1.0,
        runs=ctx.repeats,
        sizes=sizes,
        extra={
            "small_s": seconds["small"],
            "extra_s": seconds["large"] - seconds["small"],
            "target_extra_s": TARGET_S,
            "large_peak_rss_mb": peak_mb["large"],
            "small_peak_rss_mb": peak_mb["small"],
            "extra_peak_mb": peak_mb["large"] - peak_mb["small"],
            "target_extra_mb": TARGET_MB,
            "meets_memory": bool(peak_mb["large"] - peak_mb["small"] <= TARGET_MB),
            "large_runs_s": runs_s["large"],
            "small_runs_s": runs_s["small"],
            **extra,
        },
    )


def run(ctx: Context) -> list[Result]:
    import cv2

    large_hw = ctx.pick((4500, 6000), (2250, 3000), (900, 1200))
    small_hw = (large_hw[0] // 10, large_hw[1] // 10)
    big = photo(*large_hw)
    paths = {
        "large": write_jpeg(ctx.tmp / "large" / "photo.jpg", big),
        "small": write_jpeg(
            ctx.tmp / "small" / "photo.jpg",
            cv2.resize(big, small_hw[::-1], interpolation=cv2.INTER_AREA),
        ),
    }
    del big
    warmup = write_jpeg(ctx.tmp / "warmup.jpg", photo(120, 160, seed=1))
    model = build_model(ctx.tmp / "model.zarr")
    ctx.log(f"photo: {large_hw[1]}x{large_hw[0]} against {small_hw[1]}x{small_hw[0]}")

    runs: dict[str, list[dict]] = {"large": [], "small": []}
    for _ in range(ctx.repeats):  # interleaved, a fresh process each
        for side in ("large", "small"):
            runs[side].append(
                run_child(
                    "benchmarks.bench_photo:segment_child",
                    {
                        "model": str(model),
                        "image": str(paths[side]),
                        "warmup": str(warmup),
                        "out": str(ctx.tmp / f"pred_{side}"),
                    },
                )
            )
    t = {s: statistics.median(r["s"] for r in runs[s]) for s in runs}
    peak = {s: max(r["peak_mb"] for r in runs[s]) for s in runs}
    sizes = {"large_hw": list(large_hw), "small_hw": list(small_hw), "long_side": 480}
    refine = schema_defaults("refine")
    results = [
        _budget_result(
            "photo_segment",
            t,
            peak,
            {side: [r["s"] for r in runs[side]] for side in runs},
            ctx,
            sizes,
            max_side=refine["max_side"],
        )
    ]
    aps: dict[str, list[dict]] = {"small": [], "large": []}
    for k in range(ctx.repeats):  # interleaved, a fresh working folder each
        for side in ("small", "large"):
            a = _apply(ctx, model, paths[side].parent, side, f"{side}{k}")
            aps[side].append(a)
            ctx.log(
                f"photo: apply {side} {a['s']:.1f}s (rules {a['rules_s']:.1f}s), rules' peak "
                f"{a['peak_mb']:.0f} MB, any process' peak {a['tree_peak_mb']:.0f} MB"
            )
    ap = {
        side: {
            "s": statistics.median(a["s"] for a in runs),
            "rules_s": statistics.median(a["rules_s"] for a in runs),
            "peak_mb": max(a["peak_mb"] for a in runs),
            "tree_peak_mb": max(a["tree_peak_mb"] for a in runs),
        }
        for side, runs in aps.items()
    }
    tree_peak = {k: v["tree_peak_mb"] for k, v in ap.items()}
    results.append(
        _budget_result(
            "photo_apply",
            {k: v["s"] for k, v in ap.items()},
            {k: v["peak_mb"] for k, v in ap.items()},
            {side: [a["s"] for a in aps[side]] for side in aps},
            ctx,
            sizes,
            large_rules_s=ap["large"]["rules_s"],
            small_rules_s=ap["small"]["rules_s"],
            extra_rules_s=ap["large"]["rules_s"] - ap["small"]["rules_s"],
            large_any_process_peak_mb=tree_peak["large"],
            small_any_process_peak_mb=tree_peak["small"],
            extra_any_process_peak_mb=tree_peak["large"] - tree_peak["small"],
            max_side=refine["max_side"],
        )
    )
    return results
