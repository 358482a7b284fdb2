"""The image_level stage (``run_image_level``) on the planted shards of conftest.py's
``pipeline``."""

import numpy as np
import pytest

from lcseg_steps.stages.fit_dataset import run_fit_dataset
from lcseg_steps.stages.image_level import run_image_level
from lcseg_steps.stores.layout import open_store, write_store
from tests.planted_shards import COMMON, _check_ragged, _dirs, _iou, _make_shard


def test_image_level_store_layout(pipeline):
    for f, il in zip(pipeline["features"], pipeline["image_level"], strict=True):
        fs, s = open_store(f), open_store(il)
        N, n = fs["k"].shape[0], fs["grid"].shape[0]
        _check_ragged(s, fs)
        assert s["labels"].shape == (N,) and s["labels"].dtype == np.int16
        assert s["fg"].shape == (N,) and s["fg"].dtype == np.uint8
        assert s["fg_cluster"].shape == (n,) and s["objective"].shape == (n,)
        assert s.attrs["level"] == "image" and s.attrs["k"] == 2 and s.attrs["test"] is True


@pytest.mark.parametrize("clusterer", ["spectral", "ncut"])
def test_image_level_graph_clusterer_same_layout(pipeline, tmp_path, clusterer):
    f = pipeline["features"][0]
    out = run_image_level(
        f,
        tmp_path / "il.zarr",
        feature="k",
        k_image=2,
        fg_rule="attention",
        image_clusterer=clusterer,
        log=lambda _: None,
        **COMMON,
    )
    fs, s, ref = open_store(f), open_store(out), open_store(pipeline["image_level"][0])
    _check_ragged(s, fs)
    for name in ("labels", "fg", "fg_cluster", "objective"):
        assert s[name].shape == ref[name].shape and s[name].dtype == ref[name].dtype, name
    assert set(np.unique(s["labels"][:])) <= {0, 1}
    assert s.attrs["image_clusterer"] == clusterer and s.attrs["k"] == 2
    assert _iou(s["fg"][:], pipeline["truth"][0]) > 0.9


def test_missing_feature_names_store_and_config_key(pipeline, tmp_path):
    rng = np.random.default_rng(1)
    arrays, _, _ = _make_shard(rng, _dirs(rng), 0, 2, features=("k", "v"))
    path = write_store(tmp_path / "noq.zarr", arrays)
    with pytest.raises(ValueError, match="extract.store_features") as exc:
        run_image_level(
            path,
            tmp_path / "il.zarr",
            feature="q",
            image_clusterer="kmeans",
            k_image=2,
            fg_rule="border",
            **COMMON,
        )
    assert str(path) in str(exc.value) and "'q'" in str(exc.value)
    with pytest.raises(ValueError, match="extract.store_features") as exc:
        run_fit_dataset(
            [path],
            [pipeline["image_level"][0]],
            tmp_path / "ds.zarr",
            feature="q",
            k_dataset=2,
            fg_vote=0.5,
            init_sample=None,
            **COMMON,
        )
    assert str(path) in str(exc.value)
    assert not (tmp_path / "il.zarr").exists() and not (tmp_path / "ds.zarr").exists()
