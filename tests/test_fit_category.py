"""The fit_category stage (``run_fit_category``) on the planted shards of conftest.py's
``pipeline``."""

import numpy as np
from sklearn.metrics import adjusted_rand_score

from lcseg_steps.store import open_store


def test_category_assignment_recovers_planted_categories(pipeline):
    cs = open_store(pipeline["category"])
    planted = np.concatenate(pipeline["cats"])
    assert adjusted_rand_score(planted, cs["category"][:]) == 1.0
