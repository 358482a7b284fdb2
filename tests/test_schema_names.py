"""Config reaches the code as the schema names it: every stage function takes exactly the
settings its rule passes (``lcseg_steps.pipeline.stage_settings``), under the same names, and has
no default for a config key (the schema is their one home). A rename on either side
fails here."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import yaml

from lcseg_steps import pipeline
from lcseg_steps.pipeline import stage_settings
from tests.schema_defaults import SCHEMA, default_config

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


# ------------------------------------------------------------ below the stage boundary
#
# A setting keeps its schema name below the stage function too: a stage (or model.zarr,
# which runs the per-image stages on a new image) passes it to a library function under
# the same keyword (``k_image=k_image``, never ``k=k_image``), and a library parameter
# named as a setting has no default other than the schema's (or None: not given, as for
# the stage functions above).

PACKAGE = Path(__file__).resolve().parents[1] / "lcseg_steps"
CALLERS = [*sorted((PACKAGE / "stages").glob("*.py")), PACKAGE / "apply" / "model_zarr.py"]

# ``device``: a library function takes the device to run on, which the stage resolves from
# the setting's ``auto`` (``perimage.backbone.resolve_device``); its default is ``cpu``.
NOT_SETTINGS = {"device"}


def _all_on() -> dict:
    """The default config with every optional block a stage may read switched on."""
    cfg = default_config()
    cfg["objects"]["regions"] = "split"
    cfg["labels"]["n_classes"] = "auto"
    cfg["clustering"]["n_categories"] = "auto"
    return cfg


def setting_names() -> set[str]:
    """The settings' names as the stages take them: every key of every stage's settings,
    and those of the config blocks a stage takes whole (``extract``, ``model``'s blocks);
    not the keys of the dataset's and the backbone's descriptions (``name``, ``root``,
    ``masks``), which travel as one dict."""
    names: set[str] = set()

    def walk(settings: dict) -> None:
        for key, value in settings.items():
            if key in ("dataset", "backbone"):
                continue
            if isinstance(value, dict):
                walk(value)
            else:
                names.add(key)

    cfg = _all_on()
    for s in pipeline.STAGES:
        if s.reads:
            walk(stage_settings(s.name, cfg, seed=0))
    return names - NOT_SETTINGS


def schema_defaults() -> dict[str, list]:
    """Leaf key name -> the schema's defaults of every key of that name."""
    with open(SCHEMA) as fh:
        schema = yaml.safe_load(fh)
    out: dict[str, list] = {}

    def walk(node: dict) -> None:
        for key, sub in node.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub)
            elif "default" in sub:
                out.setdefault(key, []).append(sub["default"])

    walk(schema)
    return out


def _package_bound(tree: ast.Module) -> set[str]:
    """The names a module binds to the package: what it imports from ``lcseg_steps``, its
    own functions and classes, and ``self``."""
    bound = {"self"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcseg_steps"):
            bound |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            bound |= {a.asname or a.name for a in node.names if a.name.startswith("lcseg_steps")}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
    return bound


def _setting_passed(value: ast.expr, names: set[str]) -> str | None:
    """The setting an argument passes: a variable named as one, or ``block["key"]``."""
    if isinstance(value, ast.Name) and value.id in names:
        return value.id
    if (
        isinstance(value, ast.Subscript)
        and isinstance(value.slice, ast.Constant)
        and value.slice.value in names
    ):
        return value.slice.value
    return None


def renamed_settings(source: str, names: set[str]) -> list[str]:
    """``line: keyword=setting`` for every call of a package function in ``source`` that
    passes a setting under another keyword."""
    tree = ast.parse(source)
    bound = _package_bound(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        root = node.func
        while isinstance(root, ast.Attribute):
            root = root.value
        if not (isinstance(root, ast.Name) and root.id in bound):
            continue  # numpy, the log, ...: not ours to name
        for kw in node.keywords:
            setting = _setting_passed(kw.value, names)
            if kw.arg is not None and setting is not None and kw.arg != setting:
                out.append(f"{node.lineno}: {kw.arg}={ast.unparse(kw.value)}")
    return out


def drifting_defaults(functions, names: set[str], defaults: dict[str, list]) -> list[str]:
    """``function(name=default)`` for every parameter of ``functions`` named as a setting
    whose default is neither None nor the schema's."""
    out = []
    for fn in functions:
        for p in inspect.signature(fn).parameters.values():
            if p.name not in names or p.default is p.empty or p.default is None:
                continue
            d = list(p.default) if isinstance(p.default, tuple) else p.default
            if not any(d == want for want in defaults.get(p.name, [])):
                out.append(f"{fn.__module__}.{fn.__qualname__}({p.name}={p.default!r})")
    return out


def _package_functions():
    """Every function and method the package defines."""
    for info in pkgutil.walk_packages([str(PACKAGE)], "lcseg_steps."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != info.name:
                continue
            if inspect.isfunction(obj):
                yield obj
            elif inspect.isclass(obj):
                yield from (f for f in vars(obj).values() if inspect.isfunction(f))


def test_setting_names_are_the_stages():
    names = setting_names()
    assert {"k_image", "image_clusterer", "regions", "min_region_area", "num_workers"} <= names
    assert {"class_clusterer", "category_clusterer", "fit_sample", "max_parts"} <= names
    assert not names & {"name", "root", "masks", "device"}


@pytest.mark.parametrize("path", CALLERS, ids=lambda p: p.name)
def test_stages_pass_settings_under_their_schema_names(path):
    bad = renamed_settings(path.read_text(), setting_names())
    assert not bad, f"{path.name} renames settings at a call: {bad}"


def test_library_defaults_are_the_schemas():
    bad = drifting_defaults(_package_functions(), setting_names(), schema_defaults())
    assert not bad, f"defaults that are not the schema's (remove them): {bad}"


def test_the_checks_below_the_boundary_can_fail():
    names = {"k_image", "image_clusterer", "regions", "max_iter", "n_classes"}
    source = (
        "import numpy as np\n"
        "from lcseg_steps.clustering import levels as lv\n"
        "from lcseg_steps.perimage.regions import object_regions\n"
        "def f(k_image, image_clusterer, il, o, n_classes):\n"
        "    lv.image_level(k=k_image, image_clusterer=image_clusterer)\n"
        "    object_regions(mode=o['regions'])\n"
        "    self.segment(clusterer=il['image_clusterer'])\n"
        "    np.bincount(minlength=n_classes)\n"  # not a package function
        "    lv.image_level(k_image=k_image, max_iter=30)\n"  # a constant is no setting
    )
    assert renamed_settings(source, names) == [
        "5: k=k_image",
        "6: mode=o['regions']",
        "7: clusterer=il['image_clusterer']",
    ]

    def fit(x, k_image=2, max_iter=50, n_classes=None, tol=1e-3):
        pass

    defaults = {"k_image": [2], "max_iter": [30], "n_classes": [20]}
    assert drifting_defaults([fit], names, defaults) == [
        f"{__name__}.{fit.__qualname__}(max_iter=50)"
    ]
