"""The GPU check's dry run on the CPU: every section runs at tiny scale and lands in the
JSON, the gpu-marked tests skip without CUDA, and each figure is measured (never timed
against a budget here)."""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, cuda_available

pytestmark = pytest.mark.integration


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "check"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--scale", "tiny"]
    p = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    log = (out / "gpu_check.log").read_text()
    assert re.findall(r"^\[ *[\d.]+s\] == (\w+)$", log, re.M) == list(result["sections"])
    assert result["errors"] == {}
    sections = result["sections"]
    assert set(sections) == {
        "environment",
        "tests",
        "extract",
        "kmeans_image",
        "kmeans_dataset",
        "pipeline",
    }
    tests = sections["tests"]["tests"]
    # the engine, extract and pipeline tests are collected, and none fails
    assert any("kmeans" in name for name in tests) and any("extract" in n for n in tests)
    assert len(tests) >= 4 and sections["tests"]["counts"].get("failed", 0) == 0
    if not cuda_available():
        assert {t["outcome"] for t in tests.values()} == {"skipped"}
    # CPU against CPU: the same engine on the same data gives the same labels
    assert sections["kmeans_image"]["labels_equal_fraction"] == 1.0
    assert sections["kmeans_image"]["objective_max_rel_diff"] == 0.0
    # the CPU sides use the threads given (default: the cores this job may use)
    assert sections["kmeans_image"]["cpu_engine_threads"] == result["threads"] >= 1
    assert sections["kmeans_dataset"]["cpu_threads"] == result["threads"]
    assert sections["environment"]["cpu_model"] is not None
    assert sections["extract"]["ours_images_per_s"] > 0
    assert sections["kmeans_dataset"]["cpu_rows"] < sections["kmeans_dataset"]["rows"]
    stages = sections["pipeline"]["stages"]
    assert {"extract", "image_level", "fit_dataset", "refine", "objects"} <= set(stages), stages
    assert all(s["jobs"] >= 1 and s["s"] > 0 for s in stages.values())
