"""Stage ``summary``: mean and std of the scores over seeds, every ``metrics.json`` ->
``metrics_summary.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


SCORES = ("miou", "pixel_accuracy")


def _over_seeds(values: Sequence[float | None]) -> dict:
    """mean, population std and the per-seed list of one score; a seed without the score
    (None) is left out of mean and std. None, not NaN, for missing: NaN is not valid JSON."""
    vals = np.array([math.nan if v is None else v for v in values], dtype=float)
    scored = vals[~np.isnan(vals)]
    return {
        "mean": float(scored.mean()) if scored.size else None,
        "std": float(scored.std()) if scored.size else None,
        "per_seed": [None if math.isnan(v) else float(v) for v in vals],
    }


def summarize_seeds(metrics_files: Sequence[str | Path], seeds: Sequence[int]) -> dict:
    """mean ± std (population) over seeds of the headline scores (``miou``,
    ``pixel_accuracy``, with the ``headline_protocol`` they follow) and of every protocol's
    (``protocols.<name>.miou`` and ``.pixel_accuracy``), for the protocols every seed has."""
    runs = [json.loads(Path(p).read_text()) for p in metrics_files]
    out: dict = {"seeds": list(seeds)}
    headline = {r.get("headline_protocol") for r in runs}
    if len(headline) == 1 and None not in headline:
        out["headline_protocol"] = headline.pop()
    for key in SCORES:
        out[key] = _over_seeds([r[key] for r in runs])
    names = [
        n
        for n in (runs[0].get("protocols") or {})
        if all(n in r.get("protocols", {}) for r in runs)
    ]
    if names:
        out["protocols"] = {
            name: {key: _over_seeds([r["protocols"][name][key] for r in runs]) for key in SCORES}
            for name in names
        }
    return out


def run(job: Job) -> dict:
    """The rule ``summary``."""
    summary = summarize_seeds(job.input, job.params.seeds)
    with open(job.output[0], "w") as fh:
        json.dump(summary, fh, indent=2)
    job.log(f"summary: mIoU {summary['miou']['mean']} ± {summary['miou']['std']}")
    return summary
