"""The analysis table: every variant of the grid (method settings and baselines) with its
scores over seeds, and the separability of each backbone layer's features.

A variant is ``{"name", "kind": "method" | "baseline", "keys": {dotted config key:
value}, "metrics": [metrics.json of each seed]}``. Its row holds the mean and the
population standard deviation (``ddof=0``, 0 for one seed) over seeds of ``miou``, the
mean ``pixel_accuracy`` and the mean ``per_class_iou`` of every class, in the unit of
metrics.json (fractions in [0, 1]), so the row of a one-seed variant repeats its
metrics.json. ``table.md`` and the plots show percentages.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.analysis.table_format import KINDS, changes, write_csv
from lcseg_steps.figures.plots import figure
from lcseg_steps.stores.atomic_write import tmp_sibling, write_text_atomic

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

KIND_STYLE = {  # bar colour and hatch: baselines grey and hatched
    "method": ("tab:blue", ""),
    "baseline": ("tab:gray", "//"),
}


def short_value(value: object) -> str:
    """A config value as a short cell: lists joined by ``+`` (``image+dataset``), YAML's
    ``true``/``false``/``null``, numbers in ``g`` format, mappings as compact JSON."""
    if isinstance(value, (list, tuple)):
        return "+".join(short_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _float(value: object) -> float:
    """A metrics.json number (``null`` for NaN) as a float."""
    return math.nan if value is None else float(value)


def _mean(values: Sequence[float]) -> float:
    """Mean ignoring NaN (a class absent from one seed's matching); NaN when all are."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.mean(a[np.isfinite(a)])) if np.isfinite(a).any() else math.nan


def variant_row(variant: Mapping, varying: Sequence[str]) -> dict[str, object]:
    """One variant -> its row: ``variant``, ``kind``, the ``varying`` keys (short strings,
    ``""`` when the variant has no such key), :data:`METRIC_COLUMNS` and ``iou/<class>``."""
    if variant["kind"] not in KINDS:
        raise ValueError(f"variant {variant['name']}: kind must be one of {KINDS}")
    paths = list(variant["metrics"])
    if not paths:
        raise ValueError(f"variant {variant['name']}: no metrics.json")
    metrics = [json.loads(Path(p).read_text()) for p in paths]
    miou = np.array([_float(m["miou"]) for m in metrics])
    row: dict[str, object] = {"variant": variant["name"], "kind": variant["kind"]}
    keys = variant.get("keys", {})
    row.update({k: short_value(keys[k]) if k in keys else "" for k in varying})
    row["miou_mean"] = float(np.mean(miou))  # NaN when a seed has none: nothing to hide
    row["miou_std"] = float(np.std(miou, ddof=0))
    row["n_seeds"] = len(metrics)
    row["pixel_accuracy_mean"] = float(np.mean([_float(m["pixel_accuracy"]) for m in metrics]))
    classes = list(dict.fromkeys(c for m in metrics for c in m["per_class_iou"]))
    for c in classes:
        row[f"iou/{c}"] = _mean([_float(m["per_class_iou"].get(c)) for m in metrics])
    return row


def table_rows(variants: Sequence[Mapping], varying: Sequence[str]) -> list[dict[str, object]]:
    """The rows of all variants (:func:`variant_row`): methods first, then baselines, each
    in the given order."""
    ordered = [v for kind in KINDS for v in variants if v["kind"] == kind]
    if len(ordered) != len(variants):
        bad = [v["name"] for v in variants if v["kind"] not in KINDS]
        raise ValueError(f"variants {bad}: kind must be one of {KINDS}")
    return [variant_row(v, varying) for v in ordered]


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.{digits}f}"


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in body)]


# the separability JSON's histogram fields, carried on for plot_separability_histograms
HISTOGRAMS = ("score_bins", "score_hist_fg", "score_hist_bg", "iou_bins", "iou_hist")


def separability_rows(entries: Sequence[Mapping]) -> list[dict[str, object]]:
    """``[{"backbone", "layer", "path"}]`` (separability JSON files) -> one row per
    (backbone, layer, feature): ``backbone``, ``layer``, ``feature``, ``auc``, ``mean_iou``
    (NaN for ``null``)."""
    rows = []
    for e in entries:
        result = json.loads(Path(e["path"]).read_text())
        for feature, r in result["per_feature"].items():
            rows.append(
                {
                    "backbone": e.get("backbone", result.get("backbone")),
                    "layer": e.get("layer", result.get("layer")),
                    "feature": feature,
                    "auc": _float(r["auc"]),
                    "mean_iou": _float(r["mean_iou"]),
                    **{key: r[key] for key in HISTOGRAMS if key in r},
                }
            )
    return rows


def markdown(
    rows: Sequence[Mapping], varying: Sequence[str], separability: Sequence[Mapping] = ()
) -> str:
    """``table.md``: the variants (variant, kind, changes from base, mIoU mean ± std,
    pixel accuracy; percentages) in the order of ``rows``, then the separability table
    (backbone, layer, feature, ROC-AUC, best-split IoU) of :func:`separability_rows`."""
    out = ["# Analysis", "", "## Variants", ""]
    body = []
    for r, change in zip(rows, changes(rows, varying), strict=True):
        miou = f"{_pct(r['miou_mean'])} ± {_pct(r['miou_std'])}"
        body.append(
            [r["variant"], r["kind"], change, miou, _pct(r["pixel_accuracy_mean"]), r["n_seeds"]]
        )
    header = ["variant", "kind", "changes from base", "mIoU (%)", "pixel accuracy (%)", "seeds"]
    out += _md_table(header, body)
    out += ["", "mIoU: mean ± population std over seeds.", "", "## Separability", ""]
    if separability:
        body = [
            [s["backbone"], s["layer"], s["feature"], _num(s["auc"]), _pct(s["mean_iou"])]
            for s in separability
        ]
        out += _md_table(["backbone", "layer", "feature", "ROC-AUC", "best-split IoU (%)"], body)
    else:
        out.append("No separability data.")
    return "\n".join(out) + "\n"


def _save(fig, path: str | os.PathLike) -> Path:
    # to a temporary sibling, then renamed: a killed job leaves no half PNG
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    fig.savefig(os.fspath(tmp), format="png")
    os.replace(tmp, path)
    return path


def plot_miou(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Bar chart of each row's mIoU (%), error bars = the std over seeds; baselines grey
    and hatched."""
    n = len(rows)
    fig = figure(max(5.0, 0.45 * n + 2.0), 4.5)
    ax = fig.add_subplot()
    x = np.arange(n)
    mean = np.array([100 * float(r["miou_mean"]) for r in rows])
    std = np.array([100 * float(r["miou_std"]) for r in rows])
    for kind, (colour, hatch) in KIND_STYLE.items():
        sel = np.array([r["kind"] == kind for r in rows], dtype=bool)
        if sel.any():
            ax.bar(
                x[sel],
                np.nan_to_num(mean[sel]),
                yerr=np.nan_to_num(std[sel]),
                color=colour,
                hatch=hatch,
                edgecolor="black",
                capsize=3,
                label=kind,
            )
    for i, m in enumerate(mean):
        ax.text(i, 0.5 if math.isnan(m) else m + std[i] + 0.5, _fmt(m), ha="center", fontsize=7)
    ax.set_xticks(x, [str(r["variant"]) for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU per variant (error bars: std over seeds)")
    if n:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_separability(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """ROC-AUC and best-split IoU per (backbone, layer), one bar per feature; a figure
    saying "no separability data" when ``rows`` is empty."""
    if not rows:
        fig = figure(5.0, 2.0)
        fig.text(0.5, 0.5, "no separability data", ha="center", va="center", fontsize=12)
        return _save(fig, path)
    groups = list(dict.fromkeys((r["backbone"], r["layer"]) for r in rows))
    features = list(dict.fromkeys(r["feature"] for r in rows))
    value = {(r["backbone"], r["layer"], r["feature"]): r for r in rows}
    fig = figure(max(6.0, 0.9 * len(groups) * max(1, len(features)) / 2 + 3.0), 6.5)
    width = 0.8 / len(features)
    x = np.arange(len(groups))
    for ax_i, (key, label) in enumerate((("auc", "ROC-AUC"), ("mean_iou", "best-split IoU"))):
        ax = fig.add_subplot(2, 1, ax_i + 1)
        for j, f in enumerate(features):
            vals = [value.get((*g, f), {}).get(key, math.nan) for g in groups]
            ax.bar(x + (j - (len(features) - 1) / 2) * width, np.nan_to_num(vals), width, label=f)
        if key == "auc":
            ax.axhline(0.5, color="black", linestyle=":", linewidth=1)  # chance
        ax.set_ylim(0, 1.25)  # headroom: the legend sits above bars near 1
        ax.set_ylabel(label)
        ax.set_xticks(x, [f"{b}\nlayer {la}" for b, la in groups], fontsize=8)
        ax.legend(title="feature", fontsize=8, ncols=len(features), loc="upper center")
    fig.suptitle("Foreground/background separability")
    return _save(fig, path)


def _fractions(counts) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / c.sum() if c.sum() > 0 else c


def plot_separability_histograms(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Per (backbone, layer, feature) of :func:`separability_rows`: the share of
    ground-truth foreground and background patches per centroid-score bin (top), and of
    images per best-split IoU bin (bottom); "no separability data" when no row has
    histograms."""
    rows = [r for r in rows if all(key in r for key in HISTOGRAMS)]
    if not rows:
        fig = figure(5.0, 2.0)
        fig.text(0.5, 0.5, "no separability data", ha="center", va="center", fontsize=12)
        return _save(fig, path)
    n = len(rows)
    cols = min(n, 3)
    grid_rows = -(-n // cols)
    fig = figure(3.6 * cols, 4.4 * grid_rows)
    for i, r in enumerate(rows):
        top = fig.add_subplot(2 * grid_rows, cols, (2 * (i // cols)) * cols + i % cols + 1)
        bins = np.asarray(r["score_bins"], dtype=np.float64)
        for key, label, style in (
            ("score_hist_fg", "foreground", {"alpha": 0.6}),
            ("score_hist_bg", "background", {"alpha": 0.6}),
        ):
            top.stairs(_fractions(r[key]), bins, fill=True, label=label, **style)
        top.axvline(0.0, color="black", linestyle=":", linewidth=1)
        top.set_title(f"{r['backbone']} L{r['layer']} {r['feature']}", fontsize=9)
        top.set_xlabel("cos(f, c_fg) - cos(f, c_bg)", fontsize=8)
        top.set_ylabel("share of patches", fontsize=8)
        top.legend(fontsize=7)
        bottom = fig.add_subplot(2 * grid_rows, cols, (2 * (i // cols) + 1) * cols + i % cols + 1)
        bottom.stairs(_fractions(r["iou_hist"]), np.asarray(r["iou_bins"]), fill=True)
        bottom.set_xlabel("best 2-way split IoU", fontsize=8)
        bottom.set_ylabel("share of images", fontsize=8)
    fig.suptitle("Separability: score and best-split IoU histograms")
    return _save(fig, path)


def run_table(
    variants: Sequence[Mapping],
    varying: Sequence[str],
    separability: Sequence[Mapping],
    *,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    miou_plot: str | os.PathLike,
    separability_plot: str | os.PathLike,
    separability_hist: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """The table, its Markdown and the plots; returns the rows."""
    rows = table_rows(variants, varying)
    sep = separability_rows(separability)
    write_csv(rows, csv_path)
    write_text_atomic(md_path, markdown(rows, varying, sep))
    plot_miou(rows, miou_plot)
    plot_separability(sep, separability_plot)
    if separability_hist is not None:
        plot_separability_histograms(sep, separability_hist)
    log(f"table: {len(rows)} variants, {len(sep)} separability rows")
    return rows


def run(job: Job) -> list[dict[str, object]]:
    """The analysis table rule. Params: ``variants`` (see the module docstring),
    ``varying`` (the dotted keys that vary: the key columns), ``separability``
    (``[{"backbone", "layer", "path"}]``). Outputs: ``csv``, ``md``, ``miou_plot``,
    ``separability_plot`` and ``separability_hist``."""
    return run_table(
        job.params.variants,
        job.params.varying,
        job.params.separability,
        csv_path=job.output.csv,
        md_path=job.output.md,
        miou_plot=job.output.miou_plot,
        separability_plot=job.output.separability_plot,
        separability_hist=job.output.separability_hist,
        log=job.log,
    )
