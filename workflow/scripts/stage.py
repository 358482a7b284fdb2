"""Snakemake adapter of every rule: rule ``X`` runs ``lcseg_steps.stages.X.run``
(lcseg_steps.runner.adapter)."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.runner.adapter import run_rule

run_rule(snakemake)  # noqa: F821
