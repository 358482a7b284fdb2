"""The generated scene demo (``dataset.name: demo_scene``): every pixel labelled (no void,
no background), several stuff and object classes, deterministic from the seed, written
by rule demo_data's stage, and a dry run of the workflow on it."""

from types import SimpleNamespace

import numpy as np
import pytest

from lcseg_steps.data.demo import demo_ids
from lcseg_steps.data.demo_scene import (
    FIRST_OBJECT,
    SCENE_CLASSES,
    STUFF_CLASSES,
    generate_demo_scene,
    render_scene_image,
)
from lcseg_steps.data.image_table import class_names, list_images, load_ground_truth
from lcseg_steps.data.images import read_rgb
from lcseg_steps.data.registry import get_dataset, has_background
from tests.helpers import TINY, scheduled, snakemake

SMALL = {"min_size": 64, "max_size": 120}


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_pixel_has_a_class_and_images_hold_several():
    seen = set()
    for i in range(12):
        rgb, labels, objects = render_scene_image(np.random.default_rng([5, i]), **SMALL)
        assert rgb.shape[:2] == labels.shape and rgb.dtype == np.uint8
        assert labels.max() < len(SCENE_CLASSES)  # no void, nothing outside the classes
        present = set(np.unique(labels).tolist())
        assert len(present) >= 3, present
        assert 0 in present  # sky at the top
        assert present & set(range(1, FIRST_OBJECT))  # ground stuff
        assert set(objects) <= present and objects  # every object stays visible
        seen |= present
    # over a dozen images every stuff class and several object classes occur
    assert set(range(len(STUFF_CLASSES))) <= seen
    assert len(seen - set(range(FIRST_OBJECT))) >= 3


def test_generation_is_deterministic_and_per_image(tmp_path):
    ids = generate_demo_scene(tmp_path / "a", 4, seed=3, log=lambda s: None, **SMALL)
    generate_demo_scene(tmp_path / "b", 4, seed=3, log=lambda s: None, **SMALL)
    generate_demo_scene(tmp_path / "c", 4, seed=4, log=lambda s: None, **SMALL)
    generate_demo_scene(tmp_path / "d", 2, seed=3, log=lambda s: None, **SMALL)
    a, b, c, d = (_files(tmp_path / x) for x in "abcd")
    assert ids == demo_ids(4) and a == b and a != c
    assert all(a[p] == d[p] for p in d if "val.txt" not in str(p))  # image i: (seed, i)
    with pytest.raises(ValueError, match="touching"):
        generate_demo_scene(tmp_path / "e", 2, touching=0.5, log=lambda s: None)


def test_registered_without_background_and_read_back(tmp_path):
    ds = get_dataset("demo_scene")
    assert ds.generated and not ds.background and not has_background("demo_scene")
    cfg = {"name": "demo_scene", "root": str(tmp_path), "demo": {"n_images": 3, "seed": 1}}
    from lcseg_steps.stages.demo_data import run

    job = SimpleNamespace(
        config={"dataset": cfg},
        output=[str(tmp_path)],
        params=SimpleNamespace(demo={"n_images": 3, "seed": 1, **SMALL}),
        log=lambda _m: None,
    )
    run(job)
    assert class_names(cfg) == SCENE_CLASSES
    for r in list_images(cfg):
        gt = load_ground_truth(r)
        assert gt.shape == read_rgb(r.path).shape[:2] and gt.max() < len(SCENE_CLASSES)


def test_the_stage_still_writes_the_object_demo_as_before(tmp_path):
    from lcseg_steps.data.demo import generate_demo
    from lcseg_steps.stages.demo_data import run

    params = {"n_images": 2, "seed": 1, **SMALL}
    job = SimpleNamespace(
        config={"dataset": {"name": "demo"}},
        output=[str(tmp_path / "stage")],
        params=SimpleNamespace(demo=params),
        log=lambda _m: None,
    )
    run(job)
    generate_demo(tmp_path / "direct", log=lambda _m: None, **params)
    assert _files(tmp_path / "stage") == _files(tmp_path / "direct")


@pytest.mark.integration
def test_workflow_dry_run_on_the_scene_demo(tmp_path):
    cfg = {
        **TINY,
        "run": "scene",
        "dataset": {"name": "demo_scene", "demo": TINY["dataset"]["demo"]},
    }
    r = snakemake(tmp_path, cfg, "-n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = scheduled(r)
    assert jobs["demo_data"] == 1 and jobs["evaluate"] == 1, jobs
