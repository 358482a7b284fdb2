"""Stage ``demo_data``: generate the synthetic demo dataset (``lcseg_steps.data.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lcseg_steps.data.demo import generate_demo

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run(job: Job) -> Path:
    """The rule ``demo_data`` (params.demo: the ``dataset.demo`` config block)."""
    ids = generate_demo(job.output[0], log=job.log, **job.params.demo)
    job.log(f"demo_data: wrote {len(ids)} images to {job.output[0]}")
    return Path(job.output[0])
