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
    from lcseg_steps.stage import Job


def summarize_seeds(metrics_files: Sequence[str | Path], seeds: Sequence[int]) -> dict:
    """mean ± std (population) of the scores over seeds."""
    runs = [json.loads(Path(p).read_text()) for p in metrics_files]
    out: dict = {"seeds": list(seeds)}
    for key in ("miou", "pixel_accuracy"):
        vals = np.array([math.nan if r[key] is None else r[key] for r in runs], dtype=float)
        scored = vals[~np.isnan(vals)]
        # None, not NaN, for missing scores: NaN is not valid JSON
        out[key] = {
            "mean": float(scored.mean()) if scored.size else None,
            "std": float(scored.std()) if scored.size else None,
            "per_seed": [None if math.isnan(v) else float(v) for v in vals],
        }
    return out


def run(job: Job) -> dict:
    """The rule ``summary``."""
    summary = summarize_seeds(job.input, job.params.seeds)
    with open(job.output[0], "w") as fh:
        json.dump(summary, fh, indent=2)
    job.log(f"summary: mIoU {summary['miou']['mean']} ± {summary['miou']['std']}")
    return summary
