"""The GPU check: correctness tests marked ``gpu`` and the GPU figures, in one command.

    python -m benchmarks.gpu_check --device cuda --out benchmarks/results/gpu
    python -m benchmarks.gpu_check --device cpu --scale tiny --out /tmp/dry   # dry run

Writes ``<out>/gpu_check.json`` (rewritten after every section, so a run stopped halfway
keeps what it measured) and ``<out>/gpu_check.log``. Sections:

- ``environment``: versions, the GPU, which optional packages import;
- ``tests``: ``pytest -m gpu`` (the k-means engine on CuPy against NumPy, ``extract`` on
  CUDA in bf16 against the CPU in float32, the tiny pipeline on CUDA against the CPU),
  each test's outcome; on a machine without CUDA they skip;
- ``extract``: images/s of ``extract_shard`` against a bare timm ``forward_features`` of the
  same ViT on the same device, same batches, same precision (target >= 0.9);
- ``kmeans_image``: the image level (many ~900 x 384 problems, k = 2) on the device
  against the per-image sklearn loop on the CPU and against our engine on the CPU;
- ``kmeans_dataset``: the streamed dataset level over ``rows`` float16 patches on the
  device against our CPU engine on a tenth of them, scaled by 10;
- ``pipeline``: a synthetic VOC-size demo run (1,449 images) through every stage with
  Snakemake, each stage's time read from Snakemake's ``benchmark:`` files.

``--device cpu`` runs every section on the CPU at whatever ``--scale`` says: a dry run of
the check itself (``tests/test_gpu_check.py`` runs it at ``tiny`` scale).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# sizes per scale: (full, tiny)
SIZES = {
    "extract_images": (512, 4),
    "extract_batch": (64, 2),
    "extract_long_side": (480, 64),
    "image_problems": (1449, 12),
    "image_rows": ((700, 1100), (40, 60)),
    "dim": (384, 32),
    "dataset_rows": (10_000_000, 40_000),
    "dataset_block": (16_384, 4_096),
    "pipeline_images": (1449, 6),
}


def size(name: str, scale: str):
    """The size ``name`` at ``scale``; the environment variable ``GPU_CHECK_<NAME>``
    (e.g. ``GPU_CHECK_DATASET_ROWS=2000000``, ``GPU_CHECK_IMAGE_ROWS=700,1100``) wins, so
    that ``benchmarks/gpu_session.sh`` can fit each section into its time limit."""
    full, tiny = SIZES[name]
    given = os.environ.get(f"GPU_CHECK_{name.upper()}")
    if given:
        values = tuple(int(v) for v in given.split(","))
        return values if isinstance(full, tuple) else values[0]
    return full if scale == "full" else tiny


class Check:
    """Runs sections in order, logging to the console and ``gpu_check.log`` and keeping
    every section's dict (or its error) in ``gpu_check.json``."""

    def __init__(
        self, out: Path, device: str, scale: str, keep: bool = False, budget_s=None, threads=1
    ):
        self.out, self.device, self.scale, self.budget_s = out, device, scale, budget_s
        self.threads = threads
        out.mkdir(parents=True, exist_ok=True)
        self.log_fh = open(out / "gpu_check.log", "a" if keep else "w", buffering=1)
        self.result: dict = {
            "device": device,
            "scale": scale,
            "threads": threads,
            "sections": {},
            "errors": {},
        }
        self.t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_fh.write(line + "\n")

    def section(self, name: str, fn: Callable[[Check], dict]) -> None:
        self.log(f"== {name}")
        t = time.perf_counter()
        try:
            self.result["sections"][name] = fn(self)
        except Exception as exc:  # one broken section must not cost the others
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"
            self.log(traceback.format_exc())
        self.result.setdefault("section_s", {})[name] = time.perf_counter() - t
        self.log(f"   {name}: {json.dumps(self.result['sections'].get(name), default=str)[:600]}")
        self.save()

    def save(self) -> None:
        self.result["total_s"] = time.perf_counter() - self.t0
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=1, default=str))


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        try:
            import cupy

            cupy.cuda.Device().synchronize()
        except ImportError:
            pass


def best_time(fn: Callable[[], object], device: str, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one untimed warm-up, and the last result."""
    out = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# ---------------------------------------------------------------------------------------
# sections


def environment(c: Check) -> dict:
    import torch

    from benchmarks.harness import machine_info

    machine = machine_info()
    info: dict = {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": machine["cpu_model"],
        "cpu_flags": machine["cpu_flags"],
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("numpy", "timm", "sklearn", "scipy", "zarr", "snakemake", "cupy", "cv2"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception as exc:
            info[name] = f"missing ({type(exc).__name__})"
    for name in ("pydensecrf", "pycocotools", "array_api_compat"):
        info[name] = "present" if importlib.util.find_spec(name) else "missing"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        try:
            import cupy

            info["cupy_cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception as exc:
            info["cupy_error"] = str(exc)
    if c.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device")
    return info


def gpu_tests(c: Check) -> dict:
    xml = c.out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={xml}", str(REPO / "tests")]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    c.log(p.stdout[-4000:] + p.stderr[-2000:])
    outcomes: dict[str, dict] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        state, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                state = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (el.get("message") or "")[:500]
        outcomes[name] = {"outcome": state, "seconds": float(case.get("time", 0)), "detail": detail}
    xml.unlink()
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes.values():
        counts[o["outcome"]] += 1
    return {"returncode": p.returncode, "counts": dict(counts), "tests": outcomes}


def extract_speed(c: Check) -> dict:
    import torch

    from benchmarks.bench_extract import _decode_all
    from benchmarks.bench_refine import write_scenes
    from lcseg_steps.data.records import ImageRecord
    from lcseg_steps.perimage.backbone import load_backbone
    from lcseg_steps.stages.extract import extract_shard

    n, batch = size("extract_images", c.scale), size("extract_batch", c.scale)
    long_side = size("extract_long_side", c.scale)
    overrides = {} if c.scale == "full" else {"depth": 2}
    model, info = load_backbone("dino_vits16", "random", overrides=overrides)
    h, w = 375, 500  # a typical VOC image
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_extract_"))
    paths = [p for p, _, _ in write_scenes(tmp / "images", min(n, 32), h, w, seed=1)]
    paths = [paths[i % len(paths)] for i in range(n)]  # decoding is per file read anyway
    records = [ImageRecord(f"img_{i:05d}", str(p), "", h, w) for i, p in enumerate(paths)]
    inputs = _decode_all(paths, info.patch_size, long_side)
    batches = [torch.from_numpy(np.stack(inputs[i : i + batch])) for i in range(0, n, batch)]
    bf16 = c.device == "cuda"
    precision = "bfloat16" if bf16 else "float32"
    workers = min(8, max(0, (os.cpu_count() or 2) - 2)) if c.device == "cuda" else 0
    dev = torch.device(c.device)

    def ours():
        return extract_shard(
            records,
            model,
            info,
            tmp / "features.zarr",
            long_side=long_side,
            batch_size=batch,
            num_workers=workers,
            device=c.device,
            precision=precision,
            log=lambda _m: None,
        )

    def bare():
        model.to(dev)
        with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            return [model.forward_features(x.to(dev, non_blocking=True)) for x in batches]

    t_ours, _ = best_time(ours, c.device)
    t_bare, _ = best_time(bare, c.device)
    out = {
        "images": n,
        "input_hw": list(inputs[0].shape[1:]),
        "batch_size": batch,
        "num_workers": workers,
        "precision": precision,
        "backbone": info.timm_name,
        "ours_images_per_s": n / t_ours,
        "bare_images_per_s": n / t_bare,
        "ratio": t_bare / t_ours,
        "target": 0.9,
    }
    out["meets"] = out["ratio"] >= 0.9
    return out


def _image_problems(rng, P: int, rows: tuple[int, int], D: int):
    """``P`` images of two noisy directions each: ``X`` (N, D) float16, offsets, init
    (P, 2, D) (each image's first two rows, as a fixed start both sides share)."""
    sizes = rng.integers(rows[0], rows[1], P)
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    X = np.empty((int(off[-1]), D), np.float16)
    for i in range(P):
        centres = rng.standard_normal((2, D))
        which = rng.integers(0, 2, sizes[i])
        X[off[i] : off[i + 1]] = centres[which] + 1.5 * rng.standard_normal((sizes[i], D))
    init = np.stack([X[off[i] : off[i] + 2] for i in range(P)]).astype(np.float32)
    return X, off, init


def kmeans_image(c: Check) -> dict:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from lcseg_steps.clustering.kmeans import kmeans_ranges

    rng = np.random.default_rng(0)
    P, D = size("image_problems", c.scale), size("dim", c.scale)
    X, off, init = _image_problems(rng, P, size("image_rows", c.scale), D)
    kw = {"offsets": off, "init": init, "max_iter": 10, "tol": 0.0}
    t_dev, dev = best_time(lambda: kmeans_ranges(X, 2, device=c.device, **kw), c.device)
    t_cpu, cpu = best_time(
        lambda: kmeans_ranges(X, 2, device="cpu", threads=c.threads, **kw), "cpu", repeats=1
    )

    def sklearn_loop():
        for i in range(P):
            rows = X[off[i] : off[i + 1]].astype(np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            c0 = init[i] / np.linalg.norm(init[i], axis=1, keepdims=True)
            KMeans(2, init=c0, n_init=1, max_iter=10, tol=0.0).fit(rows)

    with threadpool_limits(c.threads):
        t_sk, _ = best_time(sklearn_loop, "cpu", repeats=1)
    same = float(np.mean(dev.labels == cpu.labels))
    rel = np.abs(dev.objective - cpu.objective) / np.maximum(np.abs(cpu.objective), 1e-12)
    return {
        "problems": P,
        "rows": int(off[-1]),
        "dim": D,
        "device_s": t_dev,
        "cpu_engine_s": t_cpu,
        "cpu_engine_threads": c.threads,
        "sklearn_cpu_loop_s": t_sk,
        "sklearn_threads": c.threads,
        "speedup_vs_sklearn": t_sk / t_dev,
        "speedup_vs_cpu_engine": t_cpu / t_dev,
        "labels_equal_fraction": same,
        "objective_max_rel_diff": float(rel.max()),
    }


def kmeans_dataset(c: Check) -> dict:
    from lcseg_steps.clustering.kmeans import kmeans_stream

    n, block, D = (size(k, c.scale) for k in ("dataset_rows", "dataset_block", "dim"))
    n = n // block * block
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((16, D)).astype(np.float32)
    base = centres[rng.integers(0, 16, block)] + 1.2 * rng.standard_normal((block, D))
    base = base.astype(np.float16)
    c.log(f"   building {n:,} x {D} float16 rows")
    X = np.empty((n, D), np.float16)
    for i in range(n // block):  # column rotations of one block: distinct rows, cheap to make
        X[i * block : (i + 1) * block] = np.roll(base, i, axis=1)
    threads = c.threads
    kw = {"init_sample": 200_000, "max_iter": 10, "tol": 0.0, "seed": 0}

    def fit(rows: int, device: str):
        def blocks():
            return (X[s : s + block] for s in range(0, rows, block))

        t = time.perf_counter()
        r = kmeans_stream(blocks, 8, device=device, threads=threads, **kw)
        _sync(device)
        return time.perf_counter() - t, r

    fit(min(n, 4 * block), c.device)  # warm-up: kernels, CuPy's memory pool
    t_dev, r_dev = fit(n, c.device)
    cpu_rows = max(block, n // 10 // block * block)
    t_cpu, r_cpu = fit(cpu_rows, "cpu")
    scaled = t_cpu * n / cpu_rows
    return {
        "rows": n,
        "dim": D,
        "k": 8,
        "device_s": t_dev,
        "device_passes": r_dev.n_iter + 1,
        "device_rows_per_s": n * (r_dev.n_iter + 1) / t_dev,
        "cpu_rows": cpu_rows,
        "cpu_threads": threads,
        "cpu_s": t_cpu,
        "cpu_s_scaled_to_rows": scaled,
        "speedup_vs_cpu_scaled": scaled / t_dev,
        "device_objective": r_dev.objective,
    }


def pipeline(c: Check) -> dict:
    import yaml

    if importlib.util.find_spec("snakemake") is None:
        return {"skipped": "snakemake is not importable here"}
    crf = importlib.util.find_spec("pydensecrf") is not None
    n = size("pipeline_images", c.scale)
    full = c.scale == "full"
    cfg = {
        "run": "gpu_check",
        "dataset": {
            "name": "demo",
            "demo": {"n_images": n, "seed": 0, "min_size": 300, "max_size": 500},
        },
        "shard_size": 256 if full else 4,
        "backbone": {"name": "dino_vits16", "weights": "random"},
        "extract": {
            "device": c.device,
            "batch_size": 64 if full else 4,
            "num_workers": 6 if full else 0,
            "long_side": 480 if full else 64,
        },
        "clustering": {"device": c.device, "n_categories": 20 if full else 2},
        "refine": {"crf": crf},
        "labels": {"n_classes": 4 if full else 2, "n_neighbors": 10 if full else 3},
        "objects": {"long_side": 224 if full else 32, "min_region_area": 0.0},
        "report": {"gallery": 3},
    }
    if not full:
        cfg["backbone"]["overrides"] = {"depth": 2, "embed_dim": 48, "num_heads": 2}
    wd = Path(tempfile.mkdtemp(prefix="gpu_check_pipeline_"))
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    cores = os.cpu_count() or 2
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory"]
    cmd += [str(wd), "--configfile", str(wd / "config.yaml"), "--cores", str(cores)]
    cmd += ["--resources", "gpu=1"]
    if os.environ.get("GPU_CHECK_PIPELINE_DRY_RUN") == "1":  # the session script's CPU mode
        p = subprocess.run([*cmd, "-n", "--quiet", "rules"], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"snakemake -n failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return {"dry_run": True, "images": n, "plan": (p.stdout + p.stderr)[-3000:]}
    limit = max(30.0, c.budget_s - (time.perf_counter() - c.t0)) if c.budget_s else 900.0
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        stopped = None
    except subprocess.TimeoutExpired:  # report the stages that finished
        p, stopped = None, f"stopped after {limit:.0f} s (--budget-s): partial figures"
    wall = time.perf_counter() - t
    if p is not None and p.returncode != 0:
        raise RuntimeError(f"snakemake failed ({p.returncode}):\n{p.stderr[-3000:]}")
    stages: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "s": 0.0, "max_rss_mb": 0.0})
    for tsv in (wd / "results/gpu_check/logs").rglob("benchmarks/**/*.tsv"):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        for row in csv.DictReader(tsv.open(), delimiter="\t"):
            st = stages[rule]
            st["jobs"] += 1
            st["s"] += float(row["s"])
            rss = row.get("max_rss", "NA")
            st["max_rss_mb"] = max(st["max_rss_mb"], float(rss) if rss != "NA" else 0.0)
    metrics_json = wd / "results/gpu_check/seed0/metrics.json"
    metrics = json.loads(metrics_json.read_text()) if metrics_json.is_file() else {}
    return {
        "complete": stopped is None,
        "stopped": stopped,
        "images": n,
        "cores": cores,
        "crf": crf if crf else "skipped: pydensecrf does not import here",
        "wall_s": wall,
        "stages": dict(stages),
        "miou": metrics.get("miou"),
        "note": "random ViT weights: mIoU measures nothing here; times are the point",
    }


SECTIONS: dict[str, Callable[[Check], dict]] = {
    "environment": environment,
    "tests": gpu_tests,
    "extract": extract_speed,
    "kmeans_image": kmeans_image,
    "kmeans_dataset": kmeans_dataset,
    "pipeline": pipeline,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--scale", choices=("full", "tiny"), default=None, help="full on cuda")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/gpu")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop the pipeline run this many seconds after the check began (partial figures)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the other sections of an existing JSON in --out"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the CPU sides (default: the cores this job may use)",
    )
    args = ap.parse_args(argv)
    from benchmarks.harness import default_threads

    threads = args.threads or default_threads()
    scale = args.scale or ("full" if args.device == "cuda" else "tiny")
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    c = Check(args.out, args.device, scale, args.keep, args.budget_s, threads)
    if args.keep and (args.out / "gpu_check.json").is_file():
        old = json.loads((args.out / "gpu_check.json").read_text())
        for key in ("sections", "errors", "section_s"):
            kept = {s: v for s, v in old.get(key, {}).items() if s not in chosen}
            c.result[key] = {**kept, **c.result.get(key, {})}
    for name in chosen:
        c.section(name, SECTIONS[name])
    c.log(f"wrote {args.out / 'gpu_check.json'}; errors: {c.result['errors'] or 'none'}")
    failed = c.result["sections"].get("tests", {}).get("counts", {}).get("failed", 0)
    return 1 if c.result["errors"] or failed else 0


if __name__ == "__main__":
    sys.exit(main())
