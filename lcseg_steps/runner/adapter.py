"""The one adapter between a Snakemake rule and its stage.

Every rule runs ``workflow/scripts/stage.py``, which calls :func:`run_rule`. Rule ``X``
runs ``lcseg_steps.stages.X.run(job)`` (or the stage its ``params.stage`` names): the stage
module reads the rule's inputs and writes its outputs. :func:`run_rule` does what every
stage needs first: everything printed goes to the rule's log, BLAS (and torch, when
imported) use the rule's ``threads``, and the settings (``params.settings``, named as in
the config schema) come with the attrs every store records: the settings and the digest
of exactly those settings, and the rule's name (what ``snakemake --forcerun`` takes to
rewrite a store found damaged).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lcseg_steps.runner.runlog import limit_threads, stage_log
from lcseg_steps.runner.settings import settings_attrs

Log = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One Snakemake job as a stage sees it.

    ``input``/``output``/``params``/``wildcards``/``resources`` are Snakemake's named
    lists (``job.input.features``, ``job.output[0]``); ``settings`` is ``params.settings``
    (``{}`` when the rule has none) and ``attrs`` the store attrs that describe them.
    """

    input: Any
    output: Any
    params: Any
    wildcards: Any
    resources: Any
    threads: int
    config: Mapping
    settings: dict
    attrs: dict
    log: Log


def stage_name(smk) -> str:
    """The stage a rule runs (``lcseg_steps.stages.<name>``): ``params.stage`` when the
    rule names one (the analysis reuses the pipeline's rules under other names), else the
    rule's name."""
    return smk.params.get("stage") or smk.rule


def run_rule(smk) -> Any:
    """Run the stage module named by the rule (``snakemake`` object of a ``script:``)."""
    settings = smk.params.get("settings", {})
    with stage_log(smk.log[0]) as log:
        # inside the log: an import error (a missing package in a conda env) lands there
        stage = importlib.import_module(f"lcseg_steps.stages.{stage_name(smk)}")
        limit_threads(smk.threads)
        job = Job(
            input=smk.input,
            output=smk.output,
            params=smk.params,
            wildcards=smk.wildcards,
            resources=smk.resources,
            threads=smk.threads,
            # an apply rule runs under the applied run's config (params.config)
            config=smk.params.get("config") or smk.config,
            settings=settings,
            # "rule": the rule to --forcerun when a store it wrote is found damaged
            attrs={**settings_attrs(settings), "rule": smk.rule},
            log=log,
        )
        return stage.run(job)
