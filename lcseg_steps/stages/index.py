"""Stage ``index``: list the dataset, decode and check every image, assign shards ->
``images.tsv`` and ``skipped.tsv``.

The dataset readers live in ``lcseg_steps.data``; this module is the rule's entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lcseg_steps.data.image_table import index_dataset, write_index, write_skipped

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_index(
    index_out: str | Path,
    skipped_out: str | Path,
    *,
    dataset: dict,
    shard_size: int,
    long_side: int | None,
    patch_size: int | None,
    backbone: dict | None = None,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> Path:
    """The ``dataset`` block, ``shard_size``, ``extract.long_side`` and the backbone's
    ``patch_size`` (``backbone``, the block's name and overrides, only when its name does
    not tell the patch size) -> ``images.tsv`` and ``skipped.tsv``."""
    if patch_size is None and backbone:  # a timm name without "patch<N>"
        from lcseg_steps.perimage.backbone import load_backbone

        patch_size = load_backbone(backbone["name"], "random", overrides=backbone["overrides"])[
            1
        ].patch_size
    records, skipped = index_dataset(
        dataset,
        shard_size,
        log=log,
        patch_size=patch_size,
        long_side=long_side,
        threads=threads,
    )
    write_skipped(skipped, skipped_out)
    write_index(records, index_out)
    log(
        f"index: {len(records)} images in {len({r.shard for r in records})} shards, "
        f"{len(skipped)} skipped"
    )
    return Path(index_out)


def run(job: Job) -> Path:
    """The rule ``index`` (settings: the ``dataset`` config block, ``shard_size``, and the
    backbone's ``patch_size`` and ``extract.long_side`` that decide the resize policy)."""
    return run_index(
        job.output.index,
        job.output.skipped,
        **job.settings,
        threads=job.threads,
        log=job.log,
    )
