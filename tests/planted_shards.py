"""Synthetic feature shards with a planted foreground / background and category
structure, run through the clustering stages (image_level, fit_dataset, fit_category,
merge); conftest.py's ``pipeline`` fixture builds it once per session."""

import numpy as np

from lcseg_steps.stages.fit_category import run_fit_category
from lcseg_steps.stages.fit_dataset import run_fit_dataset
from lcseg_steps.stages.image_level import run_image_level
from lcseg_steps.stages.merge import run_merge
from lcseg_steps.stores.layout import read_ids, write_store

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


def make_pipeline(tmp):
    """Two shards of 6 images through image_level, fit_dataset, fit_category and merge."""
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
