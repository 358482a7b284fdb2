"""The store-to-store functions of the clustering stages (image_level, fit_dataset,
fit_category, merge; each in its stage module) on synthetic feature shards with a planted
foreground / background and category structure."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.fit_category import run_fit_category
from lcseg_steps.fit_dataset import run_fit_dataset
from lcseg_steps.image_level import run_image_level
from lcseg_steps.merge import run_merge
from lcseg_steps.store import open_store, read_ids, write_store
from tests.schema_defaults import default_config

D = 32
COMMON = {"max_iter": 30, "tol": 1e-4, "seed": 0, "device": "cpu", "attrs": {"test": True}}
RAGGED = ("offsets", "grid", "image_ids")


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _make_shard(rng, dirs, shard, n_images, features=("q", "k", "v")):
    """One feature shard in extract's layout; returns (arrays, planted fg (N,), category (n,)).

    Foreground: a rectangle off at least two image sides, its k near its category's
    direction; background near a shared direction; CLS near a category direction; CLS
    attention higher on the foreground.
    """
    feats = {f: [] for f in features}
    cls, attn, truth, grids, cats = [], [], [], [], []
    for i in range(n_images):
        cat = (i + shard) % 2
        gh, gw = int(rng.integers(6, 9)), int(rng.integers(6, 10))
        h, w = int(rng.integers(2, gh - 1)), int(rng.integers(2, gw - 1))
        r0, c0 = int(rng.integers(1, gh - h + 1)), int(rng.integers(1, gw - w + 1))
        fg = np.zeros((gh, gw), dtype=bool)
        fg[r0 : r0 + h, c0 : c0 + w] = True  # off the top and left sides at least
        fg = fg.ravel()
        n = gh * gw
        for f in features:
            base = np.where(fg[:, None], dirs[f"fg{cat}"], dirs["bg"])
            feats[f].append(base + 0.1 * rng.standard_normal((n, D)))
        cls.append(dirs[f"cls{cat}"] + 0.2 * rng.standard_normal(D))
        a = np.where(fg, 3.0, 1.0) + 0.5 * rng.random(n)
        attn.append(a / a.sum())
        truth.append(fg)
        grids.append((gh, gw))
        cats.append(cat)
    sizes = [g[0] * g[1] for g in grids]
    arrays = {f: np.concatenate(v).astype(np.float16) for f, v in feats.items()}
    arrays |= {
        "cls": np.stack(cls).astype(np.float16),
        "cls_attn": np.concatenate(attn).astype(np.float32),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "grid": np.asarray(grids, dtype=np.int32),
        "image_ids": np.array([f"s{shard}_img{i:02d}" for i in range(n_images)]),
    }
    return arrays, np.concatenate(truth), np.asarray(cats)


def _dirs(rng):
    names = ["bg", "fg0", "fg1", "cls0", "cls1"]
    return dict(zip(names, _unit(rng.standard_normal((len(names), D))), strict=True))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two shards of 6 images through image_level, fit_dataset, fit_category and merge."""
    tmp = tmp_path_factory.mktemp("levels")
    rng = np.random.default_rng(0)
    dirs = _dirs(rng)
    feats, ils, merged, truth, cats, logs = [], [], [], [], [], []
    for s in range(2):
        arrays, t, c = _make_shard(rng, dirs, s, 6)
        feats.append(write_store(tmp / f"features/s{s}.zarr", arrays, {"backbone": "fake"}))
        truth.append(t)
        cats.append(c)
    for s, f in enumerate(feats):
        ils.append(
            run_image_level(
                f,
                tmp / f"image_level/s{s}.zarr",
                feature="k",
                image_clusterer="kmeans",
                k_image=2,
                fg_rule="attention",
                log=logs.append,
                **COMMON,
            )
        )
    votes = {"fg_vote": 0.5, "feature": "k", "log": logs.append}
    ds = run_fit_dataset(
        feats, ils, tmp / "dataset_level.zarr", k_dataset=2, init_sample=None, **votes, **COMMON
    )
    cs = run_fit_category(
        feats,
        ils,
        tmp / "category_level.zarr",
        n_categories=2,
        category_clusterer="spectral",
        k_category=2,
        category_fit_sample=None,
        **votes,
        **COMMON,
    )
    for s, (f, il) in enumerate(zip(feats, ils, strict=True)):
        merged.append(
            run_merge(
                f,
                il,
                ds,
                cs,
                tmp / f"patch_masks/s{s}.zarr",
                feature="k",
                levels=["dataset", "category", "image"],
                consistency="vote",
                min_levels=2,
                attrs={"test": True},
                log=logs.append,
            )
        )
    return {
        "tmp": tmp,
        "features": feats,
        "image_level": ils,
        "dataset": ds,
        "category": cs,
        "merged": merged,
        "truth": truth,
        "cats": cats,
        "logs": logs,
    }


def _iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def _check_ragged(store, features):
    for name in RAGGED:
        assert name in store, name
    np.testing.assert_array_equal(store["offsets"][:], features["offsets"][:])
    np.testing.assert_array_equal(store["grid"][:], features["grid"][:])
    np.testing.assert_array_equal(read_ids(store), read_ids(features))


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


def test_merge_min_levels_beyond_enabled_levels_is_a_config_error():
    # checked once, on the config before any job (not again in merge)
    from lcseg_steps.settings import check_config

    cfg = default_config()
    cfg["clustering"].update(levels=["dataset", "image"], consistency="vote", min_levels=3)
    with pytest.raises(ValueError, match=r"clustering\.min_levels is 3 but only 2 level"):
        check_config(cfg)


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
