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


# Across thread counts, batch sizes and CPUs a forward pass may round differently (float32
# sums split another way), so two forward passes of one image are promised close, not
# equal: every row within this cosine of the other's and every element within this
# fraction of the array's largest magnitude.
FORWARD_MIN_COS = 0.9999
FORWARD_MAX_ABS = 1e-3


def assert_forward_close(x, y, what: str = "") -> None:
    """Two forward-pass outputs of the same inputs, within the tolerance above."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    assert x.shape == y.shape, (what, x.shape, y.shape)
    scale = max(float(np.abs(x).max()), 1e-12)
    worst = float(np.abs(x - y).max()) / scale
    assert worst <= FORWARD_MAX_ABS, f"{what}: off by {worst:.2e} of its largest value"
    if x.ndim == 2:
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cos = np.sum(x * y, 1) / np.maximum(norms, 1e-30)
        nonzero = np.linalg.norm(x, axis=1) > 0
        assert cos[nonzero].min() >= FORWARD_MIN_COS, f"{what}: cos {cos.min():.6f}"


def stored_features(store, feature: str, i: int) -> dict:
    """Image ``i`` of a feature store as ``Model.segment(image, features=...)`` takes it:
    what the extract job computed, so that a comparison of later steps does not depend on
    two forward passes rounding alike."""
    from lcseg_steps.stores.layout import image_rows

    return {
        "X": image_rows(store, feature, i),
        "cls": store["cls"][i],
        "cls_attn": image_rows(store, "cls_attn", i),
        "grid": tuple(int(g) for g in store["grid"][i]),
    }


def reference_hungarian(pairs, n_gt: int, n_pred: int) -> tuple[float, float]:
    """lcseg's headline (``dataset_hungarian``) recomputed apart from the package: one
    confusion over ``pairs`` of ``(gt, pred)`` label arrays (gt 255 ignored), predicted ids
    matched one-to-one to classes by scipy's assignment maximising matched pixels, surplus
    ids counted wrong, classes absent from both left out. Returns ``(miou, accuracy)``."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    gt = np.concatenate([np.asarray(g).ravel() for g, _ in pairs]).astype(np.int64)
    pred = np.concatenate([np.asarray(p).ravel() for _, p in pairs]).astype(np.int64)
    keep = gt != 255
    gt, pred = gt[keep], pred[keep]
    conf = np.zeros((n_gt, n_pred), dtype=np.int64)
    np.add.at(conf, (gt, pred), 1)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapped = np.full(n_pred, -1)
    mapped[cols] = rows
    hit = mapped[pred]
    ious = []
    for c in range(n_gt):
        union = int(((hit == c) | (gt == c)).sum())
        if union:
            ious.append(int(((hit == c) & (gt == c)).sum()) / union)
    return float(np.mean(ious)), float((hit == gt).mean())
