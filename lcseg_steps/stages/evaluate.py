"""Stage ``evaluate``: scoring of the semantic maps of one seed against ground truth,
``semantic/{shard}.zarr`` -> ``metrics.json``, ``per_class_iou.png`` and ``confusion.png``.

One pass over the images fills a ``protocols.ProtocolAccumulator``: lcseg's own confusion
(``scoring``), from which the headline ``miou`` comes (Hungarian on matched pixels, or
majority with ``evaluate.matching: majority``), and every peer's protocol (DSM, CAUSE,
STEGO, DiffCut), written as metrics.json's ``protocols`` object.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.data.image_table import (
    ImageRecord,
    load_ground_truth,
    n_images_skipped,
    read_index,
    read_skipped,
)
from lcseg_steps.data.image_table import class_names as dataset_class_names
from lcseg_steps.data.registry import has_background
from lcseg_steps.evaluation.protocols import HEADLINE, protocol_metrics
from lcseg_steps.evaluation.protocols_scene import protocol_accumulator
from lcseg_steps.evaluation.scoring import json_ready, scores
from lcseg_steps.figures.plots import figure
from lcseg_steps.runner.settings import is_auto, settings_digest
from lcseg_steps.stage_reads import scope_of
from lcseg_steps.stores.layout import extraction_facts, open_store, pixel_map, records_in_order

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def plot_per_class_iou(result: dict, path: str | os.PathLike) -> None:
    """Horizontal bar chart of per-class IoU (absent classes marked) with the mIoU line.

    Args:
        result: a ``scores`` result (``None`` in place of NaN is accepted too).
        path: output PNG path.
    """
    names = result["class_names"]
    ious = [math.nan if v is None else float(v) for v in result["per_class_iou"]]
    n = len(names)
    fig = figure(7.0, max(2.5, 0.3 * n + 1.2))
    ax = fig.add_subplot()
    y = np.arange(n)
    vals = np.nan_to_num(np.asarray(ious, dtype=np.float64), nan=0.0)
    ax.barh(y, vals, color="tab:blue")
    for i, v in enumerate(ious):
        label = "absent" if math.isnan(v) else f"{100 * v:.1f}"
        ax.text(
            min(v, 1.0) + 0.01 if not math.isnan(v) else 0.01, i, label, va="center", fontsize=8
        )
    miou = result.get("miou")
    if miou is not None and not math.isnan(miou):
        ax.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {100 * miou:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    ax.set_title("Per-class IoU after matching")
    fig.savefig(os.fspath(path), format="png")


def plot_confusion(result: dict, path: str | os.PathLike) -> None:
    """Row-normalised matched confusion matrix (gt rows x matched prediction columns).

    Rows are divided by all pixels of the gt class, unmatched ones included, so a row
    sums to below 1 when pixels fell on unmatched predicted ids.

    Args:
        result: a ``scores`` result.
        path: output PNG path.
    """
    names = result["class_names"]
    m = np.asarray(result["confusion"], dtype=np.float64)
    rows = m.sum(axis=1) + np.asarray(result["unmatched_pixels"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows[:, None] > 0, m / rows[:, None], 0.0)
    n = len(names)
    side = max(4.0, 0.4 * n + 2.0)
    fig = figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of gt pixels")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("matched prediction")
    ax.set_ylabel("ground truth")
    if n <= 30:  # numbers become unreadable beyond that
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.01:
                    ax.text(
                        j,
                        i,
                        f"{100 * norm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_title("Confusion after matching (row %)")
    fig.savefig(os.fspath(path), format="png")


def run_evaluate(
    semantic: Sequence[str | Path],
    records: Sequence[ImageRecord],
    out_json: str | Path,
    iou_png: str | Path,
    confusion_png: str | Path,
    *,
    class_names: Sequence[str],
    n_classes: int,
    matching: str,
    facts: dict,
    n_pred: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Confusion over all labelled images, the headline matching and every peer's
    protocol, metrics.json.

    Images without a ground-truth reference (``gt == ""``: VOC extra lists) are skipped,
    logged and counted as ``n_images_unlabelled``; a referenced ground-truth file that is
    missing or whose size differs from the image is an error naming the file.

    The top-level ``miou``, ``pixel_accuracy``, ``per_class_iou`` and ``mapping`` are
    the headline protocol's (``headline_protocol``: ``dataset_hungarian`` with ``matching:
    hungarian``, ``majority`` with ``matching: majority``); ``protocols`` holds every
    protocol of ``protocols.PROTOCOLS``. CAUSE's variant follows ``facts["dataset"]``
    and ``facts["backbone"]`` (``protocols.cause_protocol``); on a dataset without
    background DiffCut's is its scene branch (``protocols_scene``). ``n_pred``: the
    predicted ids scored, ``0..n_pred-1`` (None: ``n_classes`` classes and background;
    scene mode passes ``n_classes``, it has no background).
    """
    dataset = str(facts.get("dataset") or "")
    acc = protocol_accumulator(
        len(class_names),
        n_classes + 1 if n_pred is None else n_pred,
        dataset=dataset,
        backbone=facts.get("backbone"),
        background=has_background(dataset),
    )
    skipped = 0
    per_image: dict[str, tuple[np.ndarray, ...]] = {}  # sparse: an image holds few classes
    for path in semantic:
        st = open_store(path)
        for i, r in enumerate(records_in_order(st, records, path)):
            gt = load_ground_truth(r)
            if gt is None:
                skipped += 1  # extra unlabelled images join clustering, not scoring
                continue
            pred = pixel_map(st, "semantic", i)
            if gt.shape != pred.shape:
                raise ValueError(f"{r.gt}: ground truth {gt.shape} != prediction {pred.shape}")
            c = acc.add(gt, pred, image_id=r.image_id)
            nz = np.nonzero(c)
            per_image[r.image_id] = (*nz, c[nz])
        log(f"evaluate: {acc.n_images} images scored, {skipped} unlabelled skipped after {path}")
    if acc.n_images == 0:
        raise ValueError("evaluate: no image has ground truth to score against")
    results = acc.results(class_names)
    headline = HEADLINE[matching]
    result = results[headline]
    protocols = protocol_metrics(results)
    n_gt, n_pred = acc.original.n_gt, acc.original.n_pred
    per_image_miou = {}
    for image_id, (rows, cols, counts) in per_image.items():
        c = np.zeros((n_gt, n_pred), dtype=np.int64)
        c[rows, cols] = counts
        per_image_miou[image_id] = scores(c, np.asarray(result["mapping"]))["miou"]
    plot_per_class_iou(result, iou_png)
    plot_confusion(result, confusion_png)
    metrics = {
        "miou": result["miou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "per_class_iou": dict(zip(result["class_names"], result["per_class_iou"], strict=True)),
        "matching": matching,
        "headline_protocol": headline,
        "n_images_scored": acc.n_images,
        "n_images_unlabelled": skipped,
        **facts,
        "mapping": result["mapping"],
        "confusion": result["confusion"],
        "protocols": protocols,
        # the headline's mapping applied to each image alone (the report's gallery)
        "per_image_miou": per_image_miou,
    }
    log(f"evaluate: mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}")
    for name, p in protocols.items():
        log(
            f"evaluate: protocol {name}: mIoU {p['miou']:.4f}, pixel accuracy "
            f"{p['pixel_accuracy']:.4f}"
        )
    Path(out_json).write_text(json.dumps(json_ready(metrics), indent=2))
    return metrics


def chosen_n_classes(classes: str | Path) -> int:
    """The class count assign used, from ``classes.zarr``'s attrs (``n_classes``)."""
    n = open_store(classes).attrs.get("n_classes")
    if n is None:
        raise ValueError(
            f"{classes}: no n_classes in its attrs (written before labels.n_classes auto "
            "existed): rerun assign"
        )
    return int(n)


def run(job: Job) -> dict:
    """The rule ``evaluate`` (settings: ``evaluate.matching`` and ``labels.n_classes``).
    The run's facts come from ``job.config`` (its digest is recorded, not passed as a
    param, so an unrelated config change does not rerun the scoring), the backbone facts
    from the semantic stores' ``extraction`` attrs (carried on from the features store by
    objects and segment). With ``labels.n_classes: auto`` the count is the one assign
    chose, from ``classes.zarr``'s attrs (input ``classes``)."""
    extraction = open_store(job.input.semantic[0]).attrs.get("extraction") or {}
    settings = dict(job.settings)
    if is_auto(settings["n_classes"]):
        settings["n_classes"] = chosen_n_classes(job.input.classes)
    facts = {
        "run": job.config["run"],
        "dataset": job.config["dataset"]["name"],
        # images the index left out (dataset.on_bad_image: skip), listed in skipped.tsv
        "n_images_skipped": n_images_skipped(read_skipped(job.input.skipped)),
        "seed": int(job.wildcards.seed),
        "config_digest": settings_digest(job.config),
        **extraction_facts(extraction),
        "n_classes": settings["n_classes"],
    }
    return run_evaluate(
        job.input.semantic,
        read_index(job.input.index),
        job.output.metrics,
        job.output.iou,
        job.output.confusion,
        class_names=dataset_class_names(job.config["dataset"]),
        **settings,
        facts=facts,
        # scene mode (labels.scope: scene): ids 0..n_classes-1, no background id
        n_pred=settings["n_classes"] if scope_of(job.config) == "scene" else None,
        log=job.log,
    )
