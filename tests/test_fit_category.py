"""The fit_category stage (``run_fit_category``) on the planted shards of conftest.py's
``pipeline``."""

import numpy as np
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.stores.layout import open_store


def test_category_assignment_recovers_planted_categories(pipeline):
    cs = open_store(pipeline["category"])
    planted = np.concatenate(pipeline["cats"])
    assert adjusted_rand_score(planted, cs["category"][:]) == 1.0


def test_n_categories_auto_finds_the_planted_two_and_stores_the_curve(pipeline, tmp_path):
    from lcseg_steps.stages.fit_category import run_fit_category

    logs = []
    out = run_fit_category(
        pipeline["features"],
        pipeline["image_level"],
        tmp_path / "category_level.zarr",
        feature="k",
        n_categories="auto",
        auto_range=[2, 6],
        category_clusterer="spectral",
        k_category=2,
        fg_vote=0.5,
        category_fit_sample=None,
        max_iter=30,
        tol=1e-4,
        seed=0,
        device="cpu",
        attrs={"test": True},
        log=logs.append,
    )
    cs = open_store(out)
    assert cs.attrs["n_categories"] == 2
    assert cs.attrs["n_categories_auto"] == {
        "criterion": "eigengap of the normalised Laplacian of the cosine kNN graph",
        "range": [2, 6],
        "chosen": 2,
    }
    lam = np.asarray(cs["eigenvalues"][:])
    assert lam.shape == (7,) and np.argmax(np.diff(lam)[1:]) == 0
    assert cs["counts"].shape == (2, 2, 2)  # (categories, k_category, fg/bg)
    planted = np.concatenate(pipeline["cats"])
    assert adjusted_rand_score(planted, cs["category"][:]) == 1.0
    assert any("n_categories auto -> 2" in m for m in logs)
