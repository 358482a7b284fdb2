"""Crash and resume: SIGKILL the whole Snakemake process group part-way through a stage,
rerun, and every array, attr and score equals those of an uninterrupted run.

The tiny stages take about a second, too short to hit part-way by timing. So a killed
run gets a test-only ``sitecustomize`` (on ``PYTHONPATH``) that holds the chosen stage
just after it has put data on disk: after a ``StoreWriter.write`` into the chosen store
(extract: after its q/k/v chunks, at its first whole-array write), or after evaluate's
first plot. The hold drops a marker file and sleeps; it changes no output. The test
kills the process group as soon as the marker appears, so the killed writer has data
on disk (chunks in ``<store>.tmp-<host>-<pid>``, or one of evaluate's three outputs) and has
not finished.

One working directory crashes four times, once in each of extract, fit_dataset, refine
and evaluate; the rerun after one crash is the run that crashes in the next stage, and
the last rerun finishes. That costs one pipeline run instead of four.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import BIN, REPO, TINY, snakemake
from tests.store_hashes import (
    differences,
    reference_run,
    snapshot,
    store_digest,
    store_kinds,
)

pytestmark = pytest.mark.integration

RES = "results/tiny"

# Test-only hook, loaded by every Python process of a killed run through PYTHONPATH.
HOOK = """
import importlib.machinery
import os
import sys
import time

HOLD = os.environ.get("LCSEG_TEST_HOLD")


def _hold(path):
    # written whole, then renamed: the test polls for the marker and must never read it
    # empty (it did, under load, when the marker was written in place)
    marker = os.environ["LCSEG_TEST_HELD"]
    with open(marker + ".part", "w") as fh:
        fh.write(str(path))
    os.replace(marker + ".part", marker)
    time.sleep(300)


def _patch_store(mod):
    write = mod.StoreWriter.write

    def held_write(self, *args, **kwargs):
        write(self, *args, **kwargs)
        if HOLD in str(self.path):
            _hold(self.path)

    mod.StoreWriter.write = held_write


def _patch_evaluate(mod):
    plot = mod.plot_per_class_iou

    def held_plot(result, path):
        plot(result, path)
        if HOLD in str(path):
            _hold(path)

    mod.plot_per_class_iou = held_plot


PATCHES = {
    "lcseg_steps.stores.layout": _patch_store,
    "lcseg_steps.stages.evaluate": _patch_evaluate,
}


class _PatchAfterImport:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if HOLD:
    sys.meta_path.insert(0, _PatchAfterImport())
"""


# stage -> the hook holds the writes whose path contains this
CRASHES = {
    "extract": "/features/",
    "fit_dataset": "/dataset_level.zarr",
    "refine": "/pixel_masks/",
    "evaluate": "/per_class_iou.png",
}
EVALUATE_OUTPUTS = ("metrics.json", "per_class_iou.png", "confusion.png")


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies excluded)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(Path(stat).parent.name))
    return out


def _kill_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while alive := _live_members(proc.pid):
        assert time.monotonic() < deadline, f"processes {alive} outlived SIGKILL of their group"
        time.sleep(0.02)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text()[-n:] if path.exists() else ""


def crash_in(wd: Path, cfg: Path, hook: Path, stage: str, timeout: float = 180.0) -> str:
    """Run the pipeline with ``stage`` held once it has data on disk, and SIGKILL the whole
    process group as soon as it is held. Returns the held path (relative to ``wd``)."""
    marker = wd / f"held-{stage}"
    env = dict(os.environ, LCSEG_TEST_HOLD=CRASHES[stage], LCSEG_TEST_HELD=str(marker))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
    cmd = [os.path.join(BIN, "snakemake"), "-s", os.path.join(REPO, "Snakefile")]
    cmd += ["--directory", str(wd), "--configfile", str(cfg), "--cores", "2"]
    log = wd / f"snakemake-crash-in-{stage}.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(
                    f"snakemake exited ({proc.returncode}) before {stage} ran:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{stage} not running after {timeout:.0f}s:\n{_tail(log)}")
            time.sleep(0.01)
    finally:
        _kill_group(proc)
    return marker.read_text()


def killed_outputs(wd: Path, stage: str, held: str) -> tuple[list[str], list[str]]:
    """(final outputs of the killed job, its data on disk), relative to the working
    directory: a store's chunks in its tmp sibling, or evaluate's first plot."""
    if stage == "evaluate":
        outputs = [str(Path(held).with_name(n)) for n in EVALUATE_OUTPUTS if n not in held]
        return outputs, [held]
    return [held], sorted(glob.glob(f"{glob.escape(held)}.tmp-*/*/c/*", root_dir=wd))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory, TINY)


@pytest.fixture(scope="module")
def reference_snapshot(reference):
    return snapshot(reference / "results")


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, reference_snapshot):
    """Crash once in each stage of CRASHES, then resume to the end. Returns the working
    directory and, per stage, what the kill left behind."""
    wd = tmp_path_factory.mktemp("crashed")
    hook = wd / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    cfg = wd / "config.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    seen = {}
    for stage in CRASHES:
        if seen:  # a killed Snakemake leaves its lock; the documented way out
            r = snakemake(wd, TINY, "--unlock")
            assert r.returncode == 0, r.stderr[-2000:]
        held = crash_in(wd, cfg, hook, stage)
        outputs, data = killed_outputs(wd, stage, held)
        finals = {}  # every finished store on disk right after the kill
        for store in sorted((wd / "results").rglob("*.zarr")):
            key = str(store.relative_to(wd / "results"))
            finals[key] = store_digest(store)
        seen[stage] = {
            "held": held,
            "outputs": outputs,
            "data": [d for d in data if (wd / d).exists()],
            "present": [o for o in outputs if (wd / o).exists()],
            "finals": finals,
        }
    r = snakemake(wd, TINY, "--unlock")
    assert r.returncode == 0, r.stderr[-2000:]
    # evaluate's plots exist but the job never finished: a plain rerun must refuse them
    refused = snakemake(wd, TINY)
    resumed = snakemake(wd, TINY, "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {"wd": wd, "seen": seen, "refused": refused}


@pytest.mark.parametrize("stage", list(CRASHES))
def test_a_killed_stage_leaves_no_complete_looking_output(crashed, reference_snapshot, stage):
    seen = crashed["seen"][stage]
    # part-way: the kill came after the stage had put data on disk
    assert seen["outputs"] and seen["data"], seen
    assert seen["present"] == [], f"{stage} was killed, yet {seen['present']} exist"
    # every store that does exist after the kill is complete: equal to the reference
    ref = {s: (dict(), reference_snapshot.attrs[s]) for s in reference_snapshot.stores}
    for key, arr in reference_snapshot.arrays.items():
        store, name = key.split("::")
        ref[store][0][name] = arr
    for store, digest in seen["finals"].items():
        assert store in ref, f"after killing {stage}: unexpected store {store}"
        assert digest == ref[store], f"after killing {stage}: {store} differs from the reference"


def test_the_resumed_jobs_removed_what_the_killed_ones_left(crashed):
    # each kill left its half store as <store>.tmp-<host>-<pid> (that is where the
    # chunks counted as "data" sat); the job that rewrote the store removed it
    killed = sorted(o for s in crashed["seen"].values() for o in s["outputs"] if ".zarr" in o)
    assert len(killed) == 3
    for stage, seen in crashed["seen"].items():
        if stage != "evaluate":
            assert any(".zarr.tmp-" in d for d in seen["data"]), (stage, seen["data"])
    assert snapshot(crashed["wd"] / "results").leftovers == []


def test_a_half_written_evaluate_is_not_taken_as_complete(crashed):
    r = crashed["refused"]
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "incomplete" in out.lower() and "per_class_iou.png" in out, out[-2000:]


def test_resumed_run_equals_an_uninterrupted_one(crashed, reference_snapshot):
    ref, got = reference_snapshot, snapshot(crashed["wd"] / "results")
    # the comparison is not vacuous: every kind of store and the scores are there
    assert {"features", "image_level", "dataset_level", "pixel_masks", "semantic"} <= store_kinds(
        ref
    )
    assert "tiny/seed0/metrics.json" in ref.files and len(ref.arrays) > 100
    assert differences(ref, got) == []
    assert got.files["tiny/seed0/metrics.json"] == ref.files["tiny/seed0/metrics.json"]
