"""The report page: one self-contained HTML page of run facts, scores, evaluation
protocols, plots, the analysis table and the gallery (:func:`build_report`).

Images are embedded as base64 PNG data URIs and the page needs no JavaScript, so the
single file can be mailed, archived or opened from any directory.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lcseg_steps.analysis.table_format import changes, read_csv
from lcseg_steps.data.images import read_rgb
from lcseg_steps.figures.overlays import PANEL_MAX_SIDE, png_data_uri

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


def percent(x: Any) -> str:
    """A fraction as a percentage with one decimal (``0.4123`` -> ``"41.2"``), or ``"n/a"``."""
    v = _num(x)
    return "n/a" if v is None else f"{100 * v:.1f}"


def per_class_ious(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
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
        f'<tr><th>mIoU</th><td class="num">{percent(metrics.get("miou"))}</td></tr>',
        f'<tr><th>pixel accuracy</th><td class="num">{percent(metrics.get("pixel_accuracy"))}'
        "</td></tr>",
    ]
    per_class = per_class_ious(metrics)
    if per_class:
        rows.append('<tr><th colspan="2">per-class IoU</th></tr>')
        rows += [
            f'<tr><td>{_esc(n)}</td><td class="num">{percent(v)}</td></tr>' for n, v in per_class
        ]
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
            f'<td class="num">{percent(p.get("miou"))}</td>'
            f'<td class="num">{_esc(_over_seeds(summary, name))}</td>'
            f'<td class="num">{percent(p.get("pixel_accuracy"))}</td>'
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
        ours = _over_seeds(summary, name) or percent((protocols.get(name) or {}).get("miou"))
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
    return (
        percent(mean)
        if _num(mean) is None or _num(std) is None
        else f"{percent(mean)} ± {percent(std)}"
    )


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
                f'<td class="num">{percent(r.get("pixel_accuracy_mean"))}</td>',
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


def random_weights(metrics: Mapping[str, Any]) -> str | None:
    """The run's ``weights`` (metrics.json's) when its backbone had random weights, else
    None."""
    weights = str(metrics.get("weights") or "")
    return weights if weights.startswith("random") else None
