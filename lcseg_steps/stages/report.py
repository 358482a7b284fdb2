"""Stage ``report``: the run report, one self-contained HTML page of run facts, scores,
plots and overlays, ``report.html``.

The stage reads the run's metrics, summary, stores and analysis inputs and gathers what
the page shows; the page is built by :mod:`lcseg_steps.figures.page`, the gallery's
panels by :mod:`lcseg_steps.figures.gallery` and :mod:`lcseg_steps.figures.overlays`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lcseg_steps.data.image_table import ImageRecord, n_images_skipped, read_index
from lcseg_steps.evaluation.protocols import published_results
from lcseg_steps.figures.gallery import gallery_panels, gallery_ranking, region_mode
from lcseg_steps.figures.page import (
    build_report,
    per_class_ious,
    percent,
    random_weights,
    read_analysis,
)
from lcseg_steps.stores.layout import open_store, records_in_order

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


# store attrs of a count chosen by the eigengap -> the config key it stands for
AUTO_COUNTS = {"n_classes_auto": "labels.n_classes", "n_categories_auto": "clustering.n_categories"}


def eigengap_plots(stores: Sequence[str | Path]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """The eigengap curves of the counts chosen ``auto`` (``classes.zarr``,
    ``category_level.zarr``: their ``eigenvalues`` and ``*_auto`` attrs) -> ``(caption,
    (H, W, 3) uint8)`` plots and one note each; a store without them adds nothing."""
    from lcseg_steps.figures.plots import eigengap_figure, figure_rgb

    plots, notes = [], []
    for path in stores:
        st = open_store(path)
        for attr, key in AUTO_COUNTS.items():
            auto = st.attrs.get(attr)
            if not auto:
                continue
            chosen, k_range = int(auto["chosen"]), list(auto["range"])
            lam = np.asarray(st["eigenvalues"][:]) if "eigenvalues" in st else np.zeros(0)
            searched = [k_range[0], min(k_range[1], len(lam) - 1)] if len(lam) > 1 else k_range
            notes.append(
                f"{key}: auto chose {chosen} in {searched} (auto_range {k_range}) by the largest "
                "eigengap of the normalised Laplacian of the cosine kNN graph (reliable for "
                "well-separated groups only)"
            )
            if len(lam) > 1:
                fig = eigengap_figure(lam, chosen, k_range, key)
                plots.append((f"{key} auto: eigengap curve", figure_rgb(fig)))
    return plots, notes


def run_report(
    out_html: str | Path,
    *,
    title: str,
    metrics_json: str | Path | None,
    summary_json: str | Path | None,
    plots: Sequence[tuple[str, str | Path]],
    records: Sequence[ImageRecord],
    patch_masks: Sequence[str | Path],
    pixel_masks: Sequence[str | Path],
    semantic: Sequence[str | Path],
    gallery: int,
    skipped: Sequence[Any] = (),
    analysis: Mapping[str, Any] | None = None,
    count_stores: Sequence[str | Path] = (),
    model: str | Path | None = None,
    objects: Sequence[str | Path] = (),
    log=print,
) -> Path:
    """The self-contained HTML page of one run (first seed's images, every seed's scores).

    Without ground truth ``metrics_json`` and ``summary_json`` are None: the page shows the
    run facts (from the semantic stores' ``extraction`` attrs) and the overlays, no scores.
    ``gallery`` (``report.gallery``): how many images the gallery shows. ``skipped``: the
    index's ``SkippedImage``s, listed in the notes. ``analysis``: see
    ``build_report``. ``count_stores``: the first seed's ``classes.zarr`` and
    ``category_level.zarr`` where a count was ``auto``: their eigengap curves are plotted
    (:func:`eigengap_plots`). ``model``: the ``model.zarr`` an applied run segmented
    with, named in the facts and notes (:func:`applied_model_facts`). ``objects``: the
    first seed's objects stores (one per shard, as ``semantic``): the facts name their
    region mode, and with ``split`` the gallery draws each image's region outlines.
    """
    if metrics_json is None:
        extraction = open_store(semantic[0]).attrs.get("extraction") or {} if semantic else {}
        metrics = {k: v for k, v in extraction.items() if not isinstance(v, dict | list)}
        metrics["n_images_skipped"] = n_images_skipped(skipped)
    else:
        metrics = json.loads(Path(metrics_json).read_text())
    names = [n for n, _ in per_class_ious(metrics)]
    mapping = metrics.get("mapping") if metrics_json is not None else None
    if not isinstance(mapping, Sequence) or isinstance(mapping, str):
        mapping = None
    ranked = gallery_ranking(metrics.get("per_image_miou"), gallery)
    wanted = {image_id: n for n, (image_id, _, _) in enumerate(ranked)}
    shown: list[dict] = []
    obj_paths = list(objects) if objects else [None] * len(semantic)
    if objects:
        metrics["regions"] = region_mode(open_store(obj_paths[0]))
    for pm_path, px_path, sem_path, ob_path in zip(
        patch_masks, pixel_masks, semantic, obj_paths, strict=True
    ):
        pm, px, sem = open_store(pm_path), open_store(px_path), open_store(sem_path)
        ob = open_store(ob_path) if ob_path is not None else None
        recs = records_in_order(pm, records, pm_path)
        for i, r in enumerate(recs):
            if ranked and r.image_id not in wanted:
                continue
            if not ranked and len(shown) >= gallery:
                break
            panels = gallery_panels(
                r,
                pm,
                i,
                px,
                i,
                sem,
                i,
                class_names=names,
                mapping=mapping,
                matching=str(metrics.get("matching", "hungarian")),
                objects=ob,
                i_obj=i,
            )
            entry = {"image_id": r.image_id, "panels": panels}
            if ranked:
                _, score, rank = ranked[wanted[r.image_id]]
                entry["note"] = (
                    f"mIoU {percent(score)} (rank {rank} of {len(metrics['per_image_miou'])})"
                )
            shown.append(entry)
    if ranked:
        shown.sort(key=lambda e: wanted[e["image_id"]])
    summary = None
    if summary_json is None:
        notes = ["No ground truth: predictions and overlays only, no scores."]
    else:
        summary = json.loads(Path(summary_json).read_text())
        m = summary["miou"]
        over = "n/a" if m["mean"] is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"
        notes = [
            f"mIoU over seeds {summary['seeds']}: {over}",
            "The gallery shows each prediction twice: as raw cluster ids (colours carry no "
            "class meaning) and in the ground truth's palette after the matching of clusters "
            "to classes that the scores use (Hungarian, or majority)."
            if mapping is not None
            else "Prediction colours are cluster ids before matching; scores use the "
            "Hungarian (or majority) matching of clusters to classes.",
        ]
    if skipped:
        n_files = sum(not s.image_id for s in skipped)
        notes.append(
            f"{len(skipped) - n_files} image(s) skipped by the index (dataset.on_bad_image: "
            f"skip) and {n_files} other file(s) of the folder left out, all listed in "
            "skipped.tsv and in no result:"
        )
        notes += [
            f"skipped {s.image_id} ({s.path}): {s.reason}"
            if s.image_id
            else f"left out {s.path}: {s.reason}"
            for s in skipped[:50]
        ]
        if len(skipped) > 50:
            notes.append(f"... and {len(skipped) - 50} more in skipped.tsv")
    if model is not None:
        facts, note = applied_model_facts(model)
        metrics.update(facts)
        notes.insert(0, note)
    if not metrics.get("weights_warning") and random_weights(metrics):
        metrics["weights_warning"] = (
            f"the backbone has random weights ({metrics['weights']}): the segments measure "
            "the pipeline on this data, not the method"
        )
    curves, curve_notes = eigengap_plots(count_stores)
    notes += curve_notes
    log(f"report: {len(shown)} gallery images, {len(curves)} eigengap curve(s)")
    return build_report(
        out_html,
        title=title,
        metrics=metrics,
        plots=[*plots, *curves],
        gallery=shown,
        notes=notes,
        scores=metrics_json is not None,
        analysis=analysis,
        summary=summary,
        published=published_results() if metrics_json is not None else (),
    )


def job_analysis(job: Job) -> dict[str, Any] | None:
    """The Analysis section's inputs of a report job, or None when it has none: input
    ``analysis_table`` (the analysis ``table.csv``), input ``analysis_plots`` (PNG paths,
    possibly none) and param ``analysis_note`` (a short caveat shown above the table)."""
    table = job.input.get("analysis_table")
    plots = job.input.get("analysis_plots")
    if isinstance(plots, (str, os.PathLike)):
        plots = [plots]
    plots = list(plots or [])
    if not table and not plots:
        return None
    note = job.params.get("analysis_note")
    if note is None and "metrics" in job.input.keys():
        note = weights_note(job.input.metrics)
    return read_analysis(table or None, plots, note)


def applied_model_facts(model: str | Path) -> tuple[dict[str, Any], str]:
    """The facts an applied run's report shows of the ``model.zarr`` it applied: its path,
    the run, seed and image count it was fitted on, and its weights (with the fitting
    run's warning when those were a random fallback), plus a one-line note."""
    a = open_store(model).attrs
    bb = a.get("backbone") or {}
    facts = {
        "applied_model": str(model),
        "model_fitted_on": f"run {a.get('run')!r}, seed {a.get('seed')}, "
        f"{a.get('n_images')} images",
        "weights": bb.get("weights"),
    }
    if a.get("weights_warning"):
        facts["weights_warning"] = a["weights_warning"]
    note = (
        f"Segmented with the fitted model {model} (run {a.get('run')!r}, seed {a.get('seed')}): "
        "nothing was refitted on these images."
    )
    return facts, note


def weights_note(metrics_json: str | os.PathLike) -> str | None:
    """The Analysis section's default note: a warning when the run's backbone had random
    weights (``weights`` in its metrics.json), else None."""
    with open(metrics_json) as fh:
        weights = random_weights(json.load(fh))
    if weights is None:
        return None
    return (
        f"Random-weight backbone ({weights}): these numbers measure the pipeline on this "
        "data, not the method. Set backbone.weights to a checkpoint to compare with the paper."
    )


def run(job: Job) -> Path:
    """The rule ``report`` (without ground truth it has no metrics, summary or plots)."""
    from lcseg_steps.data.image_table import read_skipped

    scored = "metrics" in job.input.keys()
    return run_report(
        job.output[0],
        title=f"lcseg run {job.params.run}",
        metrics_json=job.input.metrics if scored else None,
        summary_json=job.input.summary if scored else None,
        plots=[("per-class IoU", job.input.iou), ("confusion matrix", job.input.confusion)]
        if scored
        else [],
        skipped=read_skipped(job.input.skipped) if "skipped" in job.input.keys() else [],
        records=read_index(job.input.index),
        patch_masks=job.input.patch_masks,
        pixel_masks=job.input.pixel_masks,
        semantic=job.input.semantic,
        gallery=job.params.gallery,
        analysis=job_analysis(job),
        count_stores=[job.input.get(k) for k in ("classes", "category_level") if job.input.get(k)],
        model=job.params.get("model"),
        objects=job.input.get("objects") or (),
        log=job.log,
    )
