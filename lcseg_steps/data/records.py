"""The two types every data module shares: ``ImageRecord`` (one image of the index) and
``Dataset`` (what one dataset module provides to the registry).

This module imports nothing of ``lcseg_steps``, so the dataset modules, the index and the
registry can all import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset.

    ``gt`` is ``""`` for an unlabelled image, else a reference that the dataset's
    ``read_gt`` understands: a label PNG path (demo, voc12), or
    ``"<file>#<key>"`` (coco: ``"<instances json path>#<coco image id>"``).
    ``height``/``width`` are 0 until known; ``shard`` is ``""`` until ``assign_shards``.
    ``orientation`` is the EXIF orientation (1..8) every stage turns the stored pixels by
    (``images.read_record``): the file's own tag for a dataset that shows images as photo
    viewers do (``Dataset.orient``: folder, and so ``snakemake apply``), 1 (the stored
    pixels) for the others (VOC, COCO, demo: their annotations are in stored pixels).
    ``height``/``width`` are those of the turned image.
    """

    image_id: str
    path: str
    gt: str
    height: int = 0
    width: int = 0
    shard: str = ""
    orientation: int = 1


def gt_file(gt: str) -> str:
    """The file a ground-truth reference points at (the part before ``#``, if any)."""
    return gt.rsplit("#", 1)[0] if "#" in gt else gt


@dataclass(frozen=True)
class Dataset:
    """What a dataset module provides (as its module-level ``DATASET``).

    Every function taking ``dict`` gets the validated ``dataset`` config section with a
    non-empty ``root``.

    - ``inputs(cfg)``: the files or folders the ``index`` rule depends on (id lists,
      annotation files), so that changing them rebuilds the index.
    - ``list_images(cfg)``: the image records in a deterministic order, read while
      Snakemake builds the DAG: listing files only, never pixels.
    - ``class_names(cfg)``: ground-truth class names, index = class id (0 background
      unless ``background`` is False).
    - ``owns_gt(gt)``: whether a non-empty ``ImageRecord.gt`` reference is one this
      dataset's ``read_gt`` reads (the index TSV does not name the dataset).
    - ``read_gt(record)``: the ground truth of a record with a non-empty ``gt`` as
      ``(H, W)`` uint8 class ids, 255 = void; a missing file raises
      ``FileNotFoundError`` naming it.
    - ``generated``: the workflow makes the data itself (rule ``demo_data``) under
      ``results/<run>/<name>`` when ``dataset.root`` is empty, with ``generate(root,
      log=..., **dataset.demo)``.
    - ``orient``: images are turned by their EXIF orientation, as photo viewers show them
      (folder); False keeps the stored pixels, the convention of VOC's and COCO's
      annotations. The index records each image's turn (``ImageRecord.orientation``).
    - ``on_bad_image``: what the index does with images ``extract`` would refuse when
      ``dataset.on_bad_image`` is null: ``error`` (a benchmark score must cover the whole
      split) or ``skip`` (leave them out, listed in ``skipped.tsv``).
    - ``left_out(cfg)``: ``(path, reason)`` of the files under the dataset's folder that
      are not images of it (a user's folder; None for datasets with an id list), listed
      in ``skipped.tsv`` so that nothing is left out silently.
    - ``background``: class 0 is a background class (VOC, COCO, the demo, folder). False
      for scene datasets where every pixel has a class (COCO-Stuff-27, Cityscapes-27):
      protocols whose rule needs a background class are not computed there.
    """

    name: str
    inputs: Callable[[dict], Sequence[str]]
    list_images: Callable[[dict], list[ImageRecord]]
    class_names: Callable[[dict], list[str]]
    owns_gt: Callable[[str], bool]
    read_gt: Callable[[ImageRecord], np.ndarray]
    generated: bool = False
    on_bad_image: str = "error"
    left_out: Callable[[dict], list[tuple[str, str]]] | None = None
    orient: bool = False
    background: bool = True
    generate: Callable[..., list[str]] | None = None
