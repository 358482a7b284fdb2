"""Stage ``index``: list the dataset, decode and check every image, assign shards ->
``images.tsv`` and ``skipped.tsv``.

The dataset readers live in ``lcseg_steps.data``; this module is the rule's entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lcseg_steps.data.index import index_dataset, write_index, write_skipped

if TYPE_CHECKING:
    from lcseg_steps.stage import Job


def run(job: Job) -> Path:
    """The rule ``index`` (settings: the ``dataset`` config block, ``shard_size``, and the
    backbone's ``patch_size`` and ``extract.long_side`` that decide the resize policy)."""
    s = job.settings
    patch_size = s.get("patch_size")
    if patch_size is None and s.get("backbone"):  # a timm name without "patch<N>"
        from lcseg_steps.backbone import load_backbone

        bb = s["backbone"]
        patch_size = load_backbone(bb["name"], "random", overrides=bb["overrides"])[1].patch_size
    records, skipped = index_dataset(
        s["dataset"],
        s["shard_size"],
        log=job.log,
        patch_size=patch_size,
        long_side=s.get("long_side"),
        threads=job.threads,
    )
    write_skipped(skipped, job.output.skipped)
    write_index(records, job.output.index)
    job.log(
        f"index: {len(records)} images in {len({r.shard for r in records})} shards, "
        f"{len(skipped)} skipped"
    )
    return Path(job.output.index)
