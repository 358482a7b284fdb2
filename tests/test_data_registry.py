"""The dataset registry: one module per dataset, no import cycle in lcseg_steps/data."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lcseg_steps.data.image_table import class_names, list_images
from lcseg_steps.data.records import Dataset, ImageRecord
from lcseg_steps.data.registry import DATASETS, dataset_for_gt, get_dataset
from tests.helpers import REPO

DATA = Path(REPO) / "lcseg_steps" / "data"
MODULES = sorted(f"lcseg_steps.data.{p.stem}" for p in DATA.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_each_data_module_imports_first_in_a_fresh_interpreter(module):
    p = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]


def _imports(source):
    """lcseg_steps.data modules a file imports, at module level or inside functions (a
    deferred import inside a function still makes a cycle, only a hidden one)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES}
    return out


def _find_cycle(graph):
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*path, m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in graph[m]:
            visit(dep, [*path, m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_data_modules_import_graph_is_acyclic():
    graph = {m: _imports((DATA / f"{m.rsplit('.', 1)[1]}.py").read_text()) for m in MODULES}
    _find_cycle(graph)
    # the check sees the cycle this layout replaced (index <-> voc/coco, deferred one way)
    with pytest.raises(AssertionError, match="import cycle"):
        _find_cycle(
            {
                "lcseg_steps.data.image_table": _imports(
                    "def f():\n    from lcseg_steps.data.voc import x"
                ),
                "lcseg_steps.data.voc": _imports(
                    "from lcseg_steps.data.image_table import ImageRecord"
                ),
            }
        )
    # the shared types stay a leaf
    assert graph["lcseg_steps.data.records"] == set()


def test_schema_enum_lists_the_registered_datasets():
    schema = yaml.safe_load(
        (Path(REPO) / "workflow" / "schemas" / "config.schema.yaml").read_text()
    )
    enum = schema["properties"]["dataset"]["properties"]["name"]["enum"]
    assert enum == list(DATASETS)


@pytest.mark.parametrize("name", list(DATASETS))
def test_registered_modules_provide_a_dataset(name):
    ds = get_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name


def test_unknown_dataset_names_the_key_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match="dataset.name.*imagenet.*demo, voc12, coco"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match="dataset.name"):
        class_names({"name": "imagenet", "root": str(tmp_path)})


def test_inputs_of_each_dataset(tmp_path):
    root = str(tmp_path)
    assert get_dataset("demo").inputs({"root": root}) == [root]
    voc = get_dataset("voc12").inputs(
        {"root": root, "split": "train", "extra_lists": ["a.txt", "/abs/b.txt"]}
    )
    assert voc == [f"{root}/ImageSets/Segmentation/train.txt", f"{root}/a.txt", "/abs/b.txt"]
    coco = get_dataset("coco").inputs({"root": root, "split": "val2017"})
    assert coco == [f"{root}/annotations/instances_val2017.json"]
    assert [n for n in DATASETS if get_dataset(n).generated] == ["demo", "demo_scene"]
    assert all(get_dataset(n).generate for n in DATASETS if get_dataset(n).generated)


def test_ground_truth_references_go_to_their_reader():
    assert dataset_for_gt("/x/instances_val2017.json#42").name == "coco"
    assert dataset_for_gt("/x/SegmentationClass/a.png").read_gt is get_dataset("voc12").read_gt


def test_demo_listing_through_the_registry(tmp_path):
    cfg = {"name": "demo", "root": str(tmp_path), "demo": {"n_images": 2}}
    recs = list_images(cfg)
    assert recs == get_dataset("demo").list_images(cfg)
    assert [r.image_id for r in recs] == ["demo_0000", "demo_0001"]
    assert all(isinstance(r, ImageRecord) for r in recs)
    assert class_names(cfg)[0] == "background" and len(class_names(cfg)) == 5
