"""Snakemake adapter of every rule: rule ``X`` runs ``lcseg_steps.X.run`` (lcseg_steps.stage)."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.stage import run_rule

run_rule(snakemake)  # noqa: F821
