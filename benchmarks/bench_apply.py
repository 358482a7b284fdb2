"""Segmenting new images with a fitted model: ``snakemake apply`` against the extract stage
alone on the same images, and ``load_model(...).segment`` against one forward pass.

A demo run (the pipeline benchmark's config, its own scratch folder) is fitted first, and
its ``model.zarr`` is applied to a folder of new demo images (another generator seed).

- ``apply``: ours is the wall time of ``snakemake apply --cores 2`` on the folder (every
  stage from index to report); the reference, the floor, is ``extract_shard`` alone on the
  same images with the same backbone settings in this process. Kind "speedup": ratio =
  floor / ours = the share of extraction's speed that apply keeps, target >= 0.5.
- ``segment``: ours is one ``segment(image)`` call with the CRF off (median over the
  repeats, the backbone already built); the reference one ``forward_features`` of the same
  backbone on the same input. Target: ratio >= 1/3 (segment at most 3 forward passes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import torch
import yaml

from benchmarks.bench_extract import extract_on_cpu
from benchmarks.bench_pipeline import REPO, _config
from benchmarks.harness import Context, Result, interleaved, time_call


def _timed_run(cmd: list[str], what: str) -> float:
    """Wall seconds of the command ``cmd``; its stderr's tail in the error if it fails."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{p.stderr[-3000:]}")
    return seconds


def _fit(ctx: Context, snakemake: str) -> tuple[dict, object]:
    cfg = _config(ctx)
    wd = ctx.tmp / "fit"
    wd.mkdir()
    (ctx.tmp / "fit.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(wd)]
    cmd += ["--configfile", str(ctx.tmp / "fit.yaml"), "--cores", "2", "-q"]
    _timed_run(cmd, "the fitting run")
    return cfg, wd


def run(ctx: Context) -> list[Result]:
    from lcseg_steps.apply.model_zarr import load_model
    from lcseg_steps.data.demo import generate_demo
    from lcseg_steps.data.image_table import ImageRecord
    from lcseg_steps.data.images import read_rgb
    from lcseg_steps.perimage.qkv import autocast, backbone_input

    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    cfg, wd = _fit(ctx, snakemake)
    model_path = wd / "results" / cfg["run"] / "seed0" / "model.zarr"
    n_new = ctx.pick(256, 32, 4)
    new = ctx.tmp / "new"
    generate_demo(new, n_images=n_new, seed=7, log=lambda _m: None)
    images = sorted(p for p in (new / "JPEGImages").iterdir() if p.suffix == ".jpg")
    ctx.log(f"apply: model of {cfg['dataset']['demo']['n_images']} images, {n_new} new ones")

    apply_cfg = {"apply": {"model": str(model_path), "images": str(new / "JPEGImages")}}
    (ctx.tmp / "apply.yaml").write_text(yaml.safe_dump(apply_cfg))
    cmd = [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(wd), "apply"]
    cmd += ["--configfile", str(ctx.tmp / "fit.yaml"), str(ctx.tmp / "apply.yaml")]
    cmd += ["--cores", "2", "-q"]
    apply_s = _timed_run(cmd, "snakemake apply")

    model = load_model(model_path)
    backbone, info = model.load_backbone()
    a = model.attrs
    torch.set_num_threads(2)  # what the extract rule gets
    records = [ImageRecord(p.stem, str(p), "", *read_rgb(p).shape[:2]) for p in images]
    ex = cfg["extract"]
    t0 = time.perf_counter()
    extract_on_cpu(
        records,
        backbone,
        info,
        ctx.tmp / "floor.zarr",
        long_side=ex["long_side"],
        batch=ex["batch_size"],
        precision=a["precision"],
        layer=a["layer"],
    )
    floor_s = time.perf_counter() - t0

    img = read_rgb(images[0])
    model.attrs["refine"] = {**a["refine"], "crf": False}
    x = torch.from_numpy(backbone_input(img, a["patch_size"], a["long_side"])[None])

    def forward():
        with torch.inference_mode(), autocast(torch.device("cpu"), a["precision"] == "bfloat16"):
            return backbone.forward_features(x)

    model.segment(img)  # builds what the first call builds once
    t = interleaved(lambda: model.segment(img), forward, ctx.repeats, log=ctx.log)
    return [
        Result(
            name="apply",
            kind="speedup",
            ours_s=apply_s,
            reference_s=floor_s,
            target=0.5,
            runs=1,
            sizes={"new_images": n_new, "long_side": ex["long_side"]},
            extra={
                "apply_images_per_s": n_new / apply_s,
                "extract_floor_images_per_s": n_new / floor_s,
                "precision": a["precision"],
            },
        ),
        Result(
            name="segment",
            kind="speedup",
            ours_s=t.ours_s,
            reference_s=t.reference_s,
            target=1 / 3,
            runs=ctx.repeats,
            sizes={"image_hw": list(img.shape[:2]), "input_hw": list(x.shape[2:])},
            extra={"crf": False, "precision": a["precision"], **t.summary()},
        ),
    ]


PHOTO_WH = (800, 600)


def _recorded_crops(model, folder) -> list[list[np.ndarray]]:
    """The region crops each image of ``folder`` sends through the backbone when
    segmented (``crop_cls_descriptors``' inputs, one list per image with regions), found
    by segmenting the folder in this process."""
    from lcseg_steps.apply.segment_paths import default_jobs, plan, segment_all
    from lcseg_steps.perimage import descriptors

    crops: list[list[np.ndarray]] = []
    real = descriptors.crop_cls_descriptors

    def record(model_, info, crops_, **kw):
        crops.append(list(crops_))
        return real(model_, info, crops_, **kw)

    descriptors.crop_cls_descriptors = record
    try:
        items, _ = plan([str(folder)])
        segment_all(model, items, lambda _i, _s: None, jobs=default_jobs(), log=lambda _m: None)
    finally:
        descriptors.crop_cls_descriptors = real
    return crops


def run_folder(ctx: Context) -> list[Result]:
    """``segment_folder``: ``lcseg segment`` on a folder of new images, as a user runs it
    (a fresh process: start-up, loading the model, decoding, every step, writing the
    PNGs), against the floor of the same images' forward passes alone (the backbone built,
    inputs prepared, batches of 8, in this process). The images are demo images brought to
    one size, ``PHOTO_WH``, as a camera's photos are. Kind "overhead": ratio = ours /
    floor, target <= 2.

    Two results: ``segment_folder`` against the images' own forward passes (the issue's
    floor) and ``segment_folder_all_forwards`` against every forward pass the
    segmentation needs: those plus the region crops' CLS passes (``crop_cls_descriptors``
    on the crops each image sends, recorded by segmenting the folder here). Ours is the
    command with its default ``--jobs`` (the CRF in worker processes); ``extra`` also
    holds ``--jobs 1`` (one process, one image after another) and both ratios of each."""
    from lcseg_steps.apply.model_zarr import load_model
    from lcseg_steps.apply.segment_paths import default_jobs
    from lcseg_steps.data.demo import generate_demo
    from lcseg_steps.data.images import read_rgb
    from lcseg_steps.perimage.descriptors import crop_cls_descriptors
    from lcseg_steps.perimage.qkv import autocast, backbone_input, equal_shape_runs

    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    cfg, wd = _fit(ctx, snakemake)
    model_path = wd / "results" / cfg["run"] / "seed0" / "model.zarr"
    n_new = ctx.pick(100, 24, 3)
    generate_demo(ctx.tmp / "demo", n_images=n_new, seed=11, log=lambda _m: None)
    # photos of one camera: one size (a backbone input shape is compiled once per size)
    folder = ctx.tmp / "photos"
    folder.mkdir()
    for src in sorted((ctx.tmp / "demo" / "JPEGImages").glob("*.jpg")):
        img = cv2.resize(cv2.imread(str(src)), PHOTO_WH, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / src.name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    lcseg = os.path.join(os.path.dirname(sys.executable), "lcseg")
    jobs = default_jobs()
    seconds, pngs = {}, {}
    for j in (jobs, 1):
        out = ctx.tmp / f"out_jobs{j}"
        cmd = [lcseg, "segment", "--model", str(model_path), str(folder), "-o", str(out)]
        seconds[j] = _timed_run([*cmd, "--jobs", str(j)], f"lcseg segment --jobs {j}")
        pngs[j] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
        ctx.log(f"segment_folder: --jobs {j} {seconds[j]:.1f}s")
    if pngs[jobs] != pngs[1]:
        raise RuntimeError(f"lcseg segment --jobs {jobs} wrote other PNGs than --jobs 1")

    model = load_model(model_path)
    backbone, info = model.load_backbone()
    a = model.attrs
    torch.set_num_threads(ctx.threads)
    bf16 = a["precision"] == "bfloat16"
    xs = [
        backbone_input(read_rgb(f), a["patch_size"], a["long_side"])
        for f in sorted(folder.glob("*.jpg"))
    ]
    crops = _recorded_crops(model, folder)
    o = a["objects"]

    def forwards() -> None:
        with torch.inference_mode(), autocast(torch.device("cpu"), bf16):
            # the batches lcseg segment runs (its default --batch-size 8)
            for i, j in equal_shape_runs([x.shape for x in xs], 8):
                backbone.forward_features(torch.from_numpy(np.stack(xs[i:j])))

    def crop_forwards() -> None:
        for c in crops:  # per image, as Model.segment sends them
            crop_cls_descriptors(
                backbone,
                info,
                c,
                long_side=o["long_side"],
                batch_size=o["batch_size"],
                bf16=bf16,
            )

    forwards()  # warm-up
    floor_s = min(time_call(forwards)[0] for _ in range(ctx.repeats))
    crop_forwards()
    crops_s = min(time_call(crop_forwards)[0] for _ in range(ctx.repeats))
    all_s = floor_s + crops_s
    sizes = {
        "images": n_new,
        "image_wh": list(PHOTO_WH),
        "long_side": a["long_side"],
        "backbone": cfg["backbone"],
    }
    extra = {
        "precision": a["precision"],
        "jobs": jobs,
        "images_per_s": n_new / seconds[jobs],
        "forward_s_per_image": floor_s / n_new,
        "crop_forwards_s": crops_s,
        "crops": sum(len(c) for c in crops),
        "all_forwards_s": all_s,
        "jobs1_s": seconds[1],
        "jobs1_ratio_image_forwards": seconds[1] / floor_s,
        "jobs1_ratio_all_forwards": seconds[1] / all_s,
        "pngs_equal_to_jobs1": True,
    }
    return [
        Result(
            name="segment_folder",
            kind="overhead",
            ours_s=seconds[jobs],
            reference_s=floor_s,
            target=2.0,
            runs=1,
            sizes=sizes,
            extra={**extra, "ratio_all_forwards": seconds[jobs] / all_s},
        ),
        Result(
            name="segment_folder_all_forwards",
            kind="overhead",
            ours_s=seconds[jobs],
            reference_s=all_s,
            target=2.0,
            runs=1,
            sizes=sizes,
            extra={**extra, "ratio_image_forwards": seconds[jobs] / floor_s},
        ),
    ]
