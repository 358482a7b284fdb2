"""The analysis grid: the variants of the config's ``analysis:`` block and the stages each
one needs, keyed so that variants share every stage a normal run of each would compute
alike.

A variant is the run's config with some keys changed (``analysis.axes``: one key at a
time; ``analysis.variants``: named sets of changes), or a baseline (``analysis.baselines``)
whose patch masks replace the three levels. Each stage of a variant gets a key: the digest
of its settings (``lcseg_steps.pipeline.stage_settings``, the seed left out) and of the keys of the
stages it reads. Equal keys mean equal outputs, so a stage is computed once however many
variants need it, a new variant computes only its new stages, and a stage whose key is the
run's own uses the run's own outputs (``results/<run>/features/``, ``seed<N>/...``).

Pure Python over the config: the Snakefile builds the grid while it builds the DAG.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lcseg_steps import pipeline
from lcseg_steps.runner.settings import check_config, settings_digest
from lcseg_steps.stage_reads import dotted_get, scope_of

# keys an axis or a variant may not change: they define the images and the run itself
FIXED = ("run", "dataset", "shard_size", "seeds", "analysis", "report")
KEY_LENGTH = 12


@dataclass(frozen=True)
class Node:
    """One stage of one or more variants: its settings (without the seed), the keys of
    the stages it reads (``deps``: stage name -> key), what it reads under which input
    name (``reads``: input name -> ``"stage.output"``, :func:`lcseg_steps.pipeline.graph`),
    and whether its output depends on the seed (a seeded stage or one reading one; a
    baseline's masks, their refinement and their regions do not, so they are computed
    once for all seeds)."""

    stage: str
    key: str
    settings: dict
    deps: dict
    seeded: bool
    reads: dict = field(default_factory=dict)


@dataclass
class Variant:
    """One row of the analysis table.

    ``name``: ``base``, ``<dotted key>=<value>``, a name from ``analysis.variants``, or
    ``baseline:<name>``; ``kind``: ``method`` or ``baseline``; ``changes``: dotted key ->
    value set on the run's config; ``config``: the full config; ``nodes``: stage ->
    :class:`Node` of every stage it runs (:func:`variant_nodes`), ``keys`` their keys.
    """

    name: str
    kind: str
    changes: dict
    config: dict
    nodes: dict = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, str]:
        return {stage: node.key for stage, node in self.nodes.items()}


def dotted_set(config: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def flatten(changes: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested config fragment -> ``{dotted key: value}`` (dicts are descended, except
    ``backbone.overrides``, which is one value)."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "backbone.overrides":
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def value_label(value: Any) -> str:
    """A short cell text: lists joined with ``+``, the rest as JSON without quotes."""
    if isinstance(value, (list, tuple)):
        return "+".join(value_label(v) for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _check_changes(changes: Mapping[str, Any], base: Mapping, where: str) -> None:
    for dotted in changes:
        if dotted == "labels.scope":
            raise ValueError(
                f"{where}: labels.scope cannot vary in an analysis (objects on a background "
                "and a class for every pixel are scored against different classes); run a "
                "second config instead"
            )
        if dotted.split(".")[0] in FIXED:
            raise ValueError(
                f"{where}: {dotted!r} cannot vary in an analysis (it changes the images or "
                f"the run itself: {', '.join(FIXED)} are fixed); run a second config instead"
            )
        try:
            dotted_get(base, dotted)
        except KeyError:
            raise ValueError(
                f"{where}: {dotted!r} is not a config key (see workflow/schemas/"
                "config.schema.yaml; nested keys are dotted, e.g. clustering.feature)"
            ) from None


def _variant(name, kind, changes, base, validate, where) -> Variant:
    _check_changes(changes, base, where)
    config = copy.deepcopy(dict(base))
    for dotted, value in changes.items():
        dotted_set(config, dotted, value)
    try:
        validate(config)
    except Exception as err:  # the schema's own message, with the variant named
        raise ValueError(f"{where} gives an invalid config: {err}") from err
    check_config(config, where)
    return Variant(name=name, kind=kind, changes=dict(changes), config=config)


def variants(config: Mapping, validate: Callable[[dict], Any] = lambda c: None) -> list[Variant]:
    """The variants of ``config["analysis"]``: ``base`` (the run's own config), one per
    value of each axis that differs from the base, each named variant, then the
    baselines. ``validate(config)`` checks (and completes) a variant's config; it raises
    on an invalid one. A variant whose config equals an earlier one is left out."""
    spec = config["analysis"]
    base = copy.deepcopy(dict(config))
    out = [Variant("base", "method", {}, base)]
    for dotted, values in spec["axes"].items():
        _check_changes({dotted: None}, base, f"analysis.axes.{dotted}")
        for value in values:
            if value == dotted_get(base, dotted):
                continue
            name = f"{dotted}={value_label(value)}"
            out.append(
                _variant(name, "method", {dotted: value}, base, validate, f"analysis.axes.{name}")
            )
    for i, item in enumerate(spec["variants"]):
        where = f"analysis.variants[{i}] ({item['name']})"
        out.append(_variant(item["name"], "method", flatten(item["set"]), base, validate, where))
    if spec["baselines"] and scope_of(base) == "scene":
        raise ValueError(
            f"analysis.baselines {list(spec['baselines'])} are foreground masks, which "
            "labels.scope scene has none of: set analysis.baselines to [] (scene mode's "
            "baseline, k-means of the patches into the classes with no levels and no CRF, "
            "is the variant {scene: {segment_weight: 0}, refine: {crf: false}}; "
            "workflow/configs/demo_scene.yaml)"
        )
    for name in spec["baselines"]:
        out.append(Variant(f"baseline:{name}", "baseline", {}, base))
    seen: dict[str, str] = {}
    unique = []
    for v in out:
        v.nodes = variant_nodes(v)
        if v.keys["evaluate"] in seen:
            continue
        seen[v.keys["evaluate"]] = v.name
        unique.append(v)
    names = [v.name for v in unique]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"analysis: variant names must be unique, repeated: {dup}")
    return unique


def node_settings(stage: str, variant: Variant) -> dict:
    """A stage's settings in a variant, the seed left out (it is part of the path); a
    baseline's also name the baseline."""
    settings = pipeline.stage_settings(stage, variant.config, seed=0)
    settings.pop("seed", None)
    in_baseline = pipeline.get_stage(stage).in_baseline
    if in_baseline is not None and variant.kind == "baseline":
        settings = in_baseline(variant.name.split(":", 1)[1], settings)
    return settings


def variant_nodes(variant: Variant) -> dict[str, Node]:
    """Stage -> :class:`Node` of every stage the variant runs, in the order they run
    (see the module docstring): one walk of its graph (the pipeline's declaration,
    :func:`lcseg_steps.pipeline.graph`) gives each stage's settings, deps, key and whether
    it depends on the seed."""
    out: dict[str, Node] = {}
    for stage, reads in pipeline.graph(variant.config, variant.kind).items():
        settings = node_settings(stage, variant)
        deps = {}
        for ref in reads.values():
            dep = pipeline.split_ref(ref)[0]
            deps[dep] = out[dep].key
        key = settings_digest({"stage": stage, "settings": settings, "deps": deps})
        seeded = pipeline.get_stage(stage).seeded or any(out[dep].seeded for dep in deps)
        out[stage] = Node(stage, key[:KEY_LENGTH], settings, deps, seeded, dict(reads))
    return out


def nodes(variant_list: Sequence[Variant]) -> dict[str, dict[str, Node]]:
    """Stage -> key -> :class:`Node` over all variants (each shared stage once)."""
    out: dict[str, dict[str, Node]] = {}
    for v in variant_list:
        for stage, node in v.nodes.items():
            out.setdefault(stage, {})[node.key] = node
    return out


def varying_keys(variant_list: Sequence[Variant]) -> list[str]:
    """The dotted keys that some variant changes, in the order they first appear."""
    out: list[str] = []
    for v in variant_list:
        out += [k for k in v.changes if k not in out]
    return out


def row_keys(variant: Variant, varying: Sequence[str]) -> dict[str, str]:
    """A variant's cells for the varying keys; a baseline shows only the backbone and
    extraction keys (the clustering ones do not apply to it)."""
    keys = varying
    if variant.kind == "baseline":
        keys = [k for k in varying if k.split(".")[0] in ("backbone", "extract")]
    return {k: value_label(dotted_get(variant.config, k)) for k in keys}


def extractions(variant_list: Sequence[Variant]) -> list[dict]:
    """One entry per distinct extraction of the method variants: its key, the backbone
    name, the layer and the stored features (what separability measures)."""
    out: dict[str, dict] = {}
    for v in variant_list:
        if v.kind != "method" or v.keys["extract"] in out:
            continue
        c = v.config
        out[v.keys["extract"]] = {
            "key": v.keys["extract"],
            "backbone": c["backbone"]["name"],
            "layer": c["extract"]["layer"],
            "features": list(c["extract"]["store_features"]),
            "config": c,
        }
    return list(out.values())
