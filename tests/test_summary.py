"""The summary stage: ``summarize_seeds`` over the metrics of several seeds."""

import json

import numpy as np
import pytest

from lcseg_steps.stages.summary import summarize_seeds

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


def test_summarize_seeds_averages_every_protocol(tmp_path):
    def metrics(miou, dsm, diffcut):
        return {
            "miou": miou,
            "pixel_accuracy": 0.5,
            "headline_protocol": "dataset_hungarian",
            "protocols": {
                "dataset_hungarian": {"miou": miou, "pixel_accuracy": 0.5},
                "dsm": {"miou": dsm, "pixel_accuracy": 0.6},
                "diffcut": {"miou": diffcut, "pixel_accuracy": 0.7},
            },
        }

    paths = []
    for n, m in enumerate([metrics(0.3, 0.35, 0.5), metrics(0.4, 0.25, None)]):
        paths.append(tmp_path / f"m{n}.json")
        paths[-1].write_text(json.dumps(m))
    out = summarize_seeds(paths, [0, 1])
    assert out["headline_protocol"] == "dataset_hungarian"
    assert list(out["protocols"]) == ["dataset_hungarian", "dsm", "diffcut"]
    assert out["protocols"]["dataset_hungarian"]["miou"] == out["miou"]
    assert out["protocols"]["dsm"]["miou"]["mean"] == pytest.approx(0.3)
    assert out["protocols"]["dsm"]["miou"]["std"] == pytest.approx(0.05)
    assert out["protocols"]["diffcut"]["miou"] == {"mean": 0.5, "std": 0.0, "per_seed": [0.5, None]}
    assert out["protocols"]["dsm"]["pixel_accuracy"]["per_seed"] == [0.6, 0.6]
    json.dumps(out, allow_nan=False)
