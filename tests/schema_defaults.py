"""The config schema's defaults (their one home) for tests that call stage and library
functions directly, and the default config (``config.yaml`` completed by the schema)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = ROOT / "config.yaml"


@functools.cache
def _schema() -> dict:
    with open(SCHEMA) as fh:
        return yaml.safe_load(fh)


def schema_defaults(section: str) -> dict:
    """``{key: default}`` of one config block (``refine``, ``clustering``, ...)."""
    props = _schema()["properties"][section]["properties"]
    return {key: copy.deepcopy(sub["default"]) for key, sub in props.items()}


def default_config() -> dict:
    """``config.yaml`` with every key the schema defaults filled in."""
    from snakemake.utils import validate

    with open(CONFIG) as fh:
        cfg = yaml.safe_load(fh)
    validate(cfg, str(SCHEMA))
    return cfg


def crf_params(**changes):
    """The schema's default ``CRFParams`` (``refine`` block), with ``changes``."""
    from lcseg_steps.perimage.crf import CRFParams

    refine = {**schema_defaults("refine"), **changes}
    return CRFParams(**{f.name: refine[f.name] for f in dataclasses.fields(CRFParams)})


def crf_settings(**changes) -> dict:
    """The CRF keys of the schema's ``refine`` block (not ``crf``, ``threshold``)."""
    return dataclasses.asdict(crf_params(**changes))
