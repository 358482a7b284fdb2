"""The segment stage (``run_segment``) on the hand-made shard of conftest.py."""

from __future__ import annotations

import numpy as np
import pytest

from lcseg_steps.data.palette import read_label_png
from lcseg_steps.stages.assign import run_assign
from lcseg_steps.stages.evaluate import run_evaluate
from lcseg_steps.stages.objects import run_objects
from lcseg_steps.stages.segment import run_segment
from lcseg_steps.stores.layout import open_store, pixel_layout, pixel_map, read_ids, write_store
from tests.hand_shard import ATTRS, OBJ_KW, SHARD, SIZES, D, _classes_store, _quiet


def test_no_regions_segment_predicts_background(shard, tmp_path):
    """All-background masks: objects finds no region, assign (empty_ok) writes an empty
    classes store, segment predicts background everywhere and evaluate scores it."""
    lay = pixel_layout([np.zeros(s, np.uint8) for s in SIZES.values()])
    px = write_store(
        tmp_path / "px.zarr",
        {"mask": lay["flat"], **{k: lay[k] for k in ("pixel_offsets", "sizes")}}
        | {"image_ids": np.array(list(SIZES))},
    )
    records = list(shard["records"].values())
    ob = run_objects(
        px,
        shard["features"],
        records,
        tmp_path / "ob.zarr",
        descriptor="masked_keys",
        backbone={},
        log=_quiet,
        **OBJ_KW,
    )
    assert open_store(ob)["descriptors"].shape == (0, D)
    cl = run_assign(
        [ob],
        [SHARD],
        tmp_path / "cl.zarr",
        n_classes=2,
        class_clusterer="spectral",
        n_neighbors=5,
        fit_sample=20000,
        seed=0,
        empty_ok=True,
        attrs=ATTRS,
        log=_quiet,
    )
    assert open_store(cl)["labels"].shape == (0,)
    sem = run_segment(ob, cl, SHARD, tmp_path / "sem.zarr", tmp_path / "pred", attrs=ATTRS)
    st = open_store(sem)
    for i, size in enumerate(SIZES.values()):
        sem_map = pixel_map(st, "semantic", i)
        assert sem_map.shape == size and not sem_map.any()
    metrics = run_evaluate(
        [sem],
        records,
        tmp_path / "m.json",
        tmp_path / "iou.png",
        tmp_path / "conf.png",
        class_names=["background", "one", "two"],
        n_classes=2,
        matching="hungarian",
        facts={},
        log=_quiet,
    )
    assert 0 < metrics["per_class_iou"]["background"] < 1
    assert metrics["per_class_iou"]["one"] == 0 and metrics["per_class_iou"]["two"] == 0


def test_segment_maps_regions_to_class_plus_one(shard, objects_store, tmp_path):
    classes = _classes_store(tmp_path / "classes.zarr")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    (pred_dir / "stale.png").write_bytes(b"old")  # a previous run's leftover
    out = run_segment(
        objects_store, classes, SHARD, tmp_path / "sem.zarr", pred_dir, attrs=ATTRS, log=_quiet
    )
    st = open_store(out)
    assert list(read_ids(st)) == list(SIZES)
    assert sorted(p.name for p in pred_dir.iterdir()) == [f"{i}.png" for i in SIZES]

    # expected maps from the hand-made masks: a0's B (region 1) -> class 2 -> 3,
    # a0's A with its diagonal pixel (region 2) -> class 0 -> 1, the dot stays 0;
    # a1's block -> class 1 -> 2; a2 all background
    want = {i: np.zeros(s, np.uint8) for i, s in SIZES.items()}
    want["a0"][8:32, 32:48] = 3
    want["a0"][8:24, 8:24] = 1
    want["a0"][24, 24] = 1
    want["a1"][16:40, 0:24] = 2
    for i, image_id in enumerate(SIZES):
        sem = pixel_map(st, "semantic", i)
        np.testing.assert_array_equal(sem, want[image_id])
        np.testing.assert_array_equal(read_label_png(pred_dir / f"{image_id}.png"), sem)


def test_segment_unknown_shard_and_count_mismatch(shard, objects_store, tmp_path):
    classes = _classes_store(tmp_path / "classes.zarr")
    with pytest.raises(KeyError, match="s0042"):
        run_segment(
            objects_store, classes, "s0042", tmp_path / "s.zarr", tmp_path / "p", attrs=ATTRS
        )
    bad = write_store(
        tmp_path / "bad.zarr",
        {
            "labels": np.array([0, 1], dtype=np.int64),
            "region_offsets": np.array([0, 2]),
            "shards": np.array([SHARD]),
        },
    )
    with pytest.raises(ValueError, match="2 classes for 3 regions"):
        run_segment(objects_store, bad, SHARD, tmp_path / "s.zarr", tmp_path / "p", attrs=ATTRS)
