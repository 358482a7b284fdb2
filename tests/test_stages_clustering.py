"""The store-to-store functions of the clustering stages (image_level, fit_dataset,
fit_category, merge; each in its stage module) on synthetic feature shards with a planted
foreground / background and category structure."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.merge import run_merge
from lcseg_steps.store import open_store, read_ids
from tests.planted_shards import D, _check_ragged, _iou


def test_dataset_and_category_store_layout(pipeline):
    ds, cs = open_store(pipeline["dataset"]), open_store(pipeline["category"])
    assert ds["centroids"].shape == (2, D)
    np.testing.assert_allclose(np.linalg.norm(ds["centroids"][:], axis=1), 1, atol=1e-5)
    assert ds["fg_clusters"].shape == (2,) and ds["fg_clusters"].dtype == bool
    assert ds["counts"].shape == (2, 2) and ds["fg_fraction"].shape == (2,)
    n_patches = sum(open_store(f)["k"].shape[0] for f in pipeline["features"])
    assert ds["counts"][:, 0].sum() == n_patches
    # the counts are [patches, image-level fg patches] of each centroid's nearest rows,
    # recomputed here by brute force per shard
    want = np.zeros((2, 2), dtype=np.int64)
    for f, il in zip(pipeline["features"], pipeline["image_level"], strict=True):
        x = open_store(f)["k"][:].astype(np.float64)
        lab = np.argmax((x / np.linalg.norm(x, axis=1, keepdims=True)) @ ds["centroids"][:].T, 1)
        fg = open_store(il)["fg"][:].astype(bool)
        for j in range(2):
            want[j] += [(lab == j).sum(), (fg & (lab == j)).sum()]
    np.testing.assert_array_equal(ds["counts"][:], want)
    # k=2 over the dataset: background and the foreground of both categories
    # (with k=3, single-candidate k-means++ often splits the background instead)
    assert ds["fg_clusters"][:].sum() == 1
    assert cs["centroids"].shape == (2, 2, D)
    assert cs["fg_clusters"].shape == (2, 2) and cs["counts"].shape == (2, 2, 2)
    assert cs["category"].shape == (12,) and cs["objective"].shape == (2,)
    np.testing.assert_array_equal(cs["fg_clusters"][:].sum(axis=1), [1, 1])
    ids = np.concatenate([read_ids(open_store(f)) for f in pipeline["features"]])
    np.testing.assert_array_equal(read_ids(cs), ids)


def test_category_assignment_recovers_planted_categories(pipeline):
    cs = open_store(pipeline["category"])
    planted = np.concatenate(pipeline["cats"])
    assert adjusted_rand_score(planted, cs["category"][:]) == 1.0


def test_merge_store_layout_and_recovery(pipeline):
    for f, m, t in zip(pipeline["features"], pipeline["merged"], pipeline["truth"], strict=True):
        fs, s = open_store(f), open_store(m)
        N = fs["k"].shape[0]
        _check_ragged(s, fs)
        for name in ("dataset", "category", "image"):
            assert s[f"mask_{name}"].shape == (N,) and s[f"label_{name}"].shape == (N,)
            # each level alone already finds the planted blobs in this easy setting
            assert _iou(s[f"mask_{name}"][:], t) > 0.9, name
        assert s["merged"].dtype == np.uint8 and s["score"].dtype == np.float32
        assert s["category"].shape == (fs["grid"].shape[0],)
        assert list(s.attrs["levels"]) == ["dataset", "category", "image"]
        assert _iou(s["merged"][:], t) > 0.9
        votes = sum(s[f"mask_{n}"][:].astype(int) for n in ("dataset", "category", "image"))
        np.testing.assert_array_equal(s["merged"][:], votes >= 2)
        np.testing.assert_allclose(s["score"][:], votes / 3, atol=1e-6)


def test_merge_image_level_only_union_is_the_image_mask(pipeline, tmp_path):
    f, il = pipeline["features"][0], pipeline["image_level"][0]
    out = run_merge(
        f,
        il,
        None,
        None,
        tmp_path / "pm.zarr",
        feature="k",
        levels=["image"],
        consistency="union",
        min_levels=2,
        attrs={},
        log=lambda _: None,
    )
    s = open_store(out)
    np.testing.assert_array_equal(s["merged"][:], open_store(il)["fg"][:])
    assert "mask_dataset" not in s and "mask_category" not in s


def test_merge_min_levels_beyond_enabled_levels_is_an_error(pipeline, tmp_path):
    with pytest.raises(ValueError, match="clustering.min_levels=3"):
        run_merge(
            pipeline["features"][0],
            pipeline["image_level"][0],
            pipeline["dataset"],
            None,
            tmp_path / "pm.zarr",
            feature="k",
            levels=["dataset", "image"],
            consistency="vote",
            min_levels=3,
            attrs={},
            log=lambda _: None,
        )
    assert not (tmp_path / "pm.zarr").exists()
