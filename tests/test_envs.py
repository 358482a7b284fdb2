"""Conda environments: every rule names an env file that exists, and the k-means rules get
the one with CuPy exactly when the config asks for CUDA."""

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

KMEANS_RULES = {"image_level", "fit_dataset", "fit_category"}
# scene mode's k-means rules (in the default config: their analysis rules only)
SCENE_KMEANS_RULES = {"scene_dataset", "scene_levels"}


def rule_envs(tmp_path: Path, device: str) -> dict[str, str]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"clustering": {"device": device, "n_categories": 2}}))
    with SnakemakeApi() as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[cfg]),
            snakefile=Path(REPO) / "Snakefile",
            workdir=tmp_path,
        )
        # the parsed rules that run a job (Snakemake's API has no public accessor for them)
        return {r.name: r.conda_env for r in wf._workflow.rules if r.log}


def deps(env: str) -> set[str]:
    spec = yaml.safe_load((Path(REPO) / "envs" / env).read_text())
    names = set()
    for d in spec["dependencies"]:
        for item in d["pip"] if isinstance(d, dict) else [d]:
            names.add(item.split(">")[0].split("=")[0].split("<")[0].strip())
    return names


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_kmeans_rules_get_cupy_only_when_the_config_asks_for_cuda(tmp_path, device):
    envs = rule_envs(tmp_path, device)
    assert KMEANS_RULES <= set(envs)
    assert all(env for env in envs.values()), envs  # every rule names one
    for rule, env in envs.items():
        assert (Path(REPO) / "workflow/rules" / env).resolve().is_file(), (rule, env)
        # the analysis reuses each k-means rule as analysis_<rule>, with its env
        kmeans = KMEANS_RULES | SCENE_KMEANS_RULES
        want_gpu = rule.removeprefix("analysis_") in kmeans and device == "cuda"
        assert env.endswith("cluster-gpu.yaml") == want_gpu, (rule, env)


def test_the_gpu_env_is_the_cluster_env_plus_cupy():
    assert deps("cluster-gpu.yaml") == deps("cluster.yaml") | {"cupy"}
