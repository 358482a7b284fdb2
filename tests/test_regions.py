"""``regions: split`` on planted patch features: two touching blobs drawn from two
well-separated prototypes are cut exactly along their shared edge; one object with
internal texture or plain noise is not cut. The references are the planted blobs."""

from __future__ import annotations

import numpy as np
import pytest

from lcseg_steps.perimage.regions import object_regions, patch_index, split_region
from tests.schema_defaults import default_config

PATCH = 8
GH, GW, D = 10, 14, 48
SPLIT = default_config()["objects"]["split"]


def _unit(rng, n):
    v = rng.standard_normal((n, D))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _planted(seed: int, texture: str | None = None):
    """Two touching blobs A (patch cols 2-6) and B (cols 7-11), rows 2-7, on a
    background; pixel masks ``(GH*PATCH, GW*PATCH)`` and features ``(GH, GW, D)``.
    ``texture``: one object instead (A = B's prototype), whose patches alternate between
    two directions in stripes or a checkerboard, or carry only noise."""
    rng = np.random.default_rng(seed)
    bg, pa, pb, tex = _unit(rng, 4)
    feats = np.broadcast_to(bg, (GH, GW, D)).copy()
    a = np.zeros((GH, GW), bool)
    b = np.zeros((GH, GW), bool)
    a[2:8, 2:7] = True
    b[2:8, 7:12] = True
    feats[a] = pa
    feats[b] = pb
    if texture is not None:
        feats[a | b] = pa
        ii, jj = np.mgrid[0:GH, 0:GW]
        alt = {"stripes": ii % 2, "checker": (ii + jj) % 2, "noise": np.zeros_like(ii)}[texture]
        feats[(a | b) & (alt == 1)] += 1.5 * tex
    feats += 0.15 * rng.standard_normal(feats.shape)
    up = np.ones((PATCH, PATCH), bool)
    return np.kron(a, up), np.kron(b, up), feats.astype(np.float16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_returns_the_two_planted_blobs_exactly(seed):
    a, b, feats = _planted(seed)
    fg = a | b
    (whole,) = object_regions(fg, regions="components")
    assert np.array_equal(whole, fg)
    parts = object_regions(fg, regions="split", features_grid=feats, split=SPLIT)
    assert len(parts) == 2
    assert {parts[0].tobytes(), parts[1].tobytes()} == {a.tobytes(), b.tobytes()}


@pytest.mark.parametrize("texture", ["stripes", "checker", "noise"])
def test_one_object_with_internal_texture_is_not_split(texture):
    a, b, feats = _planted(3, texture)
    (part,) = object_regions(a | b, regions="split", features_grid=feats, split=SPLIT)
    assert np.array_equal(part, a | b)


def test_split_is_deterministic_per_seed_and_keeps_every_pixel():
    a, b, feats = _planted(4)
    # a full-resolution size that is no multiple of the grid: pixels follow their patch
    fg = np.zeros((97, 131), bool)
    rows, cols = patch_index(fg.shape, (GH, GW))
    fg[:] = (a | b)[rows * PATCH][:, cols * PATCH]
    runs = [split_region(fg, feats, **{**SPLIT, "seed": 7}) for _ in range(2)]
    assert [r.tobytes() for r in runs[0]] == [r.tobytes() for r in runs[1]]
    assert len(runs[0]) == 2
    assert np.array_equal(runs[0][0] | runs[0][1], fg) and not (runs[0][0] & runs[0][1]).any()


def test_split_stops_at_max_parts_and_a_too_small_side():
    a, b, feats = _planted(5)
    fg = a | b
    assert len(split_region(fg, feats, **{**SPLIT, "max_parts": 1})) == 1
    # each side is ~half of the component: a 0.6 share cannot be met
    assert len(split_region(fg, feats, **{**SPLIT, "min_share": 0.6})) == 1
    assert len(split_region(fg, feats, **SPLIT, min_px=fg.sum())) == 1


def test_split_needs_features_and_settings():
    a, b, feats = _planted(0)
    with pytest.raises(ValueError, match="features_grid"):
        object_regions(a | b, regions="split")
    assert object_regions(np.zeros_like(a), regions="split", features_grid=feats, split=SPLIT) == []
