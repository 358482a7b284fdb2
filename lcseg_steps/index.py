"""Stage ``index``: list the dataset, read image sizes, assign shards -> ``images.tsv``.

The dataset readers live in ``lcseg_steps.data``; this module is the rule's entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lcseg_steps.data.index import build_index, write_index

if TYPE_CHECKING:
    from lcseg_steps.stage import Job


def run(job: Job) -> Path:
    """The rule ``index`` (settings: the ``dataset`` config block and ``shard_size``)."""
    records = build_index(job.settings["dataset"], job.settings["shard_size"], log=job.log)
    write_index(records, job.output[0])
    job.log(f"index: {len(records)} images in {len({r.shard for r in records})} shards")
    return Path(job.output[0])
