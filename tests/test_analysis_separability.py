"""Foreground/background separability against sklearn's ROC-AUC, loops and brute force."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lcseg_steps.clustering.kmeans import kmeans_ranges
from lcseg_steps.data.image_table import ImageRecord, read_index, write_index
from lcseg_steps.data.palette import write_label_png
from lcseg_steps.stages import separability as separability_mod
from lcseg_steps.stages.separability import (
    IOU_BINS,
    SCORE_BINS,
    SUMMARY_KEYS,
    VOID,
    best_assignment_iou,
    best_split_iou,
    centroid_scores,
    histogram,
    patch_ground_truth,
    patch_ground_truths,
    pool_separability,
    pooled_auc,
    roc_auc,
    separability,
    store_separability,
)
from lcseg_steps.stores.layout import open_store, write_store
from tests.helpers import stage_job


def test_patch_ground_truth_by_hand():
    # 4x4 pixels on a 2x2 grid: 2x2 pixels per patch
    gt = np.array(
        [
            [3, 3, 3, 0],  # patch (0,0): all class 3 -> fg
            [3, 3, 255, 3],  # patch (0,1): 2 fg, 1 bg, 1 void -> 2 of 3 valid -> fg
            [7, 0, 255, 255],  # patch (1,0): 1 fg, 1 bg, 2 void -> a tie -> bg
            [255, 255, 255, 255],  # patch (1,1): all void -> ignored
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(patch_ground_truth(gt, (2, 2)), [1, 1, 0, -1])
    assert patch_ground_truth(gt, (2, 2)).dtype == np.int8
    # 5x3 pixels on a 2x2 grid: rows 0-2 | 3-4 (floor(y * 2 / 5)), cols 0-1 | 2
    gt = np.zeros((5, 3), dtype=np.uint8)
    gt[3:, 2] = 1  # patch (1,1) all fg
    gt[:3, :2] = [[1, 1], [1, 0], [0, 0]]  # patch (0,0): 3 of 6 fg -> a tie -> bg
    gt[2, 2] = 1  # patch (0,1): 1 of 3 -> bg
    np.testing.assert_array_equal(patch_ground_truth(gt, (2, 2)), [0, 0, 0, 1])
    np.testing.assert_array_equal(patch_ground_truth(None, (2, 3)), [-1] * 6)
    with pytest.raises(ValueError, match="cover"):
        patch_ground_truth(np.zeros((1, 4)), (2, 2))


def test_patch_ground_truth_against_loops():
    rng = np.random.default_rng(0)
    for H, W, gh, gw in [(37, 50, 3, 4), (16, 16, 4, 4), (9, 30, 2, 7)]:
        gt = rng.choice([0, 0, 5, 255], size=(H, W)).astype(np.uint8)
        want = []
        for r in range(gh):
            for c in range(gw):
                px = [
                    gt[y, x]
                    for y in range(H)
                    for x in range(W)
                    if y * gh // H == r and x * gw // W == c
                ]
                valid = [p for p in px if p != 255]
                fg = sum(1 for p in valid if p != 0)
                want.append(-1 if not valid else int(fg > len(valid) / 2))
        np.testing.assert_array_equal(patch_ground_truth(gt, (gh, gw)), want)


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for n in (5, 40, 300):
        y = rng.random(n) < 0.3
        y[0], y[1] = True, False
        s = np.round(rng.standard_normal(n) + y, 1)  # rounded: many ties
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(roc_auc([0.1, 0.2], [True, True]))


def planted(rng, sizes, D=8, noise=0.4):
    """Images whose fg patches come from one direction and bg from another."""
    a, b = np.eye(D)[:2]
    xs, gts = [], []
    for s in sizes:
        g = (rng.random(s) < 0.4).astype(np.int8)
        g[rng.random(s) < 0.1] = -1
        xs.append(np.where(g[:, None] == 1, a, b) + noise * rng.standard_normal((s, D)))
        gts.append(g)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    X = np.concatenate(xs) if xs else np.zeros((0, D))
    return X, offsets, np.concatenate(gts)


def ref_scores(X, offsets, g):
    out = np.full(len(X), np.nan)
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        fg = [p for p in range(lo, hi) if g[p] == 1]
        bg = [p for p in range(lo, hi) if g[p] == 0]
        if not fg or not bg:
            continue
        unit = [X[p] / np.linalg.norm(X[p]) for p in range(lo, hi)]
        c_fg = sum(unit[p - lo] for p in fg) / len(fg)
        c_bg = sum(unit[p - lo] for p in bg) / len(bg)
        for p in range(lo, hi):
            u = unit[p - lo]
            out[p] = u @ c_fg / np.linalg.norm(c_fg) - u @ c_bg / np.linalg.norm(c_bg)
    return out


def test_centroid_scores_and_pooled_auc():
    rng = np.random.default_rng(2)
    X, offsets, g = planted(rng, [20, 0, 15, 3, 30])
    g[offsets[3] : offsets[4]] = 0  # an image without fg: no score
    s = centroid_scores(X.astype(np.float16), offsets, g)
    np.testing.assert_allclose(s, ref_scores(X.astype(np.float16).astype(float), offsets, g))
    assert np.isnan(s[offsets[3] : offsets[4]]).all()
    use = (g != -1) & np.isfinite(s)
    assert pooled_auc(s, g) == pytest.approx(roc_auc_score(g[use] == 1, s[use]), abs=1e-12)
    assert 0.9 < pooled_auc(s, g) <= 1.0


def brute_best_iou(labels, g):
    lab = [int(v) for v, t in zip(labels, g, strict=True) if t != -1]
    truth = {i for i, t in enumerate([t for t in g if t != -1]) if t == 1}
    if not truth:
        return float("nan")
    best = -1.0
    for fg_cluster in (0, 1):
        pred = {i for i, v in enumerate(lab) if v == fg_cluster}
        best = max(best, len(pred & truth) / len(pred | truth))
    return best


def test_best_split_iou_against_brute_force():
    rng = np.random.default_rng(3)
    X, offsets, g = planted(rng, [25, 1, 0, 12, 40, 9], noise=0.4)
    g[offsets[5] : offsets[6]] = 0  # no fg: NaN
    labels, iou = best_split_iou(X, offsets, g, seed=4)
    assert labels.dtype == np.int16 and iou.shape == (6,)
    ref = kmeans_ranges(
        X[np.r_[0:25, 26 : len(X)]], 2, offsets=np.array([0, 25, 37, 77, 86]), max_iter=30, seed=4
    )
    np.testing.assert_array_equal(labels[np.r_[0:25, 26 : len(X)]], ref.labels)
    for i in range(6):
        lo, hi = offsets[i], offsets[i + 1]
        if hi - lo < 2 or i == 5:
            assert np.isnan(iou[i])
            continue
        assert iou[i] == pytest.approx(brute_best_iou(labels[lo:hi], g[lo:hi]))
    # noisy enough that no split is perfect, planted enough that every split is good
    assert 0.6 < np.nanmin(iou) and np.nanmax(iou) < 1.0


def test_best_assignment_iou_k3_subsets():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    g = np.array([1, 1, 1, 0, 0, -1, 0])
    # {0}: 2/3; {0,1}: 3/4 (pred 0,1,2,3; truth 0,1,2); {1}: 1/4; ...
    iou, subset = best_assignment_iou(labels, g, 3)
    assert subset == (0, 1) and iou == pytest.approx(0.75)
    best = max(
        np.sum(np.isin(labels, s) & (g == 1)) / np.sum((np.isin(labels, s) | (g == 1)) & (g != -1))
        for n in (1, 2)
        for s in itertools.combinations(range(3), n)
    )
    assert iou == pytest.approx(best)


def test_histogram_counts_fixed_bins():
    v = np.array([-2.0, -1.95, -0.05, 0.0, 0.04, 1.99, 2.0, np.nan, 3.0])
    h = histogram(v, SCORE_BINS)
    assert h.shape == (40,) and h.sum() == 7  # NaN and 3.0 are outside
    want = np.zeros(40, dtype=np.int64)
    for x in v[np.isfinite(v) & (np.abs(v) <= 2)]:
        want[min(int(np.floor(round((x + 2) / 0.1, 9))), 39)] += 1
    np.testing.assert_array_equal(h, want)
    assert histogram([0.0, 1.0, 0.5], IOU_BINS).tolist() == [1] + [0] * 9 + [1] + [0] * 8 + [1]


def test_separability_summary_and_store(tmp_path):
    rng = np.random.default_rng(5)
    grids = np.array([[3, 4], [2, 5], [4, 4]], dtype=np.int32)
    sizes = grids.prod(axis=1)
    X, offsets, _ = planted(rng, list(sizes))
    gts = []
    for gh, gw in grids:  # pixel maps, 8x8 pixels per patch: left half fg, class 9
        m = np.zeros((8 * gh, 8 * gw), dtype=np.uint8)
        m[:, : 4 * gw] = 9
        gts.append(m)
    gts[2] = None  # unlabelled
    g = patch_ground_truths(gts, grids)
    # features follow the ground truth
    X = np.where((g == 1)[:, None], np.eye(8)[0], np.eye(8)[1]) + 0.3 * rng.standard_normal(X.shape)
    out = separability(X, offsets, g, seed=0)
    assert out["auc"] == pytest.approx(pooled_auc(centroid_scores(X, offsets, g), g))
    assert out["n_images_scored"] == 2 and out["n_patches_scored"] == 22
    # image 0: 2 of 4 columns fg (3 x 2); image 1: columns 0-1 of 5 (column 2 is a tie, bg)
    assert out["score_hist_fg"].sum() == 6 + 4 and out["score_hist_bg"].sum() == 6 + 6
    assert out["iou_hist"].sum() == 2 and np.isnan(out["iou"][2])
    assert out["mean_iou"] == pytest.approx(np.nanmean(out["iou"]))
    path = write_store(
        tmp_path / "f.zarr",
        {
            "k": X.astype(np.float16),
            "offsets": offsets,
            "grid": grids,
            "image_ids": np.array(list("abc")),
        },
    )
    st = store_separability(path, gts, "k", seed=0)
    assert st["auc"] == pytest.approx(out["auc"], abs=1e-3)
    with pytest.raises(ValueError, match="2 ground-truth maps for 3 images"):
        store_separability(path, gts[:2], "k")


def _extraction(tmp_path, rng):
    """Two shard stores (q/k/v; k follows the ground truth, q and v are noise), their
    gt PNGs (8x8 pixels per patch, the left half of each image class 3) and the index;
    image c has no ground truth."""
    shards = {"s0000": {"a": (3, 4), "b": (2, 5)}, "s0001": {"c": (4, 4), "d": (3, 3)}}
    records, stores, gts = [], [], {}
    for shard, images in shards.items():
        grids = np.array(list(images.values()), dtype=np.int32)
        maps = []
        for image_id, (gh, gw) in images.items():
            m = np.zeros((8 * gh, 8 * gw), dtype=np.uint8)
            m[:, : 4 * gw] = 3
            m[0, :] = VOID
            gt = ""
            if image_id != "c":
                gt = str(tmp_path / "gt" / f"{image_id}.png")
                write_label_png(gt, m)
                gts[image_id] = m
            maps.append(m if gt else None)
            records.append(ImageRecord(image_id, f"/img/{image_id}.jpg", gt, 8 * gh, 8 * gw, shard))
        g = patch_ground_truths(maps, grids)
        n = len(g)
        k = np.where((g == 1)[:, None], np.eye(8)[0], np.eye(8)[1]) + 0.3 * rng.standard_normal(
            (n, 8)
        )
        arrays = {name: rng.standard_normal((n, 8)).astype(np.float16) for name in "qv"}
        stores.append(
            write_store(
                tmp_path / "features" / f"{shard}.zarr",
                {
                    **arrays,
                    "k": k.astype(np.float16),
                    "offsets": np.concatenate([[0], np.cumsum(grids.prod(axis=1))]),
                    "grid": grids,
                    "image_ids": np.array(list(images)),
                },
            )
        )
    index = tmp_path / "images.tsv"
    write_index(records[::-1], index)  # the store's order, not the index's, decides
    return index, stores, gts


def test_run_pools_the_shards_into_json(tmp_path):
    rng = np.random.default_rng(6)
    index, stores, gts = _extraction(tmp_path, rng)
    settings = {
        "features": ["q", "k", "v"],
        "k_image": 2,
        "max_iter": 30,
        "tol": 1e-4,
        "seed": 0,
        "backbone": "dino_vits16",
        "layer": 11,
    }
    job = stage_job({"index": str(index), "features": stores}, tmp_path / "sep.json", settings)
    separability_mod.run(job)
    out = json.loads((tmp_path / "sep.json").read_text())
    assert out["backbone"] == "dino_vits16" and out["layer"] == 11
    assert list(out["per_feature"]) == ["q", "k", "v"]
    # one separability over all images at once (image c: no ground truth)
    shard_gts = [[gts["a"], gts["b"]], [None, gts["d"]]]
    parts = [store_separability(p, g, "k", seed=0) for p, g in zip(stores, shard_gts, strict=True)]
    X = np.concatenate([np.asarray(open_store(p)["k"][:]) for p in stores])
    grids = np.concatenate([np.asarray(open_store(p)["grid"][:]) for p in stores])
    offsets = np.concatenate([[0], np.cumsum(grids.prod(axis=1))])
    whole = separability(X, offsets, patch_ground_truths(sum(shard_gts, []), grids), seed=0)
    k = out["per_feature"]["k"]
    assert set(k) == set(SUMMARY_KEYS)
    assert k["auc"] == pytest.approx(whole["auc"], abs=1e-12) and k["auc"] > 0.9
    iou = np.concatenate([p["iou"] for p in parts])
    assert k["mean_iou"] == pytest.approx(np.nanmean(iou))
    assert k["n_images_scored"] == whole["n_images_scored"] == 3
    assert k["n_patches_scored"] == whole["n_patches_scored"]
    for key in ("score_hist_fg", "score_hist_bg"):
        assert k[key] == whole[key].tolist()
    assert k["iou_hist"] == (parts[0]["iou_hist"] + parts[1]["iou_hist"]).tolist()
    assert k["score_bins"] == pytest.approx(SCORE_BINS.tolist())
    assert k["iou_bins"] == pytest.approx(IOU_BINS.tolist())
    assert sum(k["iou_hist"]) == 3


def test_run_without_ground_truth_writes_null(tmp_path):
    rng = np.random.default_rng(7)
    index, stores, _ = _extraction(tmp_path, rng)
    records = [replace(r, gt="") for r in read_index(index)]
    write_index(records, index)
    settings = {"features": ["k"], "k_image": 3, "max_iter": 10, "tol": 1e-4, "seed": 1}
    settings |= {"backbone": "b", "layer": 4}
    # one shard: Snakemake gives a single input file as a plain string
    separability_mod.run(
        stage_job({"index": index, "features": stores[0]}, tmp_path / "s.json", settings)
    )
    k = json.loads((tmp_path / "s.json").read_text())["per_feature"]["k"]
    assert k["auc"] is None and k["mean_iou"] is None
    assert k["n_images_scored"] == 0 and sum(k["score_hist_fg"]) == 0


def test_pool_separability_with_k3_matches_brute_force():
    rng = np.random.default_rng(8)
    X, offsets, g = planted(rng, [20, 2, 30])
    out = separability(X, offsets, g, k=3, seed=0)
    assert np.isnan(out["iou"][1])  # 2 patches < k
    for i in (0, 2):
        lo, hi = offsets[i], offsets[i + 1]
        assert out["iou"][i] == pytest.approx(
            best_assignment_iou(out["labels"][lo:hi], g[lo:hi], 3)[0]
        )
    pooled = pool_separability([out])
    assert pooled["auc"] == out["auc"] and pooled["mean_iou"] == out["mean_iou"]
    with pytest.raises(ValueError, match="k >= 2"):
        best_split_iou(X, offsets, g, k=1)
