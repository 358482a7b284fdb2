"""The classes of the object regions (``lcseg_steps.clustering.region_classes``): the
count by the eigengap (``labels.n_classes: auto``) and the fit, with one class per region
when there are fewer regions than classes and that is allowed."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.clustering.class_clustering import fit_classes
from lcseg_steps.clustering.class_count import eigengap_count
from lcseg_steps.clustering.region_classes import choose_n_classes, fit_region_classes


def _blobs(n_clusters, per, dim=16, noise=0.05, seed=0):
    """Rows around ``n_clusters`` random unit directions, and their true cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_clusters), per)
    x = centres[truth] + noise * rng.standard_normal((len(truth), dim))
    return x.astype(np.float32), truth


def test_choose_n_classes_is_the_eigengap_count_of_the_regions():
    x, _ = _blobs(4, 25)
    logs = []
    k, lam = choose_n_classes(x, [2, 9], 10, None, 0, False, logs.append)
    ref_k, ref_lam = eigengap_count(x, 10, (2, 9), 0, fit_sample=None)
    assert k == ref_k == 4
    np.testing.assert_array_equal(lam, ref_lam)
    assert len(logs) == 1 and logs[0].startswith("assign: n_classes auto -> 4 (eigengap ")


def test_choose_n_classes_with_too_few_regions():
    x = np.random.default_rng(0).standard_normal((3, 8))
    with pytest.raises(ValueError, match=r"only 3 object regions.*labels\.auto_range's min 3"):
        choose_n_classes(x, [3, 10], 5, None, 0, False, print)
    logs = []
    k, lam = choose_n_classes(x, [3, 10], 5, None, 0, True, logs.append)
    assert k == 3 and lam.shape == (0,) and "auto_range's min 3" in logs[0]
    with pytest.raises(ValueError, match="labels.auto_range"):
        choose_n_classes(x, [5, 2], 5, None, 0, True, print)


@pytest.mark.parametrize("method", ["spectral", "kmeans", "agglomerative"])
def test_enough_regions_is_fit_classes(method):
    x, truth = _blobs(3, 20, seed=1)
    kw = dict(class_clusterer=method, n_neighbors=8, seed=0, fit_sample=None)
    got = fit_region_classes(x, 3, **kw, log=print)
    ref = fit_classes(x, 3, **kw)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.prototypes, ref.prototypes)
    assert adjusted_rand_score(truth, got.labels) == 1.0


def test_a_fitted_sample_is_logged():
    x, _ = _blobs(3, 20, seed=2)
    logs = []
    fit = fit_region_classes(
        x, 3, class_clusterer="spectral", n_neighbors=8, fit_sample=30, seed=0, log=logs.append
    )
    assert len(fit.fitted) == 30 and len(fit.labels) == 60
    assert logs == [
        "assign: fitted a seeded sample of 30 regions, the other 30 went to the nearest "
        "class prototype"
    ]


@pytest.mark.parametrize("n", [0, 2])
def test_fewer_regions_than_classes(n):
    x = np.random.default_rng(3).standard_normal((n, 8))
    kw = dict(class_clusterer="spectral", n_neighbors=5, fit_sample=None, seed=0)
    with pytest.raises(ValueError, match=rf"labels\.n_classes=4 but .* only {n} object regions"):
        fit_region_classes(x, 4, **kw)
    logs = []
    fit = fit_region_classes(x, 4, **kw, empty_ok=True, log=logs.append)
    assert fit.labels.tolist() == fit.fitted.tolist() == list(range(n))
    assert fit.prototypes.shape == (4, 8) and not fit.prototypes[n:].any()
    if n:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_allclose(fit.prototypes[:n], unit, atol=1e-6)
    assert logs == [f"assign: only {n} region(s) for 4 classes: one class per region"]
