"""Stage settings: their digests, the attrs every store records, and the checks of config
keys against each other that the schema cannot express (run before any job).

Which keys each stage reads is declared in :mod:`lcseg_steps.pipeline`. Imported by the
Snakefile while the DAG is built: nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

AUTO = "auto"  # labels.n_classes, clustering.n_categories: chosen by the eigengap


def call_with_settings(fn, *args, settings: Mapping, **given):
    """``fn(*args, **given)`` plus every entry of a stage's ``settings`` that ``fn`` takes
    as a parameter of the same name. Below the stage boundary a setting keeps its schema
    name (``tests/test_schema_names.py``), so a stage's settings as recorded (a store's,
    a ``model.zarr``'s) reach the library function that uses them with no list of keys to
    keep in step: a new per-image option needs no edit here or at the callers."""
    import inspect

    params = inspect.signature(fn).parameters
    picked = {k: v for k, v in settings.items() if k in params and k not in given}
    return fn(*args, **picked, **given)


def is_auto(count: Any) -> bool:
    """Whether a count key (``labels.n_classes``, ``clustering.n_categories``) is ``auto``."""
    return count == AUTO


def settings_digest(settings: Any) -> str:
    """Short stable hash of JSON-able settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def settings_attrs(settings: dict) -> dict:
    """Store attrs of a stage's settings: the settings and the digest of exactly them."""
    return {"settings": settings, "settings_digest": settings_digest(settings)}


def config_problems(config: Mapping) -> list[str]:
    """What the schema cannot say: keys that contradict each other (each would otherwise
    stop a job halfway through the run, after extraction)."""
    c = config["clustering"]
    out = []
    stored = list(config["extract"]["store_features"])
    if c["feature"] not in stored:
        out.append(
            f"clustering.feature is {c['feature']!r} but extract.store_features {stored} "
            "does not store it"
        )
    if c["consistency"] == "vote" and c["min_levels"] > len(c["levels"]):
        out.append(
            f"clustering.min_levels is {c['min_levels']} but only {len(c['levels'])} "
            f"level(s) are enabled ({', '.join(c['levels'])}): lower min_levels or use "
            "consistency union or intersect"
        )
    if c["image_clusterer"] != "kmeans" and c["k_image"] != 2:
        out.append(
            f"clustering.image_clusterer {c['image_clusterer']!r} splits each image in two: "
            f"clustering.k_image must be 2, got {c['k_image']}"
        )
    out += _auto_problems(config)
    out += _scene_problems(config)
    return out


def _scene_problems(config: Mapping) -> list[str]:
    """Scene mode (``labels.scope: scene``) labels every pixel with one of a fixed
    number of classes, 8-bit ids ``0..n_classes-1``."""
    labels = config["labels"]
    if labels.get("scope", "objects") != "scene":
        return []
    n = labels["n_classes"]
    if is_auto(n):
        return [
            "labels.scope scene needs a fixed labels.n_classes (auto chooses a count of "
            "object classes from region descriptors, which scene mode has none of)"
        ]
    if not 2 <= n <= 255:
        return [f"labels.scope scene: labels.n_classes must be in 2..255, got {n}"]
    return []


def _auto_problems(config: Mapping) -> list[str]:
    """A count ``auto`` needs a range ``[min, max]`` with ``min <= max`` and, for the
    classes, a region sample larger than ``min``."""
    out = []
    for block, count in (("labels", "n_classes"), ("clustering", "n_categories")):
        c = config[block]
        if not is_auto(c[count]):
            continue
        lo, hi = c["auto_range"]
        if lo > hi:
            out.append(f"{block}.auto_range is {[lo, hi]}: its min is above its max")
        if block == "labels" and c["fit_sample"] is not None and c["fit_sample"] <= lo:
            out.append(
                f"labels.fit_sample is {c['fit_sample']} but labels.n_classes auto needs more "
                f"regions than labels.auto_range's min {lo}: raise labels.fit_sample"
            )
    return out


def check_config(config: Mapping, where: str = "config") -> None:
    """Raise one ValueError naming every problem of :func:`config_problems`."""
    problems = config_problems(config)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
