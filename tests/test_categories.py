"""The category level's algorithm (``lcseg_steps.clustering.categories``):
pseudo-categories from CLS tokens, their count by the eigengap, the rows' categories and
the per-category fit and foreground vote, checked against a brute-force vote."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.clustering.categories import (
    CATEGORY_NEIGHBORS,
    choose_n_categories,
    fit_category_level,
    pseudo_categories,
    row_categories,
)
from lcseg_steps.clustering.class_clustering import cluster_classes


def _cls(n_categories, per, dim=24, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_categories, dim))
    truth = np.repeat(np.arange(n_categories), per)
    return (centres[truth] + noise * rng.standard_normal((len(truth), dim))), truth


@pytest.mark.parametrize("method", ["spectral", "kmeans"])
def test_pseudo_categories_recover_planted_ones(method):
    cls, truth = _cls(3, 15)
    cats = pseudo_categories(cls, 3, method, 0)
    assert cats.dtype == np.int64 and adjusted_rand_score(truth, cats) == 1.0
    ref = cluster_classes(
        cls.astype(np.float32), 3, class_clusterer=method, seed=0, n_neighbors=CATEGORY_NEIGHBORS
    )
    np.testing.assert_array_equal(cats, ref)


def test_pseudo_categories_one_or_too_many():
    cls, _ = _cls(2, 4)
    assert pseudo_categories(cls, 1, "spectral", 0).tolist() == [0] * 8
    with pytest.raises(ValueError, match=r"n_categories=9 but the run has only 8 images"):
        pseudo_categories(cls, 9, "spectral", 0)


def test_choose_n_categories_finds_the_planted_count():
    cls, _ = _cls(4, 20, seed=1)
    logs = []
    k, lam = choose_n_categories(cls, [2, 8], 0, logs.append)
    assert k == 4 and lam.shape == (9,) and np.argmax(np.diff(lam)[1:]) + 2 == 4
    assert logs[0].startswith("fit_category: n_categories auto -> 4 (eigengap ")
    with pytest.raises(ValueError, match=r"only 2 images: the eigengap .*auto_range's min 2"):
        choose_n_categories(cls[:2], [2, 8], 0, print)


def test_row_categories_spread_each_image_over_its_rows():
    cats = np.array([1, 0, 2, 2, 0])
    got = row_categories(cats, [np.array([0, 2, 3, 6]), np.array([0, 1, 1])])
    assert [g.tolist() for g in got] == [[1, 1, 0, 2, 2, 2], [2]]
    # an image without rows (offsets 1, 1) takes none; the next shard starts after it
    assert row_categories(cats, [np.array([0, 1]), np.array([0, 0, 2])])[1].tolist() == [2, 2]


def test_fit_category_level_votes_as_brute_force():
    """Two categories of patches in two shards: each row votes for its nearest centroid
    (cosine) of its own category; a cluster is foreground when more than ``fg_vote`` of
    its rows are image-level foreground."""
    rng = np.random.default_rng(4)
    dirs = rng.standard_normal((4, 12))
    shards, cats, fgs = [], [], []
    for n in (70, 50):
        c = rng.integers(0, 2, n)
        j = rng.integers(0, 2, n)
        shards.append((dirs[2 * c + j] + 0.1 * rng.standard_normal((n, 12))).astype(np.float32))
        cats.append(c.astype(np.int64))
        # the second direction of each category is mostly foreground
        fgs.append(rng.random(n) < np.where(j == 1, 0.9, 0.1))
    logs = []
    level = fit_category_level(
        [lambda x=x: x for x in shards],
        cats,
        [lambda f=f: f for f in fgs],
        2,
        2,
        fg_vote=0.5,
        category_fit_sample=None,
        max_iter=30,
        tol=1e-4,
        seed=0,
        device="cpu",
        log=logs.append,
    )
    C = level.centroids
    assert C.shape == (2, 2, 12) and level.counts.shape == (2, 2, 2)
    assert level.fit.objective.shape == (2,)
    counts = np.zeros((2, 2, 2), np.int64)
    for x, c, f in zip(shards, cats, fgs, strict=True):
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = np.einsum("nd,nkd->nk", xn, C[c])
        nearest = np.argmax(sims, axis=1)
        np.add.at(counts, (c, nearest, 0), 1)
        np.add.at(counts, (c, nearest, 1), f.astype(np.int64))
    np.testing.assert_array_equal(level.counts, counts)
    frac = counts[..., 1] / counts[..., 0]
    np.testing.assert_allclose(level.fg_fraction, frac)
    np.testing.assert_array_equal(level.fg_clusters, frac > 0.5)
    assert level.fg_clusters.sum(axis=1).tolist() == [1, 1]
    assert logs == ["fit_category: fitting k=2 per category on 120 sampled patches"]
