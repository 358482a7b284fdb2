"""The analysis grid: variants of the config and the keys that make them share stages."""

import copy
import os

import pytest
import yaml
from snakemake.utils import validate

from lcseg_steps.analysis import grid
from lcseg_steps.pipeline import stage_settings
from tests.helpers import SCHEMA


def _validate(cfg):
    validate(cfg, SCHEMA)


def _config(analysis=None):
    cfg = {"run": "t", "analysis": analysis or {}}
    _validate(cfg)
    return cfg


def _grid(**analysis):
    spec = {"axes": {}, "variants": [], "baselines": [], **analysis}
    return grid.variants(_config(spec), _validate)


def test_stage_settings_are_the_rules_settings():
    """The settings the rules pass (and stores record) name the schema's keys; a change
    here would change every store's digest."""
    cfg = _config()
    assert stage_settings("image_level", cfg, seed=3) == {
        "feature": "k",
        "image_clusterer": "kmeans",
        "k_image": 2,
        "fg_rule": "attention",
        "max_iter": 30,
        "tol": 1e-4,
        "device": "auto",
        "seed": 3,
    }
    # merge draws nothing at random: no seed, although its store lives under seed<N>/
    assert stage_settings("merge", cfg, seed=0) == {
        "feature": "k",
        "levels": ["dataset", "category", "image"],
        "consistency": "vote",
        "min_levels": 2,
    }
    assert stage_settings("extract", cfg) == {
        "backbone": cfg["backbone"],
        "extract": cfg["extract"],
    }
    assert "seed" not in stage_settings("refine", cfg)
    assert stage_settings("objects", cfg)["backbone"] == cfg["backbone"]
    with pytest.raises(ValueError, match="seeded"):
        stage_settings("assign", cfg)


def test_default_grid_names_and_kinds():
    vs = grid.variants(_config(), _validate)
    names = [v.name for v in vs]
    assert names[0] == "base" and vs[0].changes == {}
    assert "clustering.feature=q" in names and "clustering.feature=v" in names
    # the axis value equal to the base's is the base row, not a second one
    assert "clustering.feature=k" not in names
    assert [v.name for v in vs if v.kind == "baseline"] == [
        "baseline:all_background",
        "baseline:centre_prior",
        "baseline:cls_attention",
    ]
    assert len(set(names)) == len(names)


def test_variants_that_differ_after_extraction_share_it():
    vs = _grid(
        axes={
            "clustering.feature": ["q"],
            "labels.class_clusterer": ["kmeans"],
            "extract.layer": [-2],
            "backbone.name": ["dinov2_vits14"],
        },
        baselines=["centre_prior"],
    )
    by = {v.name: v for v in vs}
    base, q, km = by["base"], by["clustering.feature=q"], by["labels.class_clusterer=kmeans"]
    layer, dinov2 = by["extract.layer=-2"], by["backbone.name=dinov2_vits14"]
    cp = by["baseline:centre_prior"]
    assert q.keys["extract"] == km.keys["extract"] == base.keys["extract"] == cp.keys["extract"]
    assert layer.keys["extract"] != base.keys["extract"] != dinov2.keys["extract"]
    assert len({v.keys["extract"] for v in vs}) == 3
    # the class clusterer changes assign and what follows, not the masks or the regions
    for stage in ("image_level", "fit_dataset", "fit_category", "merge", "refine", "objects"):
        assert km.keys[stage] == base.keys[stage], stage
    for stage in ("assign", "segment", "evaluate"):
        assert km.keys[stage] != base.keys[stage], stage
    # the feature changes every clustering stage; the index stays (same patch size)
    assert (
        q.keys["index"] == base.keys["index"] and q.keys["image_level"] != base.keys["image_level"]
    )
    # a 14 px patch changes which images the index can take
    assert dinov2.keys["index"] != base.keys["index"]
    assert "image_level" not in cp.keys and "baselines" in cp.keys


def test_keys_depend_on_upstream_keys():
    vs = _grid(axes={"extract.layer": [0]})
    base, layer = vs
    # merge's own settings are equal, its inputs are not
    assert grid.node_settings("merge", base) == grid.node_settings("merge", layer)
    assert base.keys["merge"] != layer.keys["merge"]


def test_switched_off_levels_have_no_fit():
    vs = _grid(
        variants=[
            {"name": "img", "set": {"clustering": {"levels": ["image"], "consistency": "union"}}}
        ]
    )
    img = vs[1]
    assert "fit_dataset" not in img.keys and "fit_category" not in img.keys
    nodes = grid.nodes(vs)
    assert nodes["merge"][img.keys["merge"]].deps == {
        "extract": img.keys["extract"],
        "image_level": img.keys["image_level"],
    }


def test_seeded_nodes():
    vs = _grid(baselines=["centre_prior"])
    nodes = grid.nodes(vs)
    base, cp = vs
    assert not nodes["extract"][base.keys["extract"]].seeded
    assert nodes["refine"][base.keys["refine"]].seeded
    # a baseline's masks, refinement and regions are the same for every seed
    for stage in ("baselines", "refine", "objects"):
        assert not nodes[stage][cp.keys[stage]].seeded, stage
    assert nodes["assign"][cp.keys["assign"]].seeded
    assert nodes["assign"][cp.keys["assign"]].settings["empty_ok"] is True


def test_a_variant_equal_to_an_earlier_one_is_left_out():
    vs = _grid(
        axes={"clustering.consistency": ["intersect"]},
        variants=[{"name": "same", "set": {"clustering": {"consistency": "intersect"}}}],
    )
    assert [v.name for v in vs] == ["base", "clustering.consistency=intersect"]


def test_varying_keys_and_row_cells():
    vs = _grid(
        axes={"clustering.feature": ["q"], "backbone.name": ["dino_vitb16"]},
        baselines=["all_background"],
    )
    varying = grid.varying_keys(vs)
    assert varying == ["clustering.feature", "backbone.name"]
    assert grid.row_keys(vs[0], varying) == {
        "clustering.feature": "k",
        "backbone.name": "dino_vits16",
    }
    # a baseline does not cluster: only its backbone cell is shown
    assert grid.row_keys(vs[-1], varying) == {"backbone.name": "dino_vits16"}
    assert grid.value_label(["image", "dataset"]) == "image+dataset"
    assert grid.value_label(0.5) == "0.5"


@pytest.mark.parametrize(
    "analysis, message",
    [
        ({"axes": {"dataset.name": ["voc12"]}}, "cannot vary"),
        ({"axes": {"seeds": [[1]]}}, "cannot vary"),
        ({"axes": {"clustering.featur": ["q"]}}, "not a config key"),
        ({"axes": {"clustering.feature": ["x"]}}, r"analysis.axes.clustering.feature=x"),
        # valid keys that contradict each other: caught before any job runs
        ({"axes": {"clustering.levels": [["image"]]}}, r"clustering.levels=image: .*min_levels"),
        (
            {"variants": [{"name": "bad", "set": {"clustering": {"levels": []}}}]},
            r"analysis.variants\[0\] \(bad\)",
        ),
        (
            {
                "variants": [{"name": "a", "set": {"clustering": {"k_image": 3}}}] * 1
                + [{"name": "a", "set": {"clustering": {"k_image": 4}}}]
            },
            "unique",
        ),
    ],
)
def test_bad_grids_are_named(analysis, message):
    with pytest.raises(ValueError, match=message):
        _grid(**analysis)


def test_extractions_one_per_distinct_setting():
    vs = _grid(axes={"clustering.feature": ["q", "v"], "extract.layer": [0, -2]})
    ex = grid.extractions(vs)
    assert [(e["backbone"], e["layer"]) for e in ex] == [
        ("dino_vits16", -1),
        ("dino_vits16", 0),
        ("dino_vits16", -2),
    ]
    assert ex[0]["features"] == ["q", "k", "v"]


def test_voc_analysis_config_is_valid():
    path = os.path.join(
        os.path.dirname(__file__), "..", "workflow", "configs", "voc12_analysis.yaml"
    )
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    _validate(cfg)
    vs = grid.variants(copy.deepcopy(cfg), _validate)
    names = [v.name for v in vs]
    assert len(names) == len(set(names)) > 10
    assert len(grid.extractions(vs)) >= 3
