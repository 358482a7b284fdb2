"""The pipeline, declared once.

Each :class:`Stage` says everything the workflow needs to know about one stage: its name
(the rule's, the module's under ``lcseg_steps.stages``, and the config block's where it has one),
the config keys it reads (dotted, as the schema names them), the stages whose outputs it
reads, its output templates, its conda env, threads and resources. The Snakefile generates
the default run's rules (``workflow/rules/pipeline.smk``) and the analysis grid's rules
(``workflow/rules/analysis.smk``) from :data:`STAGES`, and the grid
(``lcseg_steps.analysis.grid``) walks the same declaration, so a stage added here runs in
both with no other edit.

Output templates are relative to ``results/<run>/`` and hold ``{shard}`` for a per-shard
stage; a trailing ``/`` marks a directory. A stage whose output depends on a seed (it
draws at random itself, or reads such a stage) lives under ``seed{seed}/``. In the
analysis each output moves to ``analysis/<folder>/{key}/`` (:func:`analysis_template`).

Imported by the Snakefile while the DAG is built: nothing heavy (no numpy, no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lcseg_steps import stage_reads as derive
from lcseg_steps.runner import resources as res

KINDS = frozenset({"method", "baseline"})
# ``snakemake apply``: a fitted model.zarr segments new images; the stages it runs carry
# this kind, and what they read from the fitting stages (FITTED) comes from the model
APPLY = "apply"
APPLIED = KINDS | {APPLY}
FITTED = ("fit_dataset", "fit_category", "assign", "scene_dataset")


def _always(config: Mapping) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    ``reads``: the dotted config keys it reads, each reaching the stage function under its
    last part (``clustering.k_image`` -> ``k_image``), or a function of the config giving
    the settings dict (for settings derived from several keys).
    ``inputs``: ``"stage"`` (that stage's first output) or ``"stage.output"``; each reaches
    the stage under the output's name, as a list over shards when this stage runs once for
    the whole run and the other per shard.
    ``seeded``: draws at random, so its settings carry the job's seed.
    ``kinds``: the analysis variants that run it (``method``, ``baseline``);
    ``stands_for``: the stage whose place it takes for its readers in those variants.
    ``when``: whether a variant's config runs it (a level switched off does not).
    ``env``: conda env file (relative to ``workflow/rules/``) or a function of the config.
    ``resources``: a function of :class:`lcseg_steps.runner.resources.Sizing` giving Snakemake
    resources; a ``mem_mb`` that is a float grows with the attempt (``--retries``).
    ``folder``: the analysis folder of outputs that sit at the top of the run folder.
    ``report``: output name -> (caption file, category) for ``snakemake --report``.
    ``sources``: a function of the config giving inputs from outside the pipeline
    (the dataset's files).
    ``target``: its outputs are final targets of a run and of every analysis variant
    (``True``), or of the default run only (``"run"``).
    ``in_baseline``: its settings in an analysis baseline variant, a function of the
    baseline's name and the settings (what only a baseline is: its name, or that no
    region is no error).
    ``applied``: params it takes in ``snakemake apply`` only (``"config"``: the applied
    run's config as ``job.config``).
    """

    name: str
    outputs: Mapping[str, str]
    reads: tuple[str, ...] | Callable[[Mapping], dict] = ()
    inputs: tuple[str, ...] = ()
    per_shard: bool = True
    seeded: bool = False
    kinds: frozenset = KINDS
    stands_for: str | None = None
    when: Callable[[Mapping], bool] = _always
    env: str | Callable[[Mapping], str] = "../../envs/base.yaml"
    threads: int = 1
    resources: Callable[[res.Sizing], dict] = field(default=lambda s: {})
    folder: str | None = None
    report: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    sources: Callable[[Mapping], dict] | None = None
    target: bool | str = False
    in_baseline: Callable[[str, dict], dict] | None = None
    applied: Mapping[str, Any] = field(default_factory=dict)

    def is_target(self, analysis: bool) -> bool:
        """Whether its outputs are final targets of the default run (``analysis`` False)
        or of every analysis variant (True)."""
        return self.target is True or (self.target == "run" and not analysis)

    @property
    def first_output(self) -> str:
        return next(iter(self.outputs))


# the per-image stages a model.zarr runs on a new image (Model.segment): it records each
# one's settings exactly as its rule gets them (stage_settings, schema names), and passes
# them to the same library functions (runner.settings.call_with_settings)
PER_IMAGE = ("image_level", "merge", "refine", "objects")

_MODEL_READS = ("run", "backbone", "extract", "labels.n_classes")


def _model_settings(config: Mapping) -> dict:
    """What a new image is segmented with: the backbone and extraction, and
    ``per_image``, the settings of each :data:`PER_IMAGE` stage (the seeded image level's
    without its seed: the model's own seed, which the model stage adds)."""
    out = {dotted.rsplit(".", 1)[-1]: derive.dotted_get(config, dotted) for dotted in _MODEL_READS}
    per_image = {s: stage_settings(s, config, seed=0) for s in PER_IMAGE}
    for settings in per_image.values():
        settings.pop("seed", None)
    out["per_image"] = per_image
    return out


STAGES: tuple[Stage, ...] = (
    Stage(
        "index",
        outputs={"index": "images.tsv", "skipped": "skipped.tsv"},
        reads=derive.index_settings,
        sources=derive.dataset_sources,
        per_shard=False,
        kinds=APPLIED,
        folder="index",
        threads=2,
        resources=lambda s: {"mem_mb": 4000, "runtime": 10},
    ),
    Stage(
        "extract",
        outputs={"features": "features/{shard}.zarr/"},
        reads=("backbone", "extract"),
        inputs=("index",),
        kinds=APPLIED,
        env="../../envs/torch.yaml",
        threads=2,
        resources=res.extract_resources,
    ),
    Stage(
        "image_level",
        outputs={"image_level": "image_level/{shard}.zarr/"},
        reads=(
            "clustering.feature",
            "clustering.image_clusterer",
            "clustering.k_image",
            "clustering.fg_rule",
            *derive.KMEANS_KEYS,
        ),
        inputs=("extract",),
        seeded=True,
        kinds=frozenset({"method", APPLY}),
        when=derive.objects_scope,
        # each image's k-means start as Model.segment draws it
        applied={"alone": True},
        env=derive.cluster_env,
        # one thread: on CPU each image's k-means is a few small calls a pass, and a second
        # worker thread mostly waits for the GIL (slower than one); shards run side by side
        threads=1,
        resources=lambda s: s.shard(1024, 2 * s.feature_kb_per_image(), 2, 0.2),
    ),
    Stage(
        "fit_dataset",
        outputs={"dataset_level": "dataset_level.zarr/"},
        reads=(
            "clustering.feature",
            "clustering.k_dataset",
            "clustering.fg_vote",
            "clustering.init_sample",
            *derive.KMEANS_KEYS,
        ),
        inputs=("extract", "image_level"),
        per_shard=False,
        seeded=True,
        kinds=frozenset({"method"}),
        when=derive.has_level("dataset"),
        env=derive.cluster_env,
        threads=2,
        resources=lambda s: s.fit("dataset"),
    ),
    Stage(
        "fit_category",
        outputs={"category_level": "category_level.zarr/"},
        reads=derive.reads_with_auto(
            (
                "clustering.feature",
                "clustering.n_categories",
                "clustering.category_clusterer",
                "clustering.k_category",
                "clustering.fg_vote",
                "clustering.category_fit_sample",
                *derive.KMEANS_KEYS,
            ),
            "clustering.n_categories",
            ("clustering.auto_range",),
        ),
        inputs=("extract", "image_level"),
        per_shard=False,
        seeded=True,
        kinds=frozenset({"method"}),
        when=derive.has_level("category"),
        env=derive.cluster_env,
        threads=2,
        resources=lambda s: s.fit("category"),
    ),
    Stage(
        "merge",
        outputs={"patch_masks": "patch_masks/{shard}.zarr/"},
        reads=(
            "clustering.feature",
            "clustering.levels",
            "clustering.consistency",
            "clustering.min_levels",
        ),
        inputs=("extract", "image_level", "fit_dataset", "fit_category"),
        kinds=frozenset({"method", APPLY}),
        when=derive.objects_scope,
        env="../../envs/cluster.yaml",
        resources=lambda s: s.shard(512, 64, 2, 0.01),
    ),
    # an analysis baseline's patch masks, in merge's format, in place of the three levels
    Stage(
        "baselines",
        outputs={"patch_masks": "patch_masks/{shard}.zarr/"},
        reads=("analysis.centre_fraction", "analysis.attention_mass"),
        inputs=("extract",),
        kinds=frozenset({"baseline"}),
        stands_for="merge",
        in_baseline=lambda name, settings: {"baseline": name, **settings},
        resources=lambda s: s.shard(512, 64, 2, 0.01),
    ),
    Stage(
        "refine",
        outputs={"pixel_masks": "pixel_masks/{shard}.zarr/"},
        reads=tuple(
            f"refine.{key}"
            for key in (
                "crf",
                "threshold",
                "iterations",
                "gauss_sxy",
                "gauss_compat",
                "bilateral_sxy",
                "bilateral_srgb",
                "bilateral_compat",
                "clip",
                "max_side",
            )
        ),
        inputs=("index", "merge"),
        kinds=APPLIED,
        when=derive.objects_scope,
        env="../../envs/crf.yaml",
        threads=2,
        resources=lambda s: s.shard(1024, 256, 2, 1.0),
    ),
    Stage(
        "objects",
        outputs={"objects": "objects/{shard}.zarr/"},
        reads=derive.objects_settings,
        inputs=("index", "refine", "extract"),
        kinds=APPLIED,
        when=derive.objects_scope,
        env="../../envs/torch.yaml",
        threads=2,
        resources=res.objects_resources,
    ),
    Stage(
        "assign",
        outputs={"classes": "classes.zarr/"},
        reads=derive.reads_with_auto(
            (
                "labels.n_classes",
                "labels.class_clusterer",
                "labels.n_neighbors",
                "labels.fit_sample",
            ),
            "labels.n_classes",
            ("labels.auto_range",),
        ),
        inputs=("objects",),
        per_shard=False,
        seeded=True,
        when=derive.objects_scope,
        env="../../envs/cluster.yaml",
        threads=2,
        resources=res.assign_resources,
        # all background leaves no object region: an empty class set, not an error
        in_baseline=lambda name, settings: {**settings, "empty_ok": True},
    ),
    Stage(
        "segment",
        outputs={"semantic": "semantic/{shard}.zarr/", "pred": "pred/{shard}/"},
        inputs=("objects", "assign"),
        kinds=APPLIED,
        when=derive.objects_scope,
        resources=lambda s: s.shard(512, 256, 2, 0.1),
    ),
    # scene mode (labels.scope: scene, docs/method.md): every pixel a class, no
    # background; the dataset level into labels.n_classes classes, the image level into
    # segments, their consistent class scores, a multi-label dense CRF
    Stage(
        "scene_dataset",
        outputs={"scene_dataset": "scene_dataset.zarr/"},
        reads=(
            "clustering.feature",
            "labels.n_classes",
            "clustering.init_sample",
            *derive.KMEANS_KEYS,
        ),
        inputs=("extract",),
        per_shard=False,
        seeded=True,
        kinds=frozenset({"method"}),
        when=derive.scene_scope,
        env=derive.cluster_env,
        threads=2,
        resources=lambda s: s.fit("dataset"),
    ),
    Stage(
        "scene_levels",
        outputs={"scene_levels": "scene_levels/{shard}.zarr/"},
        reads=derive.scene_levels_settings,
        inputs=("extract", "scene_dataset"),
        seeded=True,
        kinds=frozenset({"method", APPLY}),
        when=derive.scene_scope,
        # each image's k-means start as SceneModel.segment draws it
        applied={"alone": True},
        env=derive.cluster_env,
        resources=lambda s: s.shard(1024, 2 * s.feature_kb_per_image(), 2, 0.2),
    ),
    # the semantic maps and PNGs where segment writes them, for evaluate and the report
    Stage(
        "scene_refine",
        outputs={"semantic": "semantic/{shard}.zarr/", "pred": "pred/{shard}/"},
        reads=tuple(
            f"refine.{key}"
            for key in (
                "crf",
                "iterations",
                "gauss_sxy",
                "gauss_compat",
                "bilateral_sxy",
                "bilateral_srgb",
                "bilateral_compat",
                "clip",
                "max_side",
            )
        ),
        inputs=("index", "scene_levels"),
        kinds=frozenset({"method", APPLY}),
        stands_for="segment",
        when=derive.scene_scope,
        env="../../envs/crf.yaml",
        threads=2,
        resources=lambda s: s.shard(1024, 256, 2, 1.0),
    ),
    # scene mode's fitted state (the class centroids and per-image settings) in the
    # model.zarr format (lcseg_steps.apply.scene_model)
    Stage(
        "scene_model",
        outputs={"model": "model.zarr/"},
        reads=derive.scene_model_settings,
        inputs=("extract", "scene_dataset"),
        per_shard=False,
        seeded=True,
        kinds=frozenset({"method"}),
        when=derive.scene_scope,
        resources=lambda s: s.whole(1024, 2, 5, 0.01),
        target="run",
    ),
    # the fitted state of a seed as one artifact, to segment new images with
    # (lcseg_steps.apply.model_zarr)
    Stage(
        "model",
        outputs={"model": "model.zarr/"},
        reads=_model_settings,
        inputs=("extract", "fit_dataset", "fit_category", "assign"),
        per_shard=False,
        seeded=True,
        kinds=frozenset({"method"}),
        # no model of scene mode yet (labels.scope: scene)
        when=derive.objects_scope,
        resources=lambda s: s.whole(1024, 2, 5, 0.01),
        # not in the analysis: its variants compare scores and need no model each
        target="run",
    ),
    Stage(
        "evaluate",
        outputs={
            "metrics": "metrics.json",
            "iou": "per_class_iou.png",
            "confusion": "confusion.png",
        },
        # with labels.n_classes auto the count is classes.zarr's (assign's choice)
        reads=("evaluate.matching", "labels.n_classes"),
        inputs=("index", "index.skipped", "segment", "assign"),
        kinds=APPLIED,
        # the applied run's name, dataset and classes
        applied={"config": True},
        per_shard=False,
        folder="scores",
        resources=lambda s: s.whole(1024, 8, 5, 0.05),
        report={
            "metrics": ("../report/metrics.rst", "Scores"),
            "iou": ("../report/per_class_iou.rst", "Scores"),
            "confusion": ("../report/confusion.rst", "Scores"),
        },
    ),
)


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r} (declared: {', '.join(s.name for s in STAGES)})")


def split_ref(ref: str) -> tuple[str, str]:
    """``"stage"`` or ``"stage.output"`` -> (stage, output name)."""
    stage, _, output = ref.partition(".")
    return stage, output or get_stage(stage).first_output


# --- settings -------------------------------------------------------------------------


def stage_settings(stage: str, config: Mapping, seed: int | None = None) -> dict[str, Any]:
    """``stage``'s settings under ``config``: the keys it reads, each under its schema
    name, plus ``seed`` for a seeded stage. A rule passes them as ``params.settings``, so
    a change of one key reruns the stages that read it and nothing else, and every store
    records the settings it was made with (``lcseg_steps.runner.adapter``)."""
    s = get_stage(stage)
    if callable(s.reads):
        out = s.reads(config)
    else:
        out = {dotted.rsplit(".", 1)[-1]: derive.dotted_get(config, dotted) for dotted in s.reads}
    if s.seeded:
        if seed is None:
            raise ValueError(f"stage {stage!r} is seeded: give its seed")
        out["seed"] = int(seed)
    return out


# --- the graph of a run or analysis variant ---------------------------------------------


def graph(
    config: Mapping, kind: str = "method", every_level: bool = False
) -> dict[str, dict[str, str]]:
    """The stages a run of ``kind`` under ``config`` runs, in order, each with what it
    reads: input name -> (producing stage). A stage that ``stands_for`` another takes its
    place for its readers; an input from a stage the config switches off is left out
    (with ``every_level``, none is switched off: the stages any config of ``kind`` runs).
    In an ``apply`` run the fitting stages do not run: a stage that reads one of
    :data:`FITTED` reads the fitted ``model`` (``model.model``, input ``model``) instead.

    Returns ``{stage: {input name: "stage.output"}}``.
    """
    runs: dict[str, dict[str, str]] = {}
    standing: dict[str, str] = {}
    for s in STAGES:
        if kind not in s.kinds or not (every_level or s.when(config)):
            continue
        if s.stands_for:
            standing[s.stands_for] = s.name
        reads = {}
        for ref in s.inputs:
            stage, output = split_ref(ref)
            stage = standing.get(stage, stage)
            if stage in runs:
                reads[output] = f"{stage}.{output}"
            elif kind == APPLY and stage in FITTED and get_stage(stage).when(config):
                reads["model"] = "model.model"
        runs[s.name] = reads
    return runs


def provider(config: Mapping, stage: str, kind: str = "method") -> str:
    """The stage that writes ``stage``'s outputs in a run of ``kind`` under ``config``:
    ``stage`` itself, or the stage that ``stands_for`` it there (scene mode's
    ``scene_refine`` for ``segment``)."""
    for s in STAGES:
        if s.stands_for == stage and kind in s.kinds and s.when(config):
            return s.name
    return stage


def seed_dependent(
    config: Mapping, kind: str = "method", every_level: bool = False
) -> dict[str, bool]:
    """Stage -> whether its output depends on the seed (it is seeded, or reads a stage
    whose output does)."""
    out: dict[str, bool] = {}
    for stage, reads in graph(config, kind, every_level).items():
        deps = {split_ref(ref)[0] for ref in reads.values()}
        # a fitted model (apply) is one seed's
        out[stage] = get_stage(stage).seeded or any(out.get(d, True) for d in deps)
    return out


# --- paths ------------------------------------------------------------------------------


def is_directory(template: str) -> bool:
    return template.endswith("/")


def run_template(stage: str, output: str, seeded: bool) -> str:
    """An output's path under ``results/<run>/`` in a run (``seed{seed}/`` first when it
    depends on the seed)."""
    t = get_stage(stage).outputs[output].rstrip("/")
    return f"seed{{seed}}/{t}" if seeded else t


def analysis_template(stage: str, output: str, seeded: bool) -> str:
    """An output's path under ``results/<run>/analysis/``: ``<folder>/{key}/`` and then
    ``seed{seed}/`` when it depends on the seed, then the rest of its run path.

    ``features/{shard}.zarr`` -> ``features/{key}/{shard}.zarr``;
    ``dataset_level.zarr`` -> ``dataset_level/{key}/seed{seed}.zarr``;
    ``metrics.json`` (folder ``scores``) -> ``scores/{key}/seed{seed}/metrics.json``.
    """
    s = get_stage(stage)
    t = s.outputs[output].rstrip("/")
    seed_dir = "seed{seed}/" if seeded else ""
    if "/" in t:
        folder, rest = t.split("/", 1)
        return f"{folder}/{{key}}/{seed_dir}{rest}"
    if s.folder:
        return f"{s.folder}/{{key}}/{seed_dir}{t}"
    stem, dot, ext = t.partition(".")
    return f"{stem}/{{key}}" + ("/seed{seed}" if seeded else "") + dot + ext


def log_template(stage: str, per_shard: bool, seeded: bool, keyed: bool) -> str:
    """A job's log path under ``results/<run>/logs/`` (``analysis/`` first when keyed);
    the benchmark's is the same under ``benchmarks/`` with ``.tsv``."""
    if keyed:
        base = f"{stage}/{{key}}" + ("/seed{seed}" if seeded else "")
    else:
        base = ("seed{seed}/" if seeded else "") + stage
    return base + ("/{shard}" if per_shard else "")


def benchmark_template(stage: str, per_shard: bool, seeded: bool, keyed: bool) -> str:
    if keyed:
        return f"benchmarks/{log_template(stage, per_shard, seeded, keyed)}"
    seed_dir = "seed{seed}/" if seeded else ""
    return f"{seed_dir}benchmarks/{stage}" + ("/{shard}" if per_shard else "")
