"""Stage ``report``: the run report, one self-contained HTML page of run facts, scores,
plots and overlays, ``report.html``.

Images are embedded as base64 PNG data URIs and the page needs no JavaScript, so the
single file can be mailed, archived or opened from any directory.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from lcseg_steps.analysis.table_format import changes, read_csv
from lcseg_steps.data.index import (
    ImageRecord,
    load_ground_truth,
    n_images_skipped,
    read_index,
)
from lcseg_steps.images import read_record_reduced, read_rgb
from lcseg_steps.protocols import published_results
from lcseg_steps.store import image_grid_array, open_store, pixel_map, records_in_order

if TYPE_CHECKING:
    from lcseg_steps.stage import Job

VOID = 255
VOID_RGB = np.array([255, 255, 255], dtype=np.float64)
MASK_RGB = np.array([255, 40, 40], dtype=np.float64)
PANEL_MAX_SIDE = 256
# a gallery image larger than this (a photo) is drawn at this size, then shrunk to its
# panels: its thumbnails look the same, its work and memory are bounded
GALLERY_WORK_SIDE = 1024
PLOT_MAX_SIDE = 1024
# Metrics keys shown in the facts list, in this order; other scalar keys follow them.
FACT_KEYS = ("backbone", "weights", "matching", "seeds", "config_digest")
SCORE_KEYS = ("miou", "pixel_accuracy", "per_class_iou", "class_names", "weights_warning")

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-family: monospace; }
.warning { background: #fde2e1; border: 2px solid #c0392b; padding: 0.6em 1em;
           margin: 1em 0; font-weight: bold; }
.row { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 1em; }
figure { margin: 0; width: min-content; }
/* long names (class_names_with_underscores) wrap rather than widen a narrow panel */
figcaption { font-size: 0.8em; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1.5em; }
dt { font-weight: bold; }
dd { margin: 0; font-family: monospace; }
table.protocols td { vertical-align: top; }
table.protocols th { white-space: nowrap; }
table.analysis th { white-space: nowrap; }
table.analysis tr.best td { background: #e3f4e1; font-weight: bold; }
table.analysis tr.baseline td { color: #666; font-style: italic; }
.plots { margin-top: 1em; }
ul.legend { list-style: none; margin: 2px 0 0 0; padding: 0; font-size: 0.8em;
            overflow-wrap: anywhere; }
ul.legend li { display: flex; align-items: center; gap: 4px; line-height: 1.35; }
.sw { display: inline-block; flex: none; width: 0.9em; height: 0.9em;
      border: 1px solid #666; }
.sw.wide { width: 2.5em; }
.note { color: #555; }
.caveat { background: #fff6d5; border: 1px solid #c9a400; padding: 0.4em 0.8em; }
"""


# ---------------------------------------------------------------- image helpers


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"{what} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return image


def _blend(base: np.ndarray, colour: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """``round((1 - weight) * base + weight * colour)`` as uint8 (rounding half up)."""
    out = (1.0 - weight) * base.astype(np.float64) + weight * colour
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Class labels drawn over an image.

    image ``(H, W, 3)`` uint8 RGB, labels ``(H, W)`` integer ids in ``[0, 255]``, palette
    ``(256, 3)`` uint8 -> ``(H, W, 3)`` uint8. Label 0 (background) leaves the pixel
    unchanged; label c in 1..254 becomes ``round((1 - alpha) * pixel + alpha *
    palette[c])``; 255 (void) is blended the same way with white.
    """
    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image {image.shape[:2]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > VOID):
        raise ValueError(f"labels must lie in [0, 255], got [{labels.min()}, {labels.max()}]")
    palette = np.asarray(palette)
    if palette.shape != (256, 3):
        raise ValueError(f"palette must be (256, 3), got {palette.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colours = palette.astype(np.float64)
    colours[VOID] = VOID_RGB
    out = image.copy()
    drawn = labels != 0
    out[drawn] = _blend(image[drawn], colours[labels[drawn]], alpha)
    return out


def patch_mask_image(
    image: np.ndarray, grid_mask: np.ndarray, alpha: float = 0.55, dim: float = 0.35
) -> np.ndarray:
    """A patch-level mask stretched over the image.

    image ``(H, W, 3)`` uint8 RGB, grid_mask ``(gh, gw)`` bool or float in ``[0, 1]`` (a
    soft score; NaN counts as 0) -> ``(H, W, 3)`` uint8. Patch ``(i, j)`` covers pixels
    ``[i H/gh, (i+1) H/gh) x [j W/gw, (j+1) W/gw)`` (nearest stretch, the geometry of
    ``refine.upsample_score``). A pixel of mask value m is tinted red by ``alpha * m`` and
    darkened by ``dim * (1 - m)``, so foreground patches stand out from the background.
    """
    image = _check_image(image)
    m = np.asarray(grid_mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"grid_mask must be a non-empty (gh, gw) array, got shape {m.shape}")
    m = np.nan_to_num(m.astype(np.float64), nan=0.0)
    if m.min() < 0 or m.max() > 1:
        raise ValueError(f"grid_mask values must lie in [0, 1], got [{m.min()}, {m.max()}]")
    h, w = image.shape[:2]
    gh, gw = m.shape
    rows = np.arange(h) * gh // h
    cols = np.arange(w) * gw // w
    full = m[rows[:, None], cols[None, :]][..., None]  # (H, W, 1)
    darker = image.astype(np.float64) * (1.0 - dim * (1.0 - full))
    return _blend(darker, MASK_RGB, alpha * full)


def region_outlines(image: np.ndarray, region_map: np.ndarray) -> np.ndarray:
    """The outlines of object regions drawn over an image.

    image ``(H, W, 3)`` uint8 RGB, region_map ``(H, W)`` integer region ids (0
    background) -> ``(H, W, 3)`` uint8: regions tinted in the mask red at half weight,
    and every pixel with a 4-neighbour of another id (a cut between two parts of one
    component, or a region's edge) in white, so touching parts show as separate. The
    lines are widened to about one pixel of a ``PANEL_MAX_SIDE`` thumbnail."""
    image = _check_image(image)
    m = np.asarray(region_map).astype(np.int64)
    if m.shape != image.shape[:2]:
        raise ValueError(f"region_map shape {m.shape} does not match image {image.shape[:2]}")
    edge = np.zeros(m.shape, bool)
    edge[1:] |= m[1:] != m[:-1]
    edge[:-1] |= m[:-1] != m[1:]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    width = max(1, round(max(m.shape) / PANEL_MAX_SIDE))
    if width > 1:  # a 1 px line would vanish when the panel is shrunk
        edge = cv2.dilate(edge.view(np.uint8), np.ones((width, width), np.uint8)) > 0
    out = image.copy()
    inside = m > 0
    out[inside] = _blend(image[inside], MASK_RGB, 0.35)
    out[edge] = 255
    return out


def thumbnail_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side at most ``max_side`` (never upscaled), ratio kept."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def png_data_uri(image: np.ndarray, max_side: int = PANEL_MAX_SIDE) -> str:
    """``(H, W, 3)`` uint8 RGB -> ``data:image/png;base64,...`` of the image downscaled
    (``INTER_AREA``) to ``thumbnail_size(H, W, max_side)``."""
    image = _check_image(image)
    h, w = thumbnail_size(image.shape[0], image.shape[1], max_side)
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding of a {image.shape} image failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# ---------------------------------------------------------------- page


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> float | None:
    """A finite float, or ``None`` for missing / None / NaN / non-numeric."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pct(x: Any) -> str:
    """A fraction as a percentage with one decimal (``0.4123`` -> ``"41.2"``), or ``"n/a"``."""
    v = _num(x)
    return "n/a" if v is None else f"{100 * v:.1f}"


def _per_class(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(class name, IoU)`` pairs in the given order, from a ``{name: iou}`` dict or from
    the evaluate stage's parallel ``per_class_iou`` / ``class_names`` lists."""
    pc = metrics.get("per_class_iou")
    if isinstance(pc, Mapping):
        return list(pc.items())
    if isinstance(pc, Sequence) and not isinstance(pc, str):
        names = metrics.get("class_names") or []
        return [(names[i] if i < len(names) else f"class_{i}", v) for i, v in enumerate(pc)]
    return []


def _facts(metrics: Mapping[str, Any]) -> str:
    keys = [k for k in FACT_KEYS if k in metrics]
    keys += [
        k
        for k, v in metrics.items()
        if k not in FACT_KEYS
        and k not in SCORE_KEYS
        and (v is None or isinstance(v, (str, int, float, bool)))
    ]
    if not keys:
        return ""
    rows = []
    for k in keys:
        v = metrics[k]
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v)
        rows.append(f"<dt>{_esc(k)}</dt><dd>{_esc('n/a' if v is None else v)}</dd>")
    return "<dl>\n" + "\n".join(rows) + "\n</dl>"


def _scores(metrics: Mapping[str, Any]) -> str:
    rows = [
        f'<tr><th>mIoU</th><td class="num">{_pct(metrics.get("miou"))}</td></tr>',
        f'<tr><th>pixel accuracy</th><td class="num">{_pct(metrics.get("pixel_accuracy"))}'
        "</td></tr>",
    ]
    per_class = _per_class(metrics)
    if per_class:
        rows.append('<tr><th colspan="2">per-class IoU</th></tr>')
        rows += [f'<tr><td>{_esc(n)}</td><td class="num">{_pct(v)}</td></tr>' for n, v in per_class]
    return (
        "<h2>Scores</h2>\n<p>Values in percent; n/a = class absent from ground truth and "
        "prediction.</p>\n<table>\n" + "\n".join(rows) + "\n</table>"
    )


def _over_seeds(summary: Mapping[str, Any] | None, name: str) -> str:
    """``mean ± std`` (percent) of protocol ``name``'s mIoU over seeds, or ``""``."""
    entry = ((summary or {}).get("protocols") or {}).get(name) or {}
    m = entry.get("miou") or {}
    if m.get("mean") is None:
        return ""
    return f"{100 * m['mean']:.1f} ± {100 * (m.get('std') or 0.0):.1f}"


def _protocols(
    metrics: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
    published: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The table of evaluation protocols (metrics.json's ``protocols``), one row each: mIoU
    of this seed and over seeds, pixel accuracy, the rule, the resolution, the peer code
    it reproduces and what differs; then the peers' ``published`` numbers (rows of
    ``protocols.published_results`` for the run's dataset) beside ours under the same
    protocol, with a warning when the run's weights are random."""
    protocols = metrics.get("protocols")
    if not isinstance(protocols, Mapping) or not protocols:
        return ""
    headline = metrics.get("headline_protocol")
    rows = [
        "<tr><th>protocol</th><th>mIoU</th><th>over seeds</th><th>pixel acc.</th>"
        "<th>rule</th><th>resolution</th><th>reproduces</th><th>differs</th></tr>"
    ]
    for name, p in protocols.items():
        p = p if isinstance(p, Mapping) else {}
        mark = " (headline)" if name == headline else ""
        rows.append(
            f"<tr><td><code>{_esc(name)}</code>{mark}</td>"
            f'<td class="num">{_pct(p.get("miou"))}</td>'
            f'<td class="num">{_esc(_over_seeds(summary, name))}</td>'
            f'<td class="num">{_pct(p.get("pixel_accuracy"))}</td>'
            f"<td>{_esc(p.get('rule', ''))}</td><td>{_esc(p.get('resolution', ''))}</td>"
            f"<td>{_esc(p.get('reproduces', ''))}</td><td>{_esc(p.get('differs', ''))}</td></tr>"
        )
    html = (
        "<h2>Evaluation protocols</h2>\n<p>The same predictions scored the way each peer's "
        "own evaluation code scores them (values in percent), so that a number can stand "
        f"beside that peer's table. The headline mIoU is <code>{_esc(headline or '')}</code>."
        "</p>\n"
        '<table class="protocols">\n' + "\n".join(rows) + "\n</table>"
    )
    return html + _published(metrics, summary, protocols, published)


def _published(
    metrics: Mapping[str, Any],
    summary: Mapping[str, Any] | None,
    protocols: Mapping[str, Any],
    published: Sequence[Mapping[str, Any]],
) -> str:
    """The peers' published numbers on the run's dataset beside ours (same protocol)."""
    rows = [r for r in published if r.get("dataset") == metrics.get("dataset")]
    if not rows:
        return ""
    lines = [
        "<tr><th>method</th><th>paper</th><th>backbone</th><th>trains</th>"
        "<th>protocol</th><th>published mIoU</th><th>lcseg, same protocol</th></tr>"
    ]
    for r in rows:
        name = str(r.get("protocol"))
        ours = _over_seeds(summary, name) or _pct((protocols.get(name) or {}).get("miou"))
        lines.append(
            f"<tr><td>{_esc(r.get('method'))}</td><td>{_esc(r.get('paper'))}</td>"
            f"<td>{_esc(r.get('backbone'))}</td><td>{_esc(r.get('trains'))}</td>"
            f"<td><code>{_esc(name)}</code></td>"
            f'<td class="num">{float(r["miou"]):.1f}</td><td class="num">{_esc(ours)}</td></tr>'
        )
    weights = random_weights(metrics)
    warn = (
        f'<div class="warning">This run\'s backbone has random weights ({_esc(weights)}): '
        "its numbers measure the pipeline, not the method, and cannot be compared with "
        "the published ones.</div>\n"
        if weights
        else ""
    )
    return (
        "\n<h3>Where we stand</h3>\n" + warn + "<p>Published numbers from the papers "
        "(lcseg_steps/data/published.csv; add a row to compare with another paper), beside "
        "lcseg's under the protocol that reproduces the paper's evaluation code.</p>\n"
        '<table class="protocols">\n' + "\n".join(lines) + "\n</table>"
    )


def _legend_html(legend: Sequence[tuple[str, str | None]]) -> str:
    """``[(label, CSS background or None), ...]`` -> a list of swatches with labels (an
    entry without a colour is a plain line of text)."""
    if not legend:
        return ""
    items = []
    for label, colour in legend:
        sw = ""
        if colour is not None:
            # a gradient (a soft score's scale) gets a wider swatch
            cls = "sw wide" if "gradient" in colour else "sw"
            sw = f'<span class="{cls}" style="background: {_esc(colour)}"></span>'
        items.append(f"<li>{sw}{_esc(label)}</li>")
    return '<ul class="legend">' + "".join(items) + "</ul>"


def _figure_html(
    caption: str, uri: str, alt: str, legend: Sequence[tuple[str, str | None]] = ()
) -> str:
    return (
        f'<figure><img src="{uri}" alt="{_esc(alt)}">'
        f"<figcaption>{_esc(caption)}</figcaption>{_legend_html(legend)}</figure>"
    )


def _plot_figures(plots: Sequence[tuple[str, str | os.PathLike | np.ndarray]]) -> str:
    """``(caption, PNG path or (H, W, 3) uint8 RGB)`` -> figures."""
    figs = []
    for caption, plot in plots:
        # read_rgb names the file if a plot is missing or unreadable
        rgb = plot if isinstance(plot, np.ndarray) else read_rgb(plot)
        uri = png_data_uri(rgb, PLOT_MAX_SIDE)
        figs.append(_figure_html(caption, uri, caption))
    return "\n".join(figs)


def _plots(plots: Sequence[tuple[str, str | os.PathLike | np.ndarray]]) -> str:
    if not plots:
        return ""
    return "<h2>Plots</h2>\n" + _plot_figures(plots)


def read_analysis(
    table_csv: str | os.PathLike | None,
    plots: Sequence[str | os.PathLike] = (),
    note: str | None = None,
) -> dict[str, Any]:
    """The analysis inputs of the report -> ``build_report``'s ``analysis``.

    ``table_csv``: the analysis ``table.csv``, one row per variant (its layout:
    ``lcseg_steps.analysis.table_format``; the page leaves the per-class columns out).
    Returns ``{"note",
    "keys" (the varying keys, in the table's order), "rows" (dicts of strings), "plots"
    ((caption, path), the caption from the file name)}``.
    """
    keys: list[str] = []
    rows: list[dict[str, str]] = []
    if table_csv is not None:
        keys, rows = read_csv(table_csv)
    return {
        "note": note or None,
        "keys": keys,
        "rows": rows,
        "plots": [(Path(p).stem.replace("_", " "), p) for p in plots],
    }


def _best_method(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the ``kind: method`` row with the highest finite ``miou_mean`` (the first
    on a tie), or None."""
    best, best_v = None, -math.inf
    for i, r in enumerate(rows):
        v = _num(r.get("miou_mean"))
        if str(r.get("kind", "")).strip() == "method" and v is not None and v > best_v:
            best, best_v = i, v
    return best


def _mean_std(mean: Any, std: Any) -> str:
    return _pct(mean) if _num(mean) is None or _num(std) is None else f"{_pct(mean)} ± {_pct(std)}"


def _analysis(analysis: Mapping[str, Any] | None) -> str:
    if not analysis:
        return ""
    parts = ["<h2>Analysis</h2>"]
    if analysis.get("note"):
        parts.append(f'<p class="caveat">{_esc(analysis["note"])}</p>')
    rows = list(analysis.get("rows") or [])
    keys = list(analysis.get("keys") or [])
    if rows:
        best = _best_method(rows)
        head = ["variant", "kind", "changes from base", "mIoU (mean ± std)", "pixel acc.", "seeds"]
        lines = ["<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
        for i, (r, change) in enumerate(zip(rows, changes(rows, keys), strict=True)):
            cells = [
                f"<td>{_esc(r.get('variant', ''))}</td>",
                f"<td>{_esc(r.get('kind', ''))}</td>",
                f"<td><code>{_esc(change)}</code></td>",
            ]
            cells += [
                f'<td class="num">{_esc(_mean_std(r.get("miou_mean"), r.get("miou_std")))}</td>',
                f'<td class="num">{_pct(r.get("pixel_accuracy_mean"))}</td>',
                f'<td class="num">{_esc(r.get("n_seeds", ""))}</td>',
            ]
            if i == best:
                cls = ' class="best"'
            elif str(r.get("kind", "")).strip() == "baseline":
                cls = ' class="baseline"'
            else:
                cls = ""
            lines.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
        parts.append(
            "<p>One row per variant of the run's config (values in percent, mean ± standard "
            "deviation over seeds); baselines are reference points, not methods. The best "
            "method is highlighted.</p>\n"
            '<table class="analysis">\n' + "\n".join(lines) + "\n</table>"
        )
    plots = analysis.get("plots") or []
    if plots:
        parts.append(f'<div class="plots">{_plot_figures(plots)}</div>')
    return "\n".join(parts)


def _gallery(gallery: Sequence[Mapping[str, Any]]) -> str:
    if not gallery:
        return ""
    parts = [
        "<h2>Gallery</h2>",
        '<p class="note">Under each overlay, what its colours mean. Uncoloured pixels are '
        "background (in the level masks: dimmed); white is void (no label) or a cluster "
        "the matching left unmatched.</p>",
    ]
    for n, entry in enumerate(gallery):
        image_id = str(entry.get("image_id", f"#{n}"))
        figs = []
        for caption, panel, *legend in entry.get("panels", ()):
            try:
                uri = png_data_uri(panel, PANEL_MAX_SIDE)
            except ValueError as exc:
                raise ValueError(f"gallery image {image_id!r}, panel {caption!r}: {exc}") from exc
            legend = legend[0] if legend else ()
            figs.append(_figure_html(caption, uri, f"{image_id}: {caption}", legend))
        note = entry.get("note")
        head = f"{_esc(image_id)}: {_esc(note)}" if note else _esc(image_id)
        parts.append(f'<h3>{head}</h3>\n<div class="row">{"".join(figs)}</div>')
    return "\n".join(parts)


def build_report(
    out_html: str | os.PathLike,
    *,
    title: str,
    metrics: Mapping[str, Any],
    plots: Sequence[tuple[str, str | os.PathLike | np.ndarray]],
    gallery: Sequence[Mapping[str, Any]],
    notes: Sequence[str] = (),
    scores: bool = True,
    analysis: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
    published: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the report page to ``out_html`` (atomically) and return its path.

    ``metrics``: the evaluate stage's metrics dict (``miou``, ``pixel_accuracy`` fractions;
    ``per_class_iou`` a ``{name: iou}`` dict or a list beside ``class_names``; run facts
    such as ``backbone``, ``weights``, ``weights_warning``, ``seeds``); any key may be
    missing and any score None/NaN. ``plots``: ``(caption, PNG path or (H, W, 3) uint8
    RGB)``, embedded with the longer side capped at ``PLOT_MAX_SIDE``. A ``protocols``
    object (the evaluate stage's: name -> ``miou``, ``pixel_accuracy``, ``rule``,
    ``resolution``, ``reproduces``, ``differs``) is shown as one table after the scores,
    with ``summary``'s mean over seeds (metrics_summary.json) and the ``published`` rows
    of the run's dataset. ``gallery``: ``{"image_id": str, "panels": [(caption, (H, W, 3)
    uint8 RGB), ...]}``, panels downscaled to ``PANEL_MAX_SIDE``.
    A set ``weights_warning`` is shown in a warning box at the top. ``scores=False`` (no
    ground truth) leaves the scores table out. ``analysis`` (``read_analysis``'s dict:
    ``note``, ``keys``, ``rows``, ``plots``) adds an Analysis section before the gallery;
    None leaves it out.
    """
    out = Path(out_html)
    warning = metrics.get("weights_warning")
    body = [f"<h1>{_esc(title)}</h1>"]
    if warning:
        body.append(f'<div class="warning">Warning: {_esc(warning)}</div>')
    body.append(_facts(metrics))
    if notes:
        body.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    scored = [_scores(metrics), _protocols(metrics, summary, published)] if scores else []
    body += [*scored, _plots(plots), _analysis(analysis), _gallery(gallery)]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body>\n</html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _css_rgb(rgb: Sequence[int] | np.ndarray) -> str:
    r, g, b = (int(x) for x in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# the level masks' look (``patch_mask_image``): red tint = foreground, dimmed = background
MASK_LEGEND: tuple[tuple[str, str | None], ...] = (
    ("foreground", _css_rgb(MASK_RGB)),
    ("background (dimmed)", "#595959"),
)
SCORE_LEGEND: tuple[tuple[str, str | None], ...] = (
    (
        "foreground score 0 (dim) to 1 (red)",
        f"linear-gradient(to right, #595959, {_css_rgb(MASK_RGB)})",
    ),
)


def label_legend(
    labels: np.ndarray,
    palette: np.ndarray,
    name_of,
    void: str = "void",
) -> list[tuple[str, str | None]]:
    """The legend of an ``overlay``: one ``(name_of(id), palette colour)`` per label id
    present in ``labels`` (ascending), background 0 left out (it is not drawn), 255 as
    ``void`` in white; a map of background only says so."""
    legend: list[tuple[str, str | None]] = []
    labels = np.asarray(labels)
    if labels.dtype == np.uint8 and labels.size:  # a histogram: no sort, no int64 copy
        flat = np.ascontiguousarray(labels).reshape(-1, 1)
        hist = cv2.calcHist([flat], [0], None, [256], [0, 256]).ravel()
        ids = np.flatnonzero(hist > 0).tolist()
    else:
        ids = np.unique(labels).tolist()
    for i in ids:
        if i == 0:
            continue
        legend.append((void, "#ffffff") if i == VOID else (name_of(i), _css_rgb(palette[i])))
    return legend or [("background only: nothing drawn", None)]


def matched_labels(pred: np.ndarray, mapping: Sequence[int]) -> np.ndarray:
    """Predicted cluster ids -> matched class ids through evaluate's ``mapping`` (cluster id
    -> class id, -1 unmatched); unmatched clusters, ids past the mapping and classes that
    do not fit a label map become ``VOID`` (255)."""
    m = np.asarray(mapping, dtype=np.int64).reshape(-1)
    lut = np.full(VOID + 1, VOID, dtype=np.uint8)
    n = min(len(m), VOID + 1)
    ok = (m[:n] >= 0) & (m[:n] < VOID)
    lut[:n][ok] = m[:n][ok]
    pred = np.asarray(pred)
    return lut[np.clip(pred, 0, VOID)]


def _class_name(class_names: Sequence[str], i: int) -> str:
    return str(class_names[i]) if 0 <= i < len(class_names) else f"class {i}"


def gallery_ranking(
    per_image: Mapping[str, float | None] | None, n: int
) -> list[tuple[str, float, int]]:
    """The gallery's images across the range of per-image scores: ``per_image`` (image id
    -> mIoU, None = nothing scorable) ranked best first, and ``n`` of them at evenly
    spaced ranks (best, ..., middle, ..., worst). Returns ``(image id, score, rank)`` with
    ranks from 1, best first; empty without scores (the gallery then shows the first
    images)."""
    if not per_image or n < 1:
        return []
    scored = [(k, float(v)) for k, v in per_image.items() if v is not None and not math.isnan(v)]
    # best first; equal scores in image-id order, so the choice does not depend on dict order
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    if len(scored) <= n:
        picks = range(len(scored))
    else:
        picks = sorted({round(i * (len(scored) - 1) / (n - 1)) for i in range(n)} if n > 1 else {0})
    return [(scored[i][0], scored[i][1], i + 1) for i in picks]


def gallery_panels(
    record: ImageRecord,
    patch_masks,
    i_patch: int,
    pixel_masks,
    i_pix: int,
    semantic,
    i_sem: int,
    *,
    class_names: Sequence[str] = (),
    mapping: Sequence[int] | None = None,
    matching: str = "hungarian",
    objects=None,
    i_obj: int = 0,
) -> list[tuple[str, np.ndarray, list[tuple[str, str | None]]]]:
    """Captioned panels of one image with their legends: picture, ground truth, level
    masks, refined, prediction as cluster ids and, given evaluate's ``mapping`` (cluster
    id -> class id), the prediction in the ground truth's palette after that matching.
    ``objects`` (its objects store, image ``i_obj``) made with ``regions: split``: one
    more panel, the regions' outlines (:func:`region_outlines`)."""
    from lcseg_steps.data.voc import voc_palette

    palette = voc_palette()
    # a large JPEG decoded at a reduced scale that stays above GALLERY_WORK_SIDE
    img, (height, width) = read_record_reduced(record, GALLERY_WORK_SIDE)
    # legends from the full-size maps, pictures drawn at most GALLERY_WORK_SIDE px
    h, w = thumbnail_size(height, width, GALLERY_WORK_SIDE)

    def shown(a: np.ndarray, labels: bool = True) -> np.ndarray:
        if a.shape[:2] == (h, w):
            return a
        interp = cv2.INTER_NEAREST_EXACT if labels else cv2.INTER_AREA
        return cv2.resize(a, (w, h), interpolation=interp)

    img = shown(img, labels=False)
    panels: list[tuple[str, np.ndarray, list[tuple[str, str | None]]]] = [("image", img, [])]
    gt = load_ground_truth(record)
    if gt is not None:
        legend = label_legend(
            gt, palette, lambda i: _class_name(class_names, i), "void (unlabelled)"
        )
        panels.append(("ground truth", overlay(img, shown(gt), palette), legend))
    for name in ("mask_dataset", "mask_category", "mask_image", "merged", "score"):
        if name in patch_masks:
            grid = image_grid_array(patch_masks, name, i_patch).astype(np.float32)
            legend = list(SCORE_LEGEND if name == "score" else MASK_LEGEND)
            panels.append((name.replace("mask_", "level: "), patch_mask_image(img, grid), legend))
    refined = pixel_map(pixel_masks, "mask", i_pix)
    # foreground in the level masks' red (VOC's dark red for 1 hides on dark objects)
    fg_palette = palette.copy()
    fg_palette[1] = MASK_RGB
    legend = label_legend(refined, fg_palette, lambda i: "foreground" if i == 1 else f"mask {i}")
    panels.append(("refined (CRF)", overlay(img, shown(refined), fg_palette), legend))
    if objects is not None and region_mode(objects) == "split":
        regions = pixel_map(objects, "region_map", i_obj)
        n = int(regions.max())
        legend = [(f"{n} region(s)", _css_rgb(MASK_RGB)), ("region outlines", "#ffffff")]
        panels.append(("regions (split)", region_outlines(img, shown(regions)), legend))
    pred = pixel_map(semantic, "semantic", i_sem)
    legend = label_legend(pred, palette, lambda i: f"cluster {i}")
    panels.append(("prediction (cluster ids)", overlay(img, shown(pred), palette), legend))
    if mapping is not None:
        matched = matched_labels(pred, mapping)
        clusters: dict[int, list[int]] = {}
        for cluster, cls in enumerate(mapping):
            clusters.setdefault(int(cls), []).append(cluster)

        def name_of(i: int) -> str:
            ids = clusters.get(i, [])
            which = "cluster" if len(ids) == 1 else "clusters"
            return f"{_class_name(class_names, i)} ({which} {', '.join(map(str, ids))})"

        legend = label_legend(matched, palette, name_of, "unmatched cluster")
        panels.append(
            (
                f"prediction matched to classes ({matching})",
                overlay(img, shown(matched), palette),
                legend,
            )
        )
    return panels


def region_mode(objects) -> str | None:
    """``objects.regions`` an objects store was made with (its settings attrs)."""
    return (objects.attrs.get("settings") or {}).get("regions")


# store attrs of a count chosen by the eigengap -> the config key it stands for
AUTO_COUNTS = {"n_classes_auto": "labels.n_classes", "n_categories_auto": "clustering.n_categories"}


def eigengap_plots(stores: Sequence[str | Path]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """The eigengap curves of the counts chosen ``auto`` (``classes.zarr``,
    ``category_level.zarr``: their ``eigenvalues`` and ``*_auto`` attrs) -> ``(caption,
    (H, W, 3) uint8)`` plots and one note each; a store without them adds nothing."""
    from lcseg_steps.plots import eigengap_figure, figure_rgb

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
    names = [n for n, _ in _per_class(metrics)]
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
                    f"mIoU {_pct(score)} (rank {rank} of {len(metrics['per_image_miou'])})"
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


def random_weights(metrics: Mapping[str, Any]) -> str | None:
    """The run's ``weights`` (metrics.json's) when its backbone had random weights, else
    None."""
    weights = str(metrics.get("weights") or "")
    return weights if weights.startswith("random") else None


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
    from lcseg_steps.data.index import read_skipped

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
