"""Config reaches the code as the schema names it: every stage function takes exactly the
settings its rule passes (``lcseg_steps.pipeline.stage_settings``), under the same names, and has
no default for a config key (the schema is their one home). A rename on either side
fails here."""

import importlib
import inspect

import pytest

from lcseg_steps import pipeline
from lcseg_steps.pipeline import stage_settings
from tests.schema_defaults import default_config

# stage -> (module, stage function, the arguments that are not settings: inputs,
# outputs and what the job itself gives)
STAGES = {
    "index": ("index", "run_index", {"index_out", "skipped_out", "threads", "log"}),
    "extract": ("extract", "run_extract", {"index", "shard", "out", "gpus", "attrs", "log"}),
    "image_level": (
        "image_level",
        "run_image_level",
        {"features", "out", "attrs", "log", "threads"},
    ),
    "fit_dataset": (
        "fit_dataset",
        "run_fit_dataset",
        {"features", "image_levels", "out", "attrs", "log", "threads"},
    ),
    "fit_category": (
        "fit_category",
        "run_fit_category",
        {"features", "image_levels", "out", "attrs", "log", "threads"},
    ),
    "merge": (
        "merge",
        "run_merge",
        {"features", "image_level", "dataset_level", "category_level", "out", "attrs", "log"},
    ),
    "refine": (
        "refine",
        "run_refine",
        {"patch_masks", "records", "out", "processes", "attrs", "log"},
    ),
    "objects": (
        "objects",
        "run_objects",
        {"pixel_masks", "features", "records", "out", "attrs", "log"},
    ),
    "assign": ("assign", "run_assign", {"objects", "shards", "out", "empty_ok", "attrs", "log"}),
    "model": (
        "model",
        "run_model",
        {"features", "dataset_level", "category_level", "classes", "out", "attrs", "log"},
    ),
    "scene_dataset": (
        "scene_dataset",
        "run_scene_dataset",
        {"features", "out", "attrs", "log", "threads"},
    ),
    "scene_levels": (
        "scene_levels",
        "run_scene_levels",
        {"features", "scene_dataset", "out", "attrs", "log", "threads", "model", "alone"},
    ),
    "scene_model": (
        "scene_model",
        "run_scene_model",
        {"features", "scene_dataset", "out", "attrs", "log"},
    ),
    "scene_refine": (
        "scene_refine",
        "run_scene_refine",
        {"scene_levels", "records", "out", "pred_dir", "processes", "attrs", "log"},
    ),
    "evaluate": (
        "evaluate",
        "run_evaluate",
        {
            "semantic",
            "records",
            "out_json",
            "iou_png",
            "confusion_png",
            "class_names",
            "facts",
            "log",
        },
    ),
}


def _params(module: str, function: str) -> dict[str, inspect.Parameter]:
    fn = getattr(importlib.import_module(f"lcseg_steps.stages.{module}"), function)
    params = inspect.signature(fn).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{function} takes **kwargs"
    return dict(params)


def _check(stage: str, settings: dict) -> None:
    module, function, other = STAGES[stage]
    params = _params(module, function)
    taken = set(params) - other
    assert set(settings) <= taken, f"{function} does not take {sorted(set(settings) - taken)}"
    # a setting the stage may go without (objects: per descriptor) defaults to None
    for name in taken - set(settings):
        assert params[name].default is None, f"{function} takes {name!r}, not a {stage} setting"
    for name in settings:
        assert params[name].default in (inspect.Parameter.empty, None), (
            f"{function}({name}=...) has a default: the schema holds the defaults"
        )


def test_every_stage_with_settings_is_checked():
    # baselines are checked below, against the analysis grid's settings
    with_settings = {s.name for s in pipeline.STAGES if s.reads} - {"baselines"}
    assert with_settings == set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_function_takes_its_settings_by_their_schema_names(stage):
    settings = stage_settings(stage, default_config(), seed=0)
    _check(stage, settings)


@pytest.mark.parametrize("descriptor", ["cls", "masked_keys"])
def test_objects_takes_the_settings_of_either_descriptor(descriptor):
    cfg = default_config()
    cfg["objects"]["descriptor"] = descriptor
    _check("objects", stage_settings("objects", cfg))


def test_index_takes_the_backbone_when_its_name_gives_no_patch_size():
    cfg = default_config()
    cfg["backbone"]["name"] = "vit_small_dino_custom"  # no "patch<N>" in the name
    settings = stage_settings("index", cfg)
    assert "backbone" in settings
    _check("index", settings)


def test_baselines_take_their_settings_by_name():
    from lcseg_steps.analysis import grid

    variant = next(v for v in grid.variants(default_config()) if v.kind == "baseline")
    settings = grid.node_settings("baselines", variant)
    params = _params("baselines", "run_baseline")
    taken = set(params) - {"features", "out", "attrs", "log"}
    assert set(settings) == taken
    assert all(params[n].default is inspect.Parameter.empty for n in settings)


def test_report_takes_the_gallery_size_as_report_gallery():
    params = _params("report", "run_report")
    assert "gallery" in params and params["gallery"].default is inspect.Parameter.empty


@pytest.mark.parametrize(
    "stage, block, count",
    [("assign", "labels", "n_classes"), ("fit_category", "clustering", "n_categories")],
)
def test_a_count_auto_brings_its_range(stage, block, count):
    """``auto_range`` is a setting only with the count ``auto`` (a fixed count does not
    rerun when the range changes)."""
    cfg = default_config()
    assert "auto_range" not in stage_settings(stage, cfg, seed=0)
    cfg[block][count] = "auto"
    settings = stage_settings(stage, cfg, seed=0)
    assert settings[count] == "auto" and settings["auto_range"] == cfg[block]["auto_range"]
    _check(stage, settings)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_scene_levels_takes_k_image_only_with_the_image_level(weight):
    cfg = default_config()
    cfg["labels"]["scope"] = "scene"
    cfg["scene"]["segment_weight"] = weight
    settings = stage_settings("scene_levels", cfg, seed=0)
    assert ("k_image" in settings) == (weight > 0)
    _check("scene_levels", settings)
