"""The summary stage: ``summarize_seeds`` over the metrics of several seeds."""

import json

import numpy as np
import pytest

from lcseg_steps.summary import summarize_seeds

RUNS = [
    {"miou": 0.41, "pixel_accuracy": 0.80},
    {"miou": None, "pixel_accuracy": 0.70},  # e.g. no class scorable in that seed
    {"miou": 0.55, "pixel_accuracy": 0.90},
]


def _metrics_files(tmp_path):
    paths = []
    for n, run in enumerate(RUNS):
        p = tmp_path / f"metrics_{n}.json"
        p.write_text(json.dumps(run))
        paths.append(p)
    return paths


def test_summarize_seeds_mean_and_population_std(tmp_path):
    out = summarize_seeds(_metrics_files(tmp_path), [0, 1, 2])
    assert out["seeds"] == [0, 1, 2]
    assert out["miou"]["mean"] == pytest.approx(np.mean([0.41, 0.55]))
    assert out["miou"]["std"] == pytest.approx(np.std([0.41, 0.55]))
    assert out["miou"]["per_seed"][0] == 0.41 and out["miou"]["per_seed"][2] == 0.55
    assert out["pixel_accuracy"]["mean"] == pytest.approx(np.mean([0.8, 0.7, 0.9]))
    assert out["pixel_accuracy"]["std"] == pytest.approx(np.std([0.8, 0.7, 0.9]))
    assert out["pixel_accuracy"]["per_seed"] == [0.8, 0.7, 0.9]


def test_summarize_seeds_output_is_strict_json(tmp_path):
    out = summarize_seeds(_metrics_files(tmp_path), [0, 1, 2])
    json.dumps(out, allow_nan=False)
    assert out["miou"]["per_seed"][1] is None
