"""Baseline patch masks against hand computations (and DINO's ascending formulation)."""

import math

import cv2
import numpy as np
import pytest

from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.runner.settings import settings_attrs
from lcseg_steps.stages import baselines
from lcseg_steps.stages.baselines import (
    BASELINES,
    all_background,
    baseline_masks,
    centre_mask,
    centre_prior,
    cls_attention_mask,
    top_mass_mask,
)
from lcseg_steps.stages.refine import run_refine
from lcseg_steps.stores.layout import open_store, patch_layout, pixel_map, read_ids, write_store
from tests.helpers import stage_job
from tests.schema_defaults import crf_settings

# the schema's analysis.centre_fraction and analysis.attention_mass, the centre prior's shape
PRIORS = {"centre_fraction": 0.5, "shape": "ellipse", "attention_mass": 0.6}


def grid_of(rows, cols, gh, gw):
    m = np.zeros((gh, gw), dtype=bool)
    m[np.ix_(rows, cols)] = True
    return m.ravel()


def test_all_background():
    out = all_background(np.array([0, 3, 3, 7]))
    assert out.dtype == np.uint8 and out.shape == (7,) and not out.any()


def test_centre_box_by_hand():
    # 4x4, a quarter of the area: half-sides 1 patch around the centre -> the middle 2x2
    np.testing.assert_array_equal(centre_mask((4, 4), 0.25, "box"), grid_of([1, 2], [1, 2], 4, 4))
    # 3x3, a ninth: only the centre patch; the whole grid at fraction 1
    np.testing.assert_array_equal(centre_mask((3, 3), 1 / 9, "box"), grid_of([1], [1], 3, 3))
    assert centre_mask((3, 5), 1.0, "box").all()


def test_centre_ellipse_by_hand():
    # 5x5 at pi/4: the inscribed circle of radius 2.5; the corner centres (2, 2) from the
    # middle lie at distance sqrt(8) > 2.5, (2, 1) at sqrt(5) < 2.5 -> all but the corners
    want = np.ones((5, 5), dtype=bool)
    want[[0, 0, 4, 4], [0, 4, 0, 4]] = False
    np.testing.assert_array_equal(centre_mask((5, 5), math.pi / 4), want.ravel())
    # 4x6 at pi/16: s = 1/2, semi-axes 1 (rows) and 1.5 (cols); centres at row offsets
    # +-0.5 need |col offset| <= sqrt(1.5^2 * 0.75) = 1.3 -> cols 2, 3; rows 0, 3 are out
    np.testing.assert_array_equal(centre_mask((4, 6), math.pi / 16), grid_of([1, 2], [2, 3], 4, 6))


def test_centre_prior_ragged_and_errors():
    grids = np.array([[4, 4], [3, 3]])
    out = centre_prior(grids, 0.25, "box")
    assert out.dtype == np.uint8 and out.shape == (25,)
    np.testing.assert_array_equal(out[:16], grid_of([1, 2], [1, 2], 4, 4))
    np.testing.assert_array_equal(out[16:], centre_mask((3, 3), 0.25, "box"))
    with pytest.raises(ValueError, match="pi/4"):
        centre_mask((4, 4), 0.9)
    with pytest.raises(ValueError, match="shape"):
        centre_mask((4, 4), 0.5, "disc")
    with pytest.raises(ValueError, match="fraction"):
        centre_mask((4, 4), 0.0, "box")


def test_top_mass_by_hand():
    # descending 0.4 (1), 0.3 (3), 0.2 (2), 0.1 (0); mass before each: 0, 0.4, 0.7, 0.9
    np.testing.assert_array_equal(top_mass_mask([0.1, 0.4, 0.2, 0.3], mass=0.6), [0, 1, 0, 1])
    np.testing.assert_array_equal(top_mass_mask([1, 4, 2, 3], mass=0.6), [0, 1, 0, 1])  # normalised
    # 0.6 reached exactly by the first patch: the second is not needed
    np.testing.assert_array_equal(top_mass_mask([0.6, 0.4], mass=0.6), [1, 0])
    # equal values keep patch order: mass before 0, 0.25, 0.5, 0.75
    np.testing.assert_array_equal(top_mass_mask([0.25] * 4, mass=0.6), [1, 1, 1, 0])
    assert not top_mass_mask(np.zeros(3), mass=0.6).any()
    np.testing.assert_array_equal(top_mass_mask([0.1, 0.4, 0.2, 0.3], mass=0.9), [0, 1, 1, 1])


def dino_mask(a, mass):
    """DINO's visualize_attention: ascending sort, normalise, keep cumsum > 1 - mass."""
    idx = np.argsort(a)
    val = a[idx] / a.sum()
    keep_sorted = np.cumsum(val) > 1 - mass
    out = np.zeros(len(a), dtype=bool)
    out[idx] = keep_sorted
    return out


@pytest.mark.parametrize("seed", range(5))
def test_cls_attention_mask_equals_dino_ascending(seed):
    rng = np.random.default_rng(seed)
    sizes = [12, 0, 1, 30]
    attn = rng.random(sum(sizes)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    out = cls_attention_mask(attn, offsets, 0.6)
    assert out.dtype == np.uint8 and out.shape == attn.shape
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        if hi > lo:
            np.testing.assert_array_equal(out[lo:hi], dino_mask(attn[lo:hi].astype(float), 0.6))


def test_baseline_masks_from_a_store(tmp_path):
    attn = np.array([0.1, 0.4, 0.2, 0.3, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32)
    path = write_store(
        tmp_path / "f.zarr",
        {
            "cls_attn": attn,
            "offsets": np.array([0, 4, 13], dtype=np.int64),
            "grid": np.array([[2, 2], [3, 3]], dtype=np.int32),
            "image_ids": np.array(["a", "b"]),
        },
    )
    bg = baseline_masks(path, "all_background", **PRIORS)
    assert set(bg) == {"fg", "offsets", "grid", "image_ids"} and not bg["fg"].any()
    att = baseline_masks(path, "cls_attention", **PRIORS)["fg"]
    # image b: 9 equal values, mass before the j-th is j/9 < 0.6 for j <= 5 -> the first 6
    np.testing.assert_array_equal(att, [0, 1, 0, 1] + [1] * 6 + [0] * 3)
    box = baseline_masks(
        path, "centre_prior", **{**PRIORS, "centre_fraction": 1 / 9, "shape": "box"}
    )["fg"]
    np.testing.assert_array_equal(box[4:], grid_of([1], [1], 3, 3))
    assert list(baseline_masks(path, "centre_prior", **PRIORS)["image_ids"]) == ["a", "b"]
    with pytest.raises(ValueError, match="baseline"):
        baseline_masks(path, "random", **PRIORS)


@pytest.mark.parametrize("baseline", BASELINES)
def test_run_writes_a_patch_masks_store_refine_reads(tmp_path, baseline):
    rng = np.random.default_rng(0)
    grids = np.array([[3, 4], [5, 5]], dtype=np.int32)
    offsets = np.array([0, 12, 37], dtype=np.int64)
    features = write_store(
        tmp_path / "features" / "s0000.zarr",
        {
            "cls_attn": rng.random(37).astype(np.float32),
            "offsets": offsets,
            "grid": grids,
            "image_ids": np.array(["a", "b"]),
        },
    )
    records = []
    for image_id, (gh, gw) in zip("ab", grids, strict=True):
        path = tmp_path / f"{image_id}.png"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (8 * gh, 8 * gw, 3), dtype=np.uint8))
        records.append(ImageRecord(image_id, str(path), "", 8 * int(gh), 8 * int(gw), "s0000"))
    settings = {"baseline": baseline, "centre_fraction": 0.5, "attention_mass": 0.6}
    out = baselines.run(stage_job({"features": features}, tmp_path / "pm.zarr", settings))
    pm = open_store(out)
    want = baseline_masks(features, baseline, **PRIORS)
    merged = np.asarray(pm["merged"][:])
    assert merged.dtype == np.uint8
    np.testing.assert_array_equal(merged, want["fg"])
    score = np.asarray(pm["score"][:])
    assert score.dtype == np.float32  # the dtype of merge's soft score
    np.testing.assert_array_equal(score, want["fg"])
    layout = patch_layout(pm)
    np.testing.assert_array_equal(layout["offsets"], offsets)
    np.testing.assert_array_equal(layout["grid"], grids)
    assert list(read_ids(pm)) == ["a", "b"]
    assert pm.attrs["baseline"] == baseline and pm.attrs["settings"] == settings
    assert pm.attrs["settings_digest"] == settings_attrs(settings)["settings_digest"]
    # refine runs on it unchanged; without the CRF a 0/1 score at threshold 0.5 keeps
    # exactly the patches of the mask, upsampled
    px = open_store(
        run_refine(
            out,
            records,
            tmp_path / "px.zarr",
            crf=False,
            threshold=0.5,
            **crf_settings(),
            processes=1,
            attrs={},
        )
    )
    for i, (gh, gw) in enumerate(grids):
        mask = pixel_map(px, "mask", i)
        fg = want["fg"][offsets[i] : offsets[i + 1]].reshape(gh, gw)
        assert mask.shape == (8 * gh, 8 * gw)
        np.testing.assert_array_equal(mask[4::8, 4::8], fg)  # the patch centres
        if baseline == "all_background":
            assert not mask.any()
