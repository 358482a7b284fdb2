"""Puts the repository root on ``sys.path`` so a ``script:`` imports ``lcseg_steps`` from
this checkout, also inside ``--use-conda`` environments where the package is not
installed. Snakemake already adds this folder to ``sys.path`` for every script."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
