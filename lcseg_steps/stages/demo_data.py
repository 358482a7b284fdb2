"""Stage ``demo_data``: generate a synthetic dataset (``lcseg_steps.data.demo``, or
``lcseg_steps.data.demo_scene`` for ``dataset.name: demo_scene``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lcseg_steps.data.registry import get_dataset

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run(job: Job) -> Path:
    """The rule ``demo_data`` (params.demo: the ``dataset.demo`` config block): the
    generator of the configured dataset (``Dataset.generate``)."""
    generate = get_dataset(job.config["dataset"]["name"]).generate
    ids = generate(job.output[0], log=job.log, **job.params.demo)
    job.log(f"demo_data: wrote {len(ids)} images to {job.output[0]}")
    return Path(job.output[0])
