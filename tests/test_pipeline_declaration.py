"""The pipeline is declared once (lcseg_steps/pipeline.py): a stage added there runs in the
default run and in every analysis variant, with no other edit."""

import os
import shutil

import pytest

from lcseg_steps import pipeline
from tests.helpers import REPO, TINY, scheduled, snakemake

TOY = """

# a toy stage, declared by tests/test_pipeline_declaration.py and nothing else
STAGES = (
    *STAGES,
    Stage(
        "toy",
        outputs={"toy": "toy/{shard}.zarr/"},
        reads=("clustering.feature",),
        inputs=("index", "merge"),
        kinds=frozenset({"method"}),
        target=True,
    ),
)
"""


def _copy_with_toy(dest):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(os.path.join(REPO, name), dest / name)
    for name in ("workflow", "lcseg_steps", "envs"):
        shutil.copytree(
            os.path.join(REPO, name), dest / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    with open(dest / "lcseg_steps" / "pipeline.py", "a") as fh:
        fh.write(TOY)


def _dry_run(repo, workdir, config, target):
    r = snakemake(workdir, config, "-n", target, repo=repo)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("toy_repo")
    _copy_with_toy(repo)
    return repo


def test_a_declared_stage_runs_in_the_default_run(toy_repo, tmp_path):
    config = {**TINY, "seeds": [0, 1]}
    r = _dry_run(toy_repo, tmp_path, config, "all")
    jobs = scheduled(r)
    # per shard (6 images, 4 a shard: 2 shards) and per seed, since merge depends on it
    assert jobs["toy"] == 4 and jobs["merge"] == 4
    assert "results/tiny/seed1/toy/s0001.zarr" in r.stdout


def test_a_declared_stage_runs_in_every_analysis_variant(toy_repo, tmp_path):
    config = {
        **TINY,
        "analysis": {
            "seeds": [0],
            "axes": {"clustering.feature": ["q"], "clustering.consistency": ["union"]},
            "variants": [],
            "baselines": ["centre_prior"],
            "separability": False,
        },
    }
    jobs = scheduled(_dry_run(toy_repo, tmp_path, config, "analysis"))
    # the base run's toy on its own paths (2 shards), and a keyed toy for each of the two
    # method variants (the baseline has no merge, so no toy)
    assert jobs["toy"] == 2
    assert jobs["analysis_toy"] == 2 * 2
    assert jobs["analysis_merge"] == 2 * 2 and jobs["analysis_baselines"] == 2


def test_the_real_declaration_has_no_toy_and_each_stage_once():
    names = [s.name for s in pipeline.STAGES]
    assert "toy" not in names
    assert len(names) == len(set(names))


def test_inputs_name_declared_stages_in_order():
    """A stage reads only stages declared before it, so one walk builds any graph."""
    seen = set()
    for s in pipeline.STAGES:
        for ref in s.inputs:
            stage, output = pipeline.split_ref(ref)
            assert stage in seen, f"{s.name} reads {stage}, declared later"
            assert output in pipeline.get_stage(stage).outputs
        seen.add(s.name)


def test_analysis_paths_follow_the_run_paths():
    t = pipeline.analysis_template
    assert t("extract", "features", False) == "features/{key}/{shard}.zarr"
    assert t("image_level", "image_level", True) == "image_level/{key}/seed{seed}/{shard}.zarr"
    assert t("fit_dataset", "dataset_level", True) == "dataset_level/{key}/seed{seed}.zarr"
    assert t("evaluate", "metrics", True) == "scores/{key}/seed{seed}/metrics.json"
    assert t("index", "skipped", False) == "index/{key}/skipped.tsv"
    assert t("refine", "pixel_masks", False) == "pixel_masks/{key}/{shard}.zarr"
    assert pipeline.run_template("fit_category", "category_level", True) == (
        "seed{seed}/category_level.zarr"
    )


def test_graph_leaves_out_switched_off_levels_and_baselines_stand_for_merge():
    cfg = {"clustering": {"levels": ["image"]}}
    g = pipeline.graph(cfg)
    assert "fit_dataset" not in g and "fit_category" not in g
    assert g["merge"] == {"features": "extract.features", "image_level": "image_level.image_level"}
    b = pipeline.graph(cfg, "baseline")
    assert "merge" not in b and "image_level" not in b
    assert b["refine"] == {"index": "index.index", "patch_masks": "baselines.patch_masks"}
    seeded = pipeline.seed_dependent(cfg, "baseline")
    assert not seeded["refine"] and not seeded["objects"] and seeded["segment"]


def test_split_and_touching_reach_the_stages_only_when_set():
    """objects.split and dataset.demo.touching are settings only with regions split and a
    touching share above 0: every other run's settings (so its stores, model and reruns)
    are those of before the keys existed."""
    from lcseg_steps.pipeline import stage_settings
    from tests.schema_defaults import default_config

    cfg = default_config()
    assert "touching" not in stage_settings("index", cfg)["dataset"]["demo"]
    assert "split" not in stage_settings("objects", cfg)
    assert "split" not in stage_settings("model", cfg, seed=0)["per_image"]["objects"]
    cfg["objects"]["regions"] = "split"
    cfg["dataset"]["demo"]["touching"] = 0.5
    assert stage_settings("index", cfg)["dataset"]["demo"]["touching"] == 0.5
    objects = stage_settings("objects", cfg)
    assert objects["split"] == cfg["objects"]["split"] and objects["feature"] == "k"
    assert (
        stage_settings("model", cfg, seed=0)["per_image"]["objects"]["split"]
        == cfg["objects"]["split"]
    )
