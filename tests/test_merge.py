"""The merge stage (``run_merge``) on the planted shards of conftest.py's ``pipeline``."""

import numpy as np
import pytest

from lcseg_steps.stages.merge import run_merge
from lcseg_steps.stores.layout import open_store
from tests.planted_shards import _check_ragged, _iou
from tests.schema_defaults import default_config


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


def test_merge_min_levels_beyond_enabled_levels_is_a_config_error():
    # checked once, on the config before any job (not again in merge)
    from lcseg_steps.runner.settings import check_config

    cfg = default_config()
    cfg["clustering"].update(levels=["dataset", "image"], consistency="vote", min_levels=3)
    with pytest.raises(ValueError, match=r"clustering\.min_levels is 3 but only 2 level"):
        check_config(cfg)
