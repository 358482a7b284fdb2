"""Helpers shared by test modules (test modules import from here or from other helper
modules, never from each other nor from conftest.py): the repository root, the config
schema, a stand-in for a stage's job, the tiny demo config ``TINY`` and running Snakemake
on it."""

import os
import subprocess
import sys
from types import SimpleNamespace

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SCHEMA = os.path.join(os.path.dirname(__file__), "..", "workflow", "schemas", "config.schema.yaml")

TINY = {
    "run": "tiny",
    "dataset": {
        "name": "demo",
        "demo": {"n_images": 6, "seed": 1, "min_size": 64, "max_size": 100},
    },
    "shard_size": 4,
    "backbone": {
        "name": "vit_small_patch16_224",
        "weights": "random",
        "overrides": {"depth": 2, "embed_dim": 48, "num_heads": 2},
    },
    "extract": {"long_side": 64, "batch_size": 4, "num_workers": 0},
    "clustering": {"n_categories": 2},
    "objects": {"long_side": 32, "min_region_area": 0.0},
    "labels": {"n_classes": 2, "n_neighbors": 3},
    "report": {"gallery": 3},
}


def snakemake(workdir, config, *args, repo=REPO):
    """Run Snakemake on ``config`` in ``workdir``, with the Snakefile and package of
    ``repo`` (another checkout than this one: imported first, and run from ``workdir``,
    since ``-m`` puts the working folder first on sys.path)."""
    cfg = os.path.join(workdir, "config.yaml")
    with open(cfg, "w") as fh:
        yaml.safe_dump(config, fh)
    # ``-m``: also where snakemake is installed without a script beside the interpreter
    cmd = [sys.executable, "-m", "snakemake", "-s", os.path.join(repo, "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", cfg, "--cores", "2", *args]
    if os.path.samefile(repo, REPO):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(workdir)
    )


def scheduled(result) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table."""
    out, jobs, on = result.stdout + result.stderr, {}, False
    for line in out.splitlines():
        if line.startswith("Job stats"):
            on = True
        elif on and line.strip() and not line.startswith(("job", "---")):
            name, count = line.split()
            if name == "total":
                break
            jobs[name] = int(count)
    return jobs


def stage_job(inputs: dict, output, settings: dict) -> SimpleNamespace:
    """A stand-in for ``lcseg_steps.runner.adapter.Job`` with what a stage's ``run`` reads."""
    from lcseg_steps.runner.settings import settings_attrs

    return SimpleNamespace(
        input=SimpleNamespace(**inputs),
        output=[str(output)],
        settings=settings,
        attrs=settings_attrs(settings),
        log=lambda _msg: None,
    )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
