"""The pure functions of the clustering levels against brute-force Python references."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.clustering.graph_split import bipartition
from lcseg_steps.clustering.kmeans import (
    NonFiniteError,
    kmeans,
    kmeans_plusplus,
    l2_normalize,
    nearest_centroid,
)
from lcseg_steps.clustering.levels import (
    border_sides,
    check_levels,
    fit_groups,
    foreground_clusters,
    image_level,
    merge_masks,
    pick_image_foreground,
    sample_rows_by_group,
    vote_counts,
)

CPU = {"device": "cpu"}
# levels.image_level's former defaults, now passed: what these tests always ran with
IMAGE = {
    "fg_rule": "attention",
    "max_iter": 20,
    "tol": 1e-4,
    "seed": 0,
    "image_clusterer": "kmeans",
}


# ---------------------------------------------------------------------------------------
# references


def ref_border_sides(gh, gw):
    out = np.zeros((4, gh * gw), dtype=bool)
    for r in range(gh):
        for c in range(gw):
            p = r * gw + c
            out[:, p] = [r == 0, r == gh - 1, c == 0, c == gw - 1]
    return out


def ref_pick(labels, grid, attn, k, rule):
    """Brute force over clusters; the first (lowest) cluster wins exact ties."""
    gh, gw = grid
    best, best_key = -1, None
    for c in range(k):
        members = [p for p in range(len(labels)) if labels[p] == c]
        if not members:
            continue
        mean = sum(float(attn[p]) for p in members) / len(members)
        if rule == "attention":
            key = (-mean,)
        else:
            rows = {p // gw for p in members}
            cols = {p % gw for p in members}
            touched = (0 in rows) + (gh - 1 in rows) + (0 in cols) + (gw - 1 in cols)
            on_border = sum(
                1
                for p in members
                if p // gw in (0, gh - 1) or p % gw in (0, gw - 1)  # any side
            )
            key = (touched, on_border, -mean)
        if best_key is None or key < best_key:
            best, best_key = c, key
    return best


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# image level


@pytest.mark.parametrize("grid", [(1, 1), (1, 6), (6, 1), (2, 2), (3, 5), (5, 3)])
def test_border_sides_matches_loop(grid):
    got = border_sides(grid)
    assert got.shape == (4, grid[0] * grid[1]) and got.dtype == bool
    np.testing.assert_array_equal(got, ref_border_sides(*grid))


def test_border_sides_degenerate_grids_touch_both_opposite_sides():
    # a single row is both the top and the bottom row; a single column both left and right
    assert border_sides((1, 4))[:2].all() and not border_sides((1, 4))[2:, 1:3].any()
    assert border_sides((4, 1))[2:].all() and not border_sides((4, 1))[:2, 1:3].any()


@pytest.mark.parametrize("rule", ["attention", "border"])
def test_pick_image_foreground_matches_brute_force(rule):
    rng = np.random.default_rng(0)
    n_checked = 0
    for trial in range(300):
        gh, gw = rng.integers(1, 6, size=2)
        k = int(rng.integers(1, 5))
        n = gh * gw
        labels = rng.integers(0, k, size=n)
        if trial % 3 == 0 and k > 1:
            e = rng.integers(0, k)
            labels[labels == e] = (e + 1) % k  # cluster e is empty
        # integer attention: exact sums, many exact ties, differences far above rounding
        attn = rng.integers(-3, 4, size=n).astype(np.float32)
        got = pick_image_foreground(labels, (int(gh), int(gw)), attn, k, rule)
        assert isinstance(got, int)
        assert got == ref_pick(labels, (gh, gw), attn, k, rule), (trial, labels, attn)
        n_checked += 1
    assert n_checked == 300


def test_pick_image_foreground_exact_ties_go_to_the_lowest_cluster():
    # left half / right half of a 4x4 grid: both touch 3 sides with 6 border patches
    labels = (np.arange(16) % 4 >= 2).astype(np.int64)
    attn = np.ones(16)
    for rule in ("attention", "border"):
        assert pick_image_foreground(labels, (4, 4), attn, 2, rule) == 0
        assert pick_image_foreground(1 - labels, (4, 4), attn, 2, rule) == 0


def test_pick_image_foreground_empty_cluster_never_wins():
    grid = (3, 3)
    labels = np.array([0, 0, 0, 0, 2, 0, 0, 0, 0])  # cluster 1 empty
    # negative attention everywhere: an empty cluster scored as mean 0 would win
    attn = np.full(9, -1.0)
    assert pick_image_foreground(labels, grid, attn, 3, "attention") in (0, 2)
    # an empty cluster touches no side and no border patch: it must still lose
    assert pick_image_foreground(labels, grid, attn, 3, "border") == 2
    # all patches in one cluster: it is the foreground, whatever the rule
    for rule in ("attention", "border"):
        assert pick_image_foreground(np.full(9, 1), grid, attn, 3, rule) == 1


def test_pick_image_foreground_border_prefers_the_framed_cluster():
    grid = (5, 5)
    labels = np.zeros(25, dtype=np.int64)
    centre = [6, 7, 8, 11, 12, 13, 16, 17, 18]
    labels[centre] = 1
    attn = np.zeros(25)  # attention favours neither
    assert pick_image_foreground(labels, grid, attn, 2, "border") == 1
    attn[:] = 1.0
    attn[centre] = 0.0  # attention favours the frame
    assert pick_image_foreground(labels, grid, attn, 2, "attention") == 0
    assert pick_image_foreground(labels, grid, attn, 2, "border") == 1


def test_pick_image_foreground_border_tiebreak_survives_realistic_attention():
    # both halves touch 3 sides with 6 border patches; only attention separates them
    labels = (np.arange(16) % 4 >= 2).astype(np.int64)
    attn = np.where(labels == 1, 1.2e-3, 1.0e-3)
    assert ref_pick(labels, (4, 4), attn, 2, "border") == 1
    assert pick_image_foreground(labels, (4, 4), attn, 2, "border") == 1


def test_pick_image_foreground_rejects_unknown_rule():
    with pytest.raises(ValueError, match="fg_rule"):
        pick_image_foreground(np.zeros(4, dtype=np.int64), (2, 2), np.zeros(4), 2, "biggest")


def _planted_images(rng, grids, D=16, noise=0.15, orthogonal=False):
    """Ragged rows of images whose patches come from 2 directions (random, or orthogonal);
    the centre block is direction 1 with high attention. Returns X (N, D) float16,
    offsets, grids, attn, truth."""
    bg, fg = unit(rng.standard_normal((2, D)))
    if orthogonal:
        fg = unit(fg - (fg @ bg) * bg)
    xs, attn, truth, sizes = [], [], [], []
    for gh, gw in grids:
        t = np.zeros((gh, gw), dtype=bool)
        if gh >= 3 and gw >= 3:
            t[1 : gh - 1, 1 : gw - 1] = True
        elif gh * gw >= 2:
            t.flat[0] = True
        t = t.ravel()
        base = np.where(t[:, None], fg, bg)
        xs.append(base + noise * rng.standard_normal((gh * gw, D)))
        attn.append(np.where(t, 2.0, 1.0) + 0.1 * rng.random(gh * gw))
        truth.append(t)
        sizes.append(gh * gw)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return (
        np.concatenate(xs).astype(np.float16),
        offsets,
        np.asarray(grids, dtype=np.int32),
        np.concatenate(attn).astype(np.float32),
        np.concatenate(truth),
    )


@pytest.mark.parametrize("rule", ["attention", "border"])
def test_image_level_per_image_consistency(rule):
    rng = np.random.default_rng(1)
    grids = [(4, 5), (1, 1), (6, 3), (5, 5), (3, 7), (1, 2)]
    X, offsets, g, attn, truth = _planted_images(rng, grids)
    res = image_level(
        X,
        offsets,
        g,
        attn,
        **{**IMAGE, "k_image": 2, "fg_rule": rule, "max_iter": 30, "seed": 3},
        **CPU,
    )
    assert set(res) == {"labels", "fg", "fg_cluster", "objective"}
    assert res["labels"].dtype == np.int16 and res["labels"].shape == (len(X),)
    assert res["fg"].dtype == np.uint8 and res["fg_cluster"].dtype == np.int16
    assert res["fg_cluster"].shape == (len(grids),) and res["objective"].shape == (len(grids),)
    for i, grid in enumerate(grids):
        lo, hi = offsets[i], offsets[i + 1]
        lab, fg = res["labels"][lo:hi], res["fg"][lo:hi]
        if hi - lo < 2:
            assert res["fg_cluster"][i] == -1
            assert not fg.any()
            assert np.isnan(res["objective"][i])
            continue
        c = res["fg_cluster"][i]
        assert c == pick_image_foreground(lab.astype(np.int64), grid, attn[lo:hi], 2, rule)
        np.testing.assert_array_equal(fg, (lab == c).astype(np.uint8))
        assert set(np.unique(lab)) <= {0, 1}
        # the per-image partition is the planted one (same as a standalone fit)
        ref = kmeans(X[lo:hi], 2, seed=0, **CPU).labels
        assert adjusted_rand_score(ref, lab) == 1.0
        assert np.isfinite(res["objective"][i]) and res["objective"][i] > 0.8
    # both rules find the planted centre blocks (grids of at least 3x3)
    big = np.repeat([min(gr) >= 3 for gr in grids], np.diff(offsets))
    np.testing.assert_array_equal(res["fg"][big].astype(bool), truth[big])


def test_image_level_k3_images_smaller_than_k_are_background():
    rng = np.random.default_rng(2)
    grids = [(1, 2), (3, 3), (2, 1), (4, 4)]
    X, offsets, g, attn, _ = _planted_images(rng, grids)
    res = image_level(X, offsets, g, attn, k_image=3, **IMAGE, **CPU)
    np.testing.assert_array_equal(res["fg_cluster"][[0, 2]], [-1, -1])
    assert (res["fg_cluster"][[1, 3]] >= 0).all()
    for i in (0, 2):
        assert not res["fg"][offsets[i] : offsets[i + 1]].any()


@pytest.mark.parametrize("clusterer", ["spectral", "ncut"])
@pytest.mark.parametrize("rule", ["attention", "border"])
def test_image_level_graph_clusterers(clusterer, rule):
    """The graph bipartitions fill the same layout: each image's labels are its own
    bipartition, and the fg rule (not the method's own) picks the foreground side."""
    rng = np.random.default_rng(3)
    grids = [(4, 5), (1, 1), (6, 3), (5, 5), (3, 7), (1, 2), (7, 8)]
    # orthogonal directions and low noise: ncut links two patches with weight 1 as soon as
    # cos >= 0.2 (random directions in 16 dims are often at cos 0.3, and at noise 0.1 a
    # background patch reaches cos 0.2 to the foreground), and a patch linked to both
    # groups sits near either method's threshold (sign, mean), where k-means still puts it
    # in the background
    X, offsets, g, attn, truth = _planted_images(rng, grids, noise=0.05, orthogonal=True)
    res = image_level(
        X,
        offsets,
        g,
        attn,
        k_image=2,
        **{**IMAGE, "fg_rule": rule, "image_clusterer": clusterer},
        **CPU,
    )
    assert set(res) == {"labels", "fg", "fg_cluster", "objective"}
    assert res["labels"].dtype == np.int16 and res["fg"].dtype == np.uint8
    assert res["fg_cluster"].dtype == np.int16 and res["objective"].shape == (len(grids),)
    for i, grid in enumerate(grids):
        lo, hi = offsets[i], offsets[i + 1]
        lab, fg = res["labels"][lo:hi], res["fg"][lo:hi]
        if hi - lo < 2:
            assert res["fg_cluster"][i] == -1 and not fg.any()
            assert np.isnan(res["objective"][i])
            continue
        one = bipartition(X[lo:hi], clusterer)
        np.testing.assert_array_equal(lab, one.labels)
        assert res["objective"][i] == one.eigenvalue
        c = res["fg_cluster"][i]
        assert c == pick_image_foreground(lab.astype(np.int64), grid, attn[lo:hi], 2, rule)
        np.testing.assert_array_equal(fg, (lab == c).astype(np.uint8))
    big = np.repeat([min(gr) >= 3 for gr in grids], np.diff(offsets))
    np.testing.assert_array_equal(res["fg"][big].astype(bool), truth[big])


def test_image_level_graph_clusterer_needs_known_name_and_finite_rows():
    # k_image 2 for a graph clusterer: stage_settings.check_config (tests/test_bad_input.py)
    rng = np.random.default_rng(0)
    X, offsets, g, attn, _ = _planted_images(rng, [(3, 3)])
    with pytest.raises(ValueError, match="image_clusterer"):
        image_level(X, offsets, g, attn, k_image=2, **{**IMAGE, "image_clusterer": "dbscan"}, **CPU)
    X[4, 0] = np.nan
    with pytest.raises(NonFiniteError):
        image_level(
            X, offsets, g, attn, k_image=2, **{**IMAGE, "image_clusterer": "spectral"}, **CPU
        )


# ---------------------------------------------------------------------------------------
# dataset and category levels


def ref_cos_argmax(x, centroids):
    best, best_s = 0, None
    nx = float(np.sqrt(sum(float(v) ** 2 for v in x)))
    for j, c in enumerate(centroids):
        s = sum(float(a) * float(b) for a, b in zip(x, c, strict=True)) / nx if nx else 0.0
        if best_s is None or s > best_s:
            best, best_s = j, s
    return best


def test_nearest_centroid_matches_loop():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 5)).astype(np.float16)
    X[7] = 0  # a zero row has similarity 0 to every centroid: cluster 0
    C = unit(rng.standard_normal((4, 5))).astype(np.float32)
    got = nearest_centroid(l2_normalize(X), C)
    assert got.shape == (60,) and got.dtype.kind == "i"
    np.testing.assert_array_equal(got, [ref_cos_argmax(x, C) for x in X])
    assert got[7] == 0


def test_nearest_centroid_grouped_matches_loop():
    rng = np.random.default_rng(4)
    G, k, D = 3, 4, 6
    X = rng.standard_normal((80, D)).astype(np.float32)
    groups = rng.integers(0, G, size=80)
    C = unit(rng.standard_normal((G, k, D))).astype(np.float32)
    got = nearest_centroid(l2_normalize(X), C, groups=groups)
    assert got.shape == (80,)
    ref = [ref_cos_argmax(x, C[g]) for x, g in zip(X, groups, strict=True)]
    np.testing.assert_array_equal(got, ref)
    # differs from ignoring the groups (the test would be vacuous otherwise)
    assert (got != nearest_centroid(l2_normalize(X), C[0])).any()


def test_vote_counts_matches_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=200)
    labels[labels == 3] = 4  # cluster 3 empty
    fg = rng.integers(0, 2, size=200).astype(np.uint8)
    got = vote_counts(labels, fg, 6)
    ref = np.zeros((6, 2), dtype=np.int64)
    for lab, f in zip(labels, fg, strict=True):
        ref[lab, 0] += 1
        ref[lab, 1] += int(f)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)


def test_foreground_clusters_threshold_is_strict_and_empty_is_never_fg():
    counts = np.array([[10, 5], [10, 6], [0, 0], [4, 4], [7, 0]])
    fg, frac = foreground_clusters(counts, 0.5)
    np.testing.assert_array_equal(fg, [False, True, False, True, False])
    np.testing.assert_allclose(frac[[0, 1, 3, 4]], [0.5, 0.6, 1.0, 0.0])
    assert np.isnan(frac[2])
    fg0, _ = foreground_clusters(counts, 0.0)
    np.testing.assert_array_equal(fg0, [True, True, False, True, False])
    fg1, _ = foreground_clusters(counts, 1.0)
    assert not fg1.any()
    # (G, k, 2) counts of the category level keep their leading shape
    fg3, frac3 = foreground_clusters(np.stack([counts[:2], counts[2:4]]), 0.5)
    assert fg3.shape == frac3.shape == (2, 2)
    np.testing.assert_array_equal(fg3, [[False, True], [False, True]])


def test_sample_rows_by_group_without_cap_keeps_every_row_in_order():
    rng = np.random.default_rng(6)
    shards = [rng.standard_normal((n, 3)).astype(np.float32) for n in (5, 0, 9)]
    groups = [rng.integers(0, 3, size=len(s)) for s in shards]
    X, g = sample_rows_by_group(
        ((lambda s=s: s, gr) for s, gr in zip(shards, groups, strict=True)),
        np.bincount(np.concatenate(groups), minlength=3),
        None,
        0,
    )
    assert X.dtype == np.float16
    np.testing.assert_array_equal(X, np.concatenate(shards).astype(np.float16))
    np.testing.assert_array_equal(g, np.concatenate(groups))


def test_sample_rows_by_group_cap_is_binomial_and_seeded():
    rng = np.random.default_rng(7)
    sizes = np.array([6000, 150, 3000])
    rows = np.concatenate([np.full(n, g) for g, n in enumerate(sizes)])
    rng.shuffle(rows)
    # each row carries its own index in two float16-exact columns
    idx_all = np.arange(len(rows))
    data = np.stack([idx_all // 64, idx_all % 64], axis=1).astype(np.float32)
    cuts = [0, 2500, 7000, len(rows)]

    def shards():
        return (
            (lambda a=a, b=b: data[a:b], rows[a:b])
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        )

    cap = 500
    X, g = sample_rows_by_group(shards(), sizes, cap, seed=11)
    per = np.bincount(g, minlength=3)
    for grp, n in enumerate(sizes):
        p = min(1.0, cap / n)
        mean, sd = n * p, np.sqrt(n * p * (1 - p))
        assert abs(per[grp] - mean) <= 5 * sd + 1e-9, (grp, per[grp], mean, sd)
    assert per[1] == 150  # a group smaller than the cap is kept whole
    # kept rows are original rows, in their original order, with their own group
    idx = X[:, 0].astype(np.int64) * 64 + X[:, 1].astype(np.int64)
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(rows[idx], g)
    X2, g2 = sample_rows_by_group(shards(), sizes, cap, seed=11)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(g, g2)
    X3, _ = sample_rows_by_group(shards(), sizes, cap, seed=12)
    assert X3.shape != X.shape or not np.array_equal(X3, X)


def test_sample_rows_by_group_groups_match_rows():
    # row value encodes its group, so a group/row mismatch would show
    rows = np.array([0, 1, 2, 1, 0, 2, 2, 1] * 50)
    data = rows[:, None].astype(np.float32) * np.ones((1, 3), np.float32)
    X, g = sample_rows_by_group([(lambda: data, rows)], np.bincount(rows), 40, seed=1)
    np.testing.assert_array_equal(X[:, 0].astype(np.int64), g)


def test_sample_rows_by_group_rejects_no_rows():
    with pytest.raises(ValueError, match="no rows"):
        sample_rows_by_group([], np.array([0, 0]), None, 0)


def test_fit_groups_matches_one_fit_per_group():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((90, 4)).astype(np.float32)
    groups = np.repeat([0, 1, 2], 30)
    C, fit = fit_groups(X, groups, 3, 2, max_iter=20, seed=5, **CPU)
    assert C.shape == (3, 2, 4) and C.dtype == np.float32 and fit.objective.shape == (3,)
    for gi in range(3):
        init = kmeans_plusplus(X[groups == gi], 2, seed=5, stream=-1 - gi)  # group stream
        ref = kmeans(X[groups == gi], 2, init=init, max_iter=20, **CPU)
        np.testing.assert_allclose(C[gi], ref.centroids, atol=1e-6)
        np.testing.assert_array_equal(fit.labels[groups == gi], ref.labels)


def test_fit_groups_names_missing_or_too_small_groups():
    X = np.random.default_rng(9).standard_normal((20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"pseudo-categories \[1\]"):
        fit_groups(X, np.where(np.arange(20) < 10, 0, 2), 3, 2, **CPU)
    with pytest.raises(ValueError, match="group 1"):
        fit_groups(X, np.where(np.arange(20) < 19, 0, 1), 2, 2, **CPU)


# ---------------------------------------------------------------------------------------
# merge


@pytest.mark.parametrize("n_levels", [1, 2, 3])
def test_merge_masks_matches_per_patch_loops(n_levels):
    rng = np.random.default_rng(10 + n_levels)
    names = ["dataset", "category", "image"][:n_levels]
    masks = {n: rng.integers(0, 2, size=300).astype(np.uint8) for n in names}
    cases = [("vote", m) for m in range(1, n_levels + 1)] + [("intersect", 2), ("union", 2)]
    for consistency, min_levels in cases:
        merged, score = merge_masks(masks, consistency, min_levels)
        assert merged.dtype == np.uint8 and score.dtype == np.float32
        for p in range(300):
            v = [int(masks[n][p]) for n in names]
            if consistency == "vote":
                want = sum(v) >= min_levels
            elif consistency == "intersect":
                want = all(v)
            else:
                want = any(v)
            assert merged[p] == want, (consistency, min_levels, p, v)
            assert score[p] == pytest.approx(sum(v) / n_levels)


def test_merge_masks_errors():
    masks = {"dataset": np.ones(4), "image": np.zeros(4)}
    # min_levels above the enabled levels: stage_settings.check_config (test_bad_input.py)
    with pytest.raises(ValueError, match="clustering.min_levels=0"):
        merge_masks(masks, "vote", 0)
    with pytest.raises(ValueError, match="consistency"):
        merge_masks(masks, "majority", 1)
    with pytest.raises(ValueError, match="at least one"):
        merge_masks({}, "union", 1)


def test_check_levels_orders_and_rejects():
    assert check_levels(["image", "dataset"]) == ["dataset", "image"]
    assert check_levels(("category", "image", "dataset")) == ["dataset", "category", "image"]
    for bad in ([], ["pixel"], ["image", "images"]):
        with pytest.raises(ValueError, match="clustering.levels"):
            check_levels(bad)
