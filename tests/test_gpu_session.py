"""The prepared GPU session's dry run on the CPU (``SESSION_MODE=cpu``, tiny sizes): every
section leaves its result in what comes back under $OUT, and a section that runs out of
time is recorded as such while the later ones still run."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration
SECTIONS = [
    "environment",
    "install",
    "tests",
    "float32",
    "kmeans_image",
    "kmeans_dataset",
    "extract",
    "pipeline",
]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    env = {
        **os.environ,
        "OUT": str(out),
        "SESSION_MODE": "cpu",
        "SESSION_PYTHON": sys.executable,
        "SESSION_WORK": str(tmp_path_factory.mktemp("work")),
        # the tests section stalls on purpose and runs out of its 1 s: the timeout path,
        # whatever the machine's speed or load
        "SESSION_STALL": "tests",
        "T_TESTS": "1",
        # the others take 2-6 s each here: limits no load reaches, so none times out
        **{f"T_{s.upper()}": "900" for s in SECTIONS if s != "tests"},
        "SESSION_BUDGET": "7200",
    }
    script = os.path.join(REPO, "benchmarks", "gpu_session.sh")
    p = subprocess.run(
        ["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with tarfile.open(out / "session.tgz") as tar:
        files = {
            os.path.normpath(m.name): tar.extractfile(m).read().decode()
            for m in tar.getmembers()
            if m.isfile()
        }
    return out, files


def test_only_three_files_come_back(session):
    out, _ = session
    assert sorted(os.listdir(out)) == ["session.log", "session.tgz", "summary.tsv"]


def test_every_section_is_recorded_in_order_and_the_timeout_as_such(session):
    out, files = session
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    assert rows[0] == ["section", "status", "rc", "seconds", "limit_s"]
    assert [r[0] for r in rows[1:]] == SECTIONS
    status = {r[0]: r[1] for r in rows[1:]}
    assert status.pop("tests") == "timeout"
    # the sections after the one that timed out still ran, and passed
    assert set(status.values()) == {"ok"}, status
    for name in SECTIONS:
        st = json.loads(files[f"{name}.status.json"])
        assert st["section"] == name and st["status"] in ("ok", "timeout")
        assert f"{name}.log" in files


def test_each_section_wrote_its_result(session):
    _, files = session
    env = files["environment.txt"]
    assert "model name" in env and "== nvidia-smi" in env
    assert json.loads(files["environment/gpu_check.json"])["sections"]["environment"]["cpu_model"]
    assert "cpu mode" in files["install.log"]
    # CPU against CPU: the same features, the same labels at every level
    f32 = json.loads(files["float32.json"])
    for run in f32["runs"].values():
        assert all(f["max_abs_diff"] == 0.0 for f in run["features"].values())
        assert run["levels"]["k"]["image_level_equal_fraction"] == 1.0
        assert run["levels"]["k"]["dataset_level_equal_fraction"] == 1.0
    for name in ("kmeans_image", "kmeans_dataset", "extract", "pipeline"):
        doc = json.loads(files[f"{name}/gpu_check.json"])
        assert doc["errors"] == {} and name in doc["sections"], doc
    assert json.loads(files["kmeans_image/gpu_check.json"])["sections"]["kmeans_image"][
        "labels_equal_fraction"
    ] == pytest.approx(1.0)
    assert json.loads(files["pipeline/gpu_check.json"])["sections"]["pipeline"]["dry_run"]
