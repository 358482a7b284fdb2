"""workflow/configs/cocostuff27.yaml and cityscapes27.yaml as shipped: a dry run on a
generated tree in the dataset's usual layout schedules the whole pipeline; without the
data the run stops before any job, naming the missing path."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, scheduled
from tests.scene27_trees import cityscapes_tree, cocostuff_tree


def _dry_run(workdir, configfile, root=None):
    cmd = [sys.executable, "-m", "snakemake", "-s", os.path.join(REPO, "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "1", "-n"]
    cmd += ["--configfile", os.path.join(REPO, "workflow", "configs", configfile)]
    if root is not None:
        cmd += ["--config", f"dataset={{root: {root}}}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(workdir))


@pytest.mark.parametrize(
    "configfile, make",
    [("cocostuff27.yaml", cocostuff_tree), ("cityscapes27.yaml", cityscapes_tree)],
)
def test_dry_run_on_a_generated_tree(tmp_path, configfile, make):
    make(tmp_path / "data")
    r = _dry_run(tmp_path, configfile, tmp_path / "data")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = scheduled(r)
    assert jobs["index"] == 1 and jobs["evaluate"] == 1 and jobs["report"] == 1, jobs


def test_cocostuff_without_the_curated_list_stops_naming_it(tmp_path):
    cocostuff_tree(tmp_path / "data", curated=False)
    r = _dry_run(tmp_path, "cocostuff27.yaml", tmp_path / "data")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt" in out, out[-3000:]
    assert "COCOStuff164kCurated.tar.gz" in out and "Job stats" not in out


@pytest.mark.parametrize(
    "configfile, path",
    [("cocostuff27.yaml", "data/cocostuff"), ("cityscapes27.yaml", "data/cityscapes")],
)
def test_without_the_data_the_run_stops_naming_the_path(tmp_path, configfile, path):
    r = _dry_run(tmp_path, configfile)  # the config's own root, absent here
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"{path}: " in out and "not found" in out and "Job stats" not in out, out[-3000:]
