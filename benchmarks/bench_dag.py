"""Snakemake DAG build (``snakemake -n``) on a COCO-train-sized index, against a 10 s budget.

A fake COCO layout is written to a scratch folder: ``annotations/instances_train2017.json``
with 118,287 image entries (ids, file names, sizes), no annotations and COCO's 80 category
ids, and an empty ``train2017/`` folder. ``list_images`` reads only the listing, never the
image files, so the dry run builds the whole DAG (463 shards of 256 images at the default
shard size -> one job per shard for every per-shard stage) without any pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.harness import Context, Result, time_call

REPO = Path(__file__).resolve().parent.parent
COCO_TRAIN_IMAGES = 118_287
# COCO's 80 thing category ids (1..90 with gaps)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
BUDGET_S = 10.0


def fake_coco(root: Path, n_images: int, split: str = "train2017") -> Path:
    """Write the listing of a COCO split with ``n_images`` images (no pixels, no annotations)."""
    rng_sizes = [(480, 640), (427, 640), (640, 480), (375, 500)]
    images = [
        {
            "id": i,
            "file_name": f"{i:012d}.jpg",
            "height": rng_sizes[i % 4][0],
            "width": rng_sizes[i % 4][1],
        }
        for i in range(1, n_images + 1)
    ]
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
    (root / split).mkdir(parents=True, exist_ok=True)
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(
        json.dumps({"info": {}, "images": images, "annotations": [], "categories": cats})
    )
    return ann


def job_counts(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    jobs, on = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            on = True
        elif on and line.strip() and not line.startswith(("job", "---")):
            parts = line.split()
            if parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                jobs[parts[0]] = int(parts[1])
    return jobs


def run(ctx: Context) -> list[Result]:
    n = ctx.pick(COCO_TRAIN_IMAGES, COCO_TRAIN_IMAGES, 2000)
    shard_size = 256
    root = ctx.tmp / "coco"
    fake_coco(root, n)
    cfg = ctx.tmp / "config.yaml"
    config = {
        "run": "dag",
        "dataset": {"name": "coco", "root": str(root), "split": "train2017"},
        "shard_size": shard_size,
        "backbone": {"weights": "random"},
        "labels": {"n_classes": 80},
    }
    cfg.write_text(yaml.safe_dump(config))
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    cmd = [snakemake, "-n", "-s", str(REPO / "Snakefile"), "--directory", str(ctx.tmp / "wd")]
    cmd += ["--configfile", str(cfg), "--cores", "2"]

    def dry_run(*extra: str) -> str:
        p = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"snakemake -n failed:\n{p.stderr[-3000:]}")
        return p.stdout + p.stderr

    # a dry run takes ~15 s here: quick mode times one run without a warm-up
    warm = ctx.scale == "full"
    runs = ctx.repeats if warm else 1
    if warm:
        dry_run()
    times, out = [], ""
    for _ in range(runs):
        t, out = time_call(dry_run)
        times.append(t)
        ctx.log(f"  snakemake -n: {t:.2f}s")
    times.sort()
    median = times[len(times) // 2]
    jobs = job_counts(out)
    extra = {"jobs": jobs, "total_jobs": sum(jobs.values()), "runs_s": times, "warmup": warm}

    # where the time goes: the listing alone, and interpreter + snakemake start-up
    if ctx.scale != "tiny":
        from lcseg_steps.data.index import list_images

        t0 = time.perf_counter()
        list_images(config["dataset"])
        extra["list_images_s"] = time.perf_counter() - t0
        extra["snakemake_version_s"], _ = time_call(
            lambda: subprocess.run([snakemake, "--version"], capture_output=True, check=True)
        )
        extra["dry_run_quiet_s"], _ = time_call(lambda: dry_run("--quiet", "all"))
    return [
        Result(
            name="dag",
            kind="absolute",
            ours_s=median,
            reference_s=BUDGET_S,
            target=1.0,
            runs=runs,
            sizes={"images": n, "shard_size": shard_size, "shards": -(-n // shard_size)},
            extra=extra,
        )
    ]
