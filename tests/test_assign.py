"""Tests of lcseg_steps.clustering.class_clustering (the stage assign's clustering): recovery of
separated clusters, errors, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.clustering.class_clustering import (
    class_prototypes,
    cluster_classes,
    cosine_knn_affinity,
    fit_classes,
)
from lcseg_steps.clustering.kmeans import nearest_centroid
from lcseg_steps.stages.assign import run_assign
from lcseg_steps.stores.layout import open_store, read_ids, write_store
from tests.hand_shard import ATTRS, _quiet

METHODS = ["spectral", "kmeans", "agglomerative"]


def _sphere_blobs(n_clusters=4, per=40, dim=16, noise=0.05, seed=0):
    """Points scattered around random unit centres, scaled by random norms.

    Random positive scales check that only direction (cosine) matters.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_clusters), per)
    x = centres[truth] + noise * rng.normal(size=(len(truth), dim))
    x *= rng.uniform(0.5, 20.0, size=(len(truth), 1))
    order = rng.permutation(len(truth))
    return x[order].astype(np.float32), truth[order]


@pytest.fixture(autouse=True)
def _quiet_disconnected_graph():
    # Well-separated blobs give a disconnected kNN graph, which sklearn warns about;
    # that is the ideal case for spectral clustering, not a problem.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        yield


@pytest.mark.parametrize("data_seed", [0, 6, 20])
@pytest.mark.parametrize("method", METHODS)
def test_recovers_separated_clusters(method, data_seed):
    x, truth = _sphere_blobs(seed=data_seed)
    labels = cluster_classes(x, 4, class_clusterer=method, seed=0)
    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 4
    assert adjusted_rand_score(truth, labels) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_labels(method):
    x, _ = _sphere_blobs(noise=0.6, seed=1)  # overlapping, so the result is not forced
    a = cluster_classes(x, 5, class_clusterer=method, seed=3)
    b = cluster_classes(x, 5, class_clusterer=method, seed=3)
    np.testing.assert_array_equal(a, b)


def test_kmeans_restarts_keep_best_objective():
    from lcseg_steps.clustering.kmeans import kmeans

    x, _ = _sphere_blobs(noise=0.6, seed=4)
    runs = [kmeans(x, 5, seed=10 + i) for i in range(4)]
    best = max(runs, key=lambda r: r.objective)
    labels = cluster_classes(x, 5, class_clusterer="kmeans", seed=10, n_init=4)
    np.testing.assert_array_equal(labels, best.labels)


def test_spectral_kmeans_label_assignment_also_works():
    x, truth = _sphere_blobs(seed=2)
    labels = cluster_classes(x, 4, spectral_labelling="kmeans", seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_fewer_regions_than_classes():
    x, _ = _sphere_blobs(per=1)
    with pytest.raises(ValueError, match=r"only 4 object regions.*5 classes.*lower n_classes"):
        cluster_classes(x, 5)


def test_neighbours_clipped_and_tiny_inputs():
    x, truth = _sphere_blobs(n_clusters=3, per=2, noise=0.01)
    labels = cluster_classes(x, 3, n_neighbors=50)  # 6 regions: degree clipped to 5
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(cluster_classes(x[:1], 1), [0])


def test_bad_inputs():
    x, _ = _sphere_blobs()
    with pytest.raises(ValueError, match="unknown class clusterer"):
        cluster_classes(x, 4, class_clusterer="dbscan")
    with pytest.raises(ValueError, match="shape"):
        cluster_classes(x[0], 4)
    bad = x.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        cluster_classes(bad, 4)
    bad = x.copy()
    bad[9] = 0
    with pytest.raises(ValueError, match="all-zero.*row 9"):
        cluster_classes(bad, 4)
    with pytest.raises(ValueError, match="floating"):
        cluster_classes(x.astype(np.int64), 4)


def test_affinity_is_symmetric_knn_by_cosine():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = cosine_knn_affinity(x, 4).toarray()
    np.testing.assert_array_equal(a, a.T)
    assert np.all(np.diag(a) == 0)
    # Brute-force reference: top-4 cosine neighbours of each point, weighted by their
    # similarity (floored), symmetrised.
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    ref = np.zeros_like(sim)
    for i in range(len(x)):
        nn = np.argsort(-sim[i])[:4]
        ref[i, nn] = np.maximum(sim[i, nn], 1e-6)
    np.testing.assert_allclose(a, 0.5 * (ref + ref.T), atol=1e-12)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 6, 20])
@pytest.mark.parametrize("extra", [0, 1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_as_many_regions_as_classes_or_barely_more(method, n_classes, extra):
    """1, 2, k or k + 1 (+ 2) regions: every clusterer gives a valid labelling (the issue:
    6 regions into 6 classes died in scipy's eigh for spectral)."""
    n = n_classes + extra
    rng = np.random.default_rng(n_classes * 10 + extra)
    x = rng.normal(size=(n, 32)).astype(np.float32)
    labels = cluster_classes(x, n_classes, class_clusterer=method, seed=0)
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < n_classes
    if extra == 0:  # the only partition into n_classes classes: one region each
        assert sorted(labels.tolist()) == list(range(n_classes))
    np.testing.assert_array_equal(
        labels, cluster_classes(x, n_classes, class_clusterer=method, seed=0)
    )


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_one_or_two_regions(method, n):
    x = np.random.default_rng(n).normal(size=(n, 8))
    for k in range(1, n + 1):
        labels = cluster_classes(x, k, class_clusterer=method)
        assert sorted(set(labels.tolist())) == list(range(k))
    with pytest.raises(ValueError, match=rf"only {n} object regions.*{n + 1} classes"):
        cluster_classes(x, n + 1, class_clusterer=method)


# ---------------------------------------------------------------------------------------
# fit on a sample, assign the rest to the nearest prototype


@pytest.mark.parametrize("method", METHODS)
def test_at_most_fit_sample_regions_equals_a_fit_of_all(method):
    x, _ = _sphere_blobs(noise=0.6, seed=5)  # 160 overlapping regions
    full = cluster_classes(x, 5, class_clusterer=method, seed=2)
    for fit_sample in (160, 1000):
        fit = fit_classes(x, 5, class_clusterer=method, seed=2, fit_sample=fit_sample)
        np.testing.assert_array_equal(fit.labels, full)
        np.testing.assert_array_equal(fit.fitted, np.arange(160))


@pytest.mark.parametrize("method", ["spectral", "agglomerative"])
def test_sample_then_nearest_prototype(method):
    x, truth = _sphere_blobs(n_clusters=4, per=100, seed=8)
    fit = fit_classes(x, 4, class_clusterer=method, seed=1, fit_sample=60)
    assert fit.fitted.shape == (60,) and np.all(np.diff(fit.fitted) > 0)
    assert adjusted_rand_score(truth, fit.labels) == 1.0
    # the prototypes are the normalised class means of the sample ...
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    xs = xn[fit.fitted].astype(np.float64)
    proto = class_prototypes(xs, fit.labels[fit.fitted], 4)
    np.testing.assert_allclose(fit.prototypes, proto, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(fit.prototypes, axis=1), 1.0, atol=1e-6)
    # ... and every other region took the nearest one
    rest = np.setdiff1d(np.arange(len(x)), fit.fitted)
    np.testing.assert_array_equal(fit.labels[rest], nearest_centroid(xn[rest], proto))
    again = fit_classes(x, 4, class_clusterer=method, seed=1, fit_sample=60)
    np.testing.assert_array_equal(again.labels, fit.labels)
    np.testing.assert_array_equal(again.fitted, fit.fitted)
    other = fit_classes(x, 4, class_clusterer=method, seed=2, fit_sample=60)
    assert not np.array_equal(other.fitted, fit.fitted)  # the seed draws the sample


def test_kmeans_ignores_fit_sample():
    x, _ = _sphere_blobs(noise=0.6, seed=5)
    fit = fit_classes(x, 5, class_clusterer="kmeans", seed=2, fit_sample=20)
    np.testing.assert_array_equal(
        fit.labels, cluster_classes(x, 5, class_clusterer="kmeans", seed=2)
    )
    assert len(fit.fitted) == len(x)


def test_empty_class_prototype_never_wins():
    x = np.eye(3)
    proto = class_prototypes(x[:2], np.array([0, 2]), 3)
    assert not proto[1].any()
    np.testing.assert_array_equal(nearest_centroid(-x, proto), [2, 0, 0])


def test_fit_sample_below_n_classes_names_both_keys():
    x, _ = _sphere_blobs()
    with pytest.raises(ValueError, match=r"labels\.fit_sample=3 .*labels\.n_classes=4"):
        fit_classes(x, 4, fit_sample=3)


# ---------------------------------------------------------------------------------------
# run_assign: the stage's store-to-store function on descriptor stores


def _desc_store(path, desc):
    return write_store(path, {"descriptors": desc.astype(np.float32)})


def test_assign_concatenates_shards_and_records_offsets(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((2, 8)) * 3
    truth = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1])
    x = centres[truth] + 0.1 * rng.standard_normal((9, 8))
    paths = [_desc_store(tmp_path / "oa.zarr", x[:5]), _desc_store(tmp_path / "ob.zarr", x[5:])]
    out = run_assign(
        paths,
        ["sA", "sB"],
        tmp_path / "classes.zarr",
        n_classes=2,
        class_clusterer="spectral",
        n_neighbors=5,
        fit_sample=20000,
        seed=0,
        attrs=ATTRS,
        log=_quiet,
    )
    cl = open_store(out)
    labels = np.asarray(cl["labels"][:])
    assert labels.shape == (9,)
    assert set(labels.tolist()) == {0, 1}
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.asarray(cl["region_offsets"][:]).tolist() == [0, 5, 9]
    assert list(read_ids(cl, "shards")) == ["sA", "sB"]
    # 9 regions <= the default fit sample: all fitted, prototypes = normalised class means
    assert np.asarray(cl["fitted"][:]).tolist() == list(range(9))
    proto = np.asarray(cl["prototypes"][:])
    assert proto.shape == (2, 8) and proto.dtype == np.float32
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for c in range(2):
        mean = xn[labels == c].mean(0)
        np.testing.assert_allclose(proto[c], mean / np.linalg.norm(mean), atol=1e-6)


def test_assign_fits_a_sample_and_sends_the_rest_to_the_prototypes(tmp_path):
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((3, 8)) * 3
    truth = rng.integers(0, 3, 60)
    x = centres[truth] + 0.1 * rng.standard_normal((60, 8))
    p = _desc_store(tmp_path / "o.zarr", x)
    logs = []
    out = run_assign(
        [p],
        ["sA"],
        tmp_path / "classes.zarr",
        n_classes=3,
        class_clusterer="agglomerative",
        n_neighbors=5,
        seed=0,
        fit_sample=20,
        attrs=ATTRS,
        log=logs.append,
    )
    cl = open_store(out)
    assert adjusted_rand_score(truth, np.asarray(cl["labels"][:])) == 1.0
    assert cl["fitted"].shape == (20,) and cl["prototypes"].shape == (3, 8)
    assert any("sample of 20 regions, the other 40" in m for m in logs)


def test_assign_fewer_regions_than_classes_names_the_key(tmp_path):
    p = _desc_store(tmp_path / "o.zarr", np.eye(3, 4))
    with pytest.raises(ValueError, match=r"labels\.n_classes=4"):
        run_assign(
            [p],
            ["sA"],
            tmp_path / "c.zarr",
            n_classes=4,
            class_clusterer="kmeans",
            n_neighbors=2,
            fit_sample=20000,
            seed=0,
            attrs=ATTRS,
            log=_quiet,
        )
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("n_regions", [1, 2, 6, 7])
@pytest.mark.parametrize("clusterer", ["spectral", "kmeans", "agglomerative"])
def test_assign_as_many_regions_as_classes(tmp_path, clusterer, n_regions):
    """The issue: a COCO-layout set with 6 object regions and labels.n_classes: 6. As many
    regions as classes, or one more, gives a class per region; fewer names the key and
    the count."""
    rng = np.random.default_rng(n_regions)
    p = _desc_store(tmp_path / "o.zarr", rng.standard_normal((n_regions, 8)))
    kw = dict(
        class_clusterer=clusterer, n_neighbors=10, fit_sample=20000, seed=0, attrs=ATTRS, log=_quiet
    )
    n_classes = min(n_regions, 6)
    cl = open_store(run_assign([p], ["sA"], tmp_path / "c.zarr", n_classes=n_classes, **kw))
    labels = np.asarray(cl["labels"][:])
    assert labels.shape == (n_regions,)
    assert set(labels.tolist()) <= set(range(n_classes))
    if n_regions == n_classes:
        assert sorted(labels.tolist()) == list(range(n_classes))
    msg = rf"labels\.n_classes={n_regions + 1} but the masks gave only {n_regions} object"
    with pytest.raises(ValueError, match=msg):
        run_assign([p], ["sA"], tmp_path / "d.zarr", n_classes=n_regions + 1, **kw)


@pytest.mark.parametrize("n_regions", [0, 2])
def test_assign_empty_ok_gives_every_region_its_own_class(tmp_path, n_regions):
    """The analysis baselines (all background) may leave fewer regions than classes, even
    none: with ``empty_ok`` each region is its own class and the store is still written."""
    x = np.random.default_rng(0).standard_normal((n_regions, 8))
    paths = [_desc_store(tmp_path / "oa.zarr", x), _desc_store(tmp_path / "ob.zarr", x[:0])]
    kw = dict(
        class_clusterer="spectral", n_neighbors=5, fit_sample=20000, seed=0, attrs=ATTRS, log=_quiet
    )
    with pytest.raises(ValueError, match=r"labels\.n_classes=4"):
        run_assign(paths, ["sA", "sB"], tmp_path / "c.zarr", n_classes=4, **kw)
    out = run_assign(paths, ["sA", "sB"], tmp_path / "c.zarr", n_classes=4, empty_ok=True, **kw)
    cl = open_store(out)
    assert np.asarray(cl["labels"][:]).tolist() == list(range(n_regions))
    assert np.asarray(cl["region_offsets"][:]).tolist() == [0, n_regions, n_regions]
    assert list(read_ids(cl, "shards")) == ["sA", "sB"]
    assert np.asarray(cl["fitted"][:]).tolist() == list(range(n_regions))
    proto = np.asarray(cl["prototypes"][:])
    assert proto.shape == (4, 8) and not proto[n_regions:].any()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(proto[:n_regions], unit, atol=1e-6)
    # as many regions as classes or more: empty_ok changes nothing
    y = np.random.default_rng(1).standard_normal((9, 8))
    p = _desc_store(tmp_path / "oc.zarr", y)
    a = run_assign([p], ["sA"], tmp_path / "d.zarr", n_classes=3, **kw)
    b = run_assign([p], ["sA"], tmp_path / "e.zarr", n_classes=3, empty_ok=True, **kw)
    np.testing.assert_array_equal(open_store(a)["labels"][:], open_store(b)["labels"][:])


# labels.n_classes: auto (the count by the eigengap, lcseg_steps.clustering.class_count)


def test_assign_auto_chooses_the_planted_count_and_stores_the_curve(tmp_path):
    x, truth = _sphere_blobs(n_clusters=5, per=30, seed=2)
    paths = [_desc_store(tmp_path / "oa.zarr", x[:70]), _desc_store(tmp_path / "ob.zarr", x[70:])]
    logs = []
    out = run_assign(
        paths,
        ["sA", "sB"],
        tmp_path / "classes.zarr",
        n_classes="auto",
        auto_range=[2, 12],
        class_clusterer="spectral",
        n_neighbors=10,
        fit_sample=20000,
        seed=0,
        attrs=ATTRS,
        log=logs.append,
    )
    cl = open_store(out)
    assert cl.attrs["n_classes"] == 5
    assert cl.attrs["n_classes_auto"]["chosen"] == 5
    assert cl.attrs["n_classes_auto"]["range"] == [2, 12]
    lam = np.asarray(cl["eigenvalues"][:])
    assert lam.shape == (13,) and lam[4] < 1e-8 < lam[5]
    assert cl["prototypes"].shape == (5, 16)
    assert adjusted_rand_score(truth, np.asarray(cl["labels"][:])) == 1.0
    assert any("n_classes auto -> 5" in m for m in logs)


def test_assign_fixed_count_records_it_without_a_curve(tmp_path):
    x, _ = _sphere_blobs(n_clusters=3, per=10)
    p = _desc_store(tmp_path / "o.zarr", x)
    kw = dict(class_clusterer="kmeans", n_neighbors=5, fit_sample=None, seed=0, attrs=ATTRS)
    cl = open_store(run_assign([p], ["sA"], tmp_path / "c.zarr", n_classes=3, log=_quiet, **kw))
    assert cl.attrs["n_classes"] == 3
    assert "eigenvalues" not in cl and "n_classes_auto" not in cl.attrs


def test_assign_auto_with_too_few_regions(tmp_path):
    p = _desc_store(tmp_path / "o.zarr", np.random.default_rng(0).standard_normal((3, 8)))
    kw = dict(
        n_classes="auto",
        auto_range=[3, 10],
        class_clusterer="spectral",
        n_neighbors=5,
        fit_sample=20000,
        seed=0,
        attrs=ATTRS,
        log=_quiet,
    )
    with pytest.raises(ValueError, match=r"labels\.n_classes is auto but .* only 3 object"):
        run_assign([p], ["sA"], tmp_path / "c.zarr", **kw)
    # the analysis baselines (empty_ok): the range's min, one class per region
    cl = open_store(run_assign([p], ["sA"], tmp_path / "c.zarr", empty_ok=True, **kw))
    assert cl.attrs["n_classes"] == 3 and cl["eigenvalues"].shape == (0,)
    assert np.asarray(cl["labels"][:]).tolist() == [0, 1, 2]
