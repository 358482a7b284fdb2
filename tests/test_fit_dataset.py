"""The fit_dataset stage (``run_fit_dataset``) on the planted shards of conftest.py's
``pipeline``."""

import numpy as np

from lcseg_steps.stores.layout import open_store, read_ids
from tests.planted_shards import D


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
