"""The report's gallery (``lcseg_steps.figures.gallery``): the images it shows."""

import itertools

import numpy as np
import pytest

from lcseg_steps.figures.gallery import gallery_ranking


@pytest.mark.parametrize("n", [1, 3, 4, 12])
def test_gallery_ranking_spans_best_to_worst(n):

    rng = np.random.default_rng(n)
    scores = {f"im{i:02d}": float(v) for i, v in enumerate(rng.random(9))}
    scores["flat"] = None  # nothing scorable: never shown
    got = gallery_ranking(scores, n)
    by_score = sorted((v, k) for k, v in scores.items() if v is not None)[::-1]
    if n >= 9:
        assert [g[0] for g in got] == [k for _, k in by_score]
    else:
        ids = [g[0] for g in got]
        assert ids[0] == by_score[0][1]
        if n > 1:
            assert ids[-1] == by_score[-1][1] and len(set(ids)) == n
        # ranks are evenly spaced within one
        ranks = [g[2] for g in got]
        assert all(1 <= b - a <= -(-8 // max(n - 1, 1)) for a, b in itertools.pairwise(ranks))
    assert [g[1] for g in got] == sorted((g[1] for g in got), reverse=True)
    assert gallery_ranking(None, 3) == [] and gallery_ranking({"a": None}, 3) == []
