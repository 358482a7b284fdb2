"""Determinism, as docs/reliability.md promises it:

- two runs of the same config and seed, in two folders with the same thread count, are
  byte-identical in every Zarr array, the store attrs (absolute paths and timings
  masked), the scores and every other output;
- the floating-point arrays that come out of a forward pass (``features`` and the
  ``objects`` descriptors) agree across thread counts within a stated tolerance, not
  bitwise: BLAS and oneDNN split their sums by thread count on some CPUs;
- everything lcseg computes itself from those arrays (clusters, masks, CRF, classes,
  predictions, scores) is byte-identical across thread counts given the same inputs;
- a different ``seeds:`` value gives a different clustering of the same features.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lcseg_steps.stores.layout import open_store, write_store
from tests.helpers import TINY, assert_forward_close, scheduled, snakemake
from tests.store_hashes import differences, reference_run, snapshot, store_kinds

# the copied stores hold Snakemake's .snakemake_timestamp, which is no Zarr member
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:.*snakemake_timestamp")]

SHARDS = ("s0000", "s0001")


def run_elsewhere(tmp_path_factory, name: str, *args: str):
    wd = tmp_path_factory.mktemp(name)
    r = snakemake(wd, TINY, *args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return wd, snapshot(wd / "results")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    wd = reference_run(tmp_path_factory, TINY)
    return wd, snapshot(wd / "results")


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    return run_elsewhere(tmp_path_factory, "second")


def test_two_runs_are_byte_identical(first, second):
    a, b = first[1], second[1]
    # not vacuous: every kind of store, the scores and the predictions are compared
    kinds = {"features", "image_level", "dataset_level", "category_level", "patch_masks"}
    kinds |= {"pixel_masks", "objects", "classes", "semantic", "model"}
    assert store_kinds(a) == kinds, store_kinds(a)
    assert len(a.arrays) > 100 and a.array_bytes > 100_000
    assert {"tiny/seed0/metrics.json", "tiny/metrics_summary.json"} <= set(a.files)
    assert any(f.startswith("tiny/seed0/pred/") for f in a.files)
    assert differences(a, b) == []
    assert a.files["tiny/seed0/metrics.json"] == b.files["tiny/seed0/metrics.json"]


def assert_forward_pass_close(a: Path, b: Path) -> int:
    """Every array of store ``a`` against store ``b``: integer and string arrays equal,
    float arrays within the forward-pass tolerance. Returns how many float arrays."""
    sa, sb = open_store(a), open_store(b)
    assert sorted(sa.array_keys()) == sorted(sb.array_keys()), (a, b)
    n_float = 0
    for name in sa.array_keys():
        x, y = np.asarray(sa[name][...]), np.asarray(sb[name][...])
        assert x.dtype == y.dtype and x.shape == y.shape, (a, name)
        if x.dtype.kind != "f":
            assert np.array_equal(x, y), (a, name)
            continue
        n_float += 1
        assert_forward_close(x, y, f"{a}::{name}")
    return n_float


def replace_store(src: Path, dst: Path) -> None:
    """``dst`` becomes a fresh copy of ``src`` (new mtimes, so Snakemake sees it as newer
    than what it was made from, and reruns what depends on it)."""
    shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=shutil.copy)


def test_one_core_gives_the_same_results_as_two(first, tmp_path_factory):
    # every rule asks for 2 threads; with --cores 1 it gets 1 (torch, BLAS, CRF pool).
    # Each forward-pass stage runs on one core and is compared within tolerance; then
    # the reference's bytes replace its output, so that what follows runs on one core
    # from the same inputs and must equal the reference bit for bit.
    ref = first[0] / "results" / "tiny"
    wd = tmp_path_factory.mktemp("one_core")
    res = wd / "results" / "tiny"
    features = [f"results/tiny/features/{s}.zarr" for s in SHARDS]
    r = snakemake(wd, TINY, "--cores", "1", *features)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert scheduled(r).get("extract") == len(SHARDS)
    n_float = 0
    for s in SHARDS:
        n_float += assert_forward_pass_close(res / f"features/{s}.zarr", ref / f"features/{s}.zarr")
        replace_store(ref / f"features/{s}.zarr", res / f"features/{s}.zarr")
    objects = [f"results/tiny/seed0/objects/{s}.zarr" for s in SHARDS]
    r = snakemake(wd, TINY, "--cores", "1", *objects)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "extract" not in scheduled(r), "the copied features were recomputed"
    for s in SHARDS:
        n_float += assert_forward_pass_close(
            res / f"seed0/objects/{s}.zarr", ref / f"seed0/objects/{s}.zarr"
        )
        replace_store(ref / f"seed0/objects/{s}.zarr", res / f"seed0/objects/{s}.zarr")
    assert n_float >= 4 * len(SHARDS)  # q, k, v, cls and the descriptors at least
    r = snakemake(wd, TINY, "--cores", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = scheduled(r)
    assert "extract" not in jobs and "objects" not in jobs, jobs
    assert jobs.get("assign") == 1, jobs  # the replaced descriptors are clustered again
    assert "1 process(es)" in (res / "logs/seed0/refine/s0000.log").read_text()
    assert differences(first[1], snapshot(wd / "results")) == []


def test_the_fingerprint_sees_one_changed_value_but_not_paths_or_timings(tmp_path):
    base = {"x": np.arange(1000, dtype=np.float32), "ids": np.array(["a", "b"], dtype=object)}
    attrs = {"settings": {"k": 2}, "root": str(tmp_path / "one"), "elapsed_s": 1.5}
    for name, arrays, extra in (
        ("a", base, {}),
        ("b", base, {"root": str(tmp_path / "two"), "elapsed_s": 2.5}),  # masked
        ("c", {**base, "x": np.where(base["x"] == 500, 500.5, base["x"])}, {}),
        ("d", {**base, "ids": np.array(["a", "c"], dtype=object)}, {}),
        ("e", base, {"settings": {"k": 3}}),
    ):
        write_store(tmp_path / name / "s.zarr", arrays, {**attrs, **extra})
    snaps = {name: snapshot(tmp_path / name) for name in "abcde"}
    assert len(snaps["a"].arrays) == 2 and snaps["a"].array_bytes == 4000 + len('["a", "b"]')
    assert differences(snaps["a"], snaps["b"]) == []
    assert [d.split(":")[0] for d in differences(snaps["a"], snaps["c"])] == ["array s.zarr"]
    assert differences(snaps["a"], snaps["d"])[0].startswith("array s.zarr::ids")
    assert differences(snaps["a"], snaps["e"])[0].startswith("attrs of s.zarr")


def same_partition(a, b) -> bool:
    """Whether labelings ``a`` and ``b`` group the items alike, whatever the label names."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def per_patch(results: Path, seed: int, store: str, name: str) -> np.ndarray:
    """Array ``name`` of all shards' ``store`` of one seed, concatenated."""
    return np.concatenate(
        [open_store(results / f"seed{seed}" / store / f"{s}.zarr")[name][:] for s in SHARDS]
    )


def image_keys(results: Path, seed: int) -> np.ndarray:
    """Image-level cluster of every patch, made unique across images (image, label)."""
    labels, owners = [], []
    for i, s in enumerate(SHARDS):
        st = open_store(results / f"seed{seed}" / "image_level" / f"{s}.zarr")
        sizes = np.diff(st["offsets"][:])
        owners.append(np.repeat(np.arange(len(sizes)) + 1000 * i, sizes))
        labels.append(st["labels"][:])
    return np.concatenate(owners) * 1000 + np.concatenate(labels)


def test_a_different_seed_gives_a_different_clustering(second):
    wd, _ = second  # snapshot taken already: adding seed 1 here changes no comparison
    res = wd / "results" / "tiny"
    targets = [f"results/tiny/seed1/patch_masks/{s}.zarr" for s in SHARDS]
    r = snakemake(wd, {**TINY, "seeds": [1]}, *targets)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = scheduled(r)
    # the features are seed-independent and reused; the clustering reruns
    assert jobs.get("image_level") == 2 and jobs.get("fit_dataset") == 1, jobs
    assert "extract" not in jobs, jobs

    labels = {seed: image_keys(res, seed) for seed in (0, 1)}
    perm = np.random.default_rng(0).permutation(labels[0].max() + 1)
    assert same_partition(
        labels[0], perm[labels[0]]
    )  # the check says "same" whatever the label names
    # image level: another k-means start splits some image's patches another way
    assert not same_partition(labels[0], labels[1])
    # dataset level: another partition of all patches
    ds = {seed: per_patch(res, seed, "patch_masks", "label_dataset") for seed in (0, 1)}
    assert not same_partition(ds[0], ds[1])
    # and it matters downstream: the merged foreground masks differ
    merged = {seed: per_patch(res, seed, "patch_masks", "merged") for seed in (0, 1)}
    assert not np.array_equal(merged[0], merged[1])
