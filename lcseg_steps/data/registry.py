"""The dataset registry: dataset name -> the module that implements it.

Each module exposes ``DATASET``, a :class:`~lcseg_steps.data.records.Dataset` giving the
``index`` rule's inputs, the image listing, the class names and ground-truth access.
Adding a dataset means adding its module, one line here and its name in the
``dataset.name`` enum of ``workflow/schemas/config.schema.yaml``.

Modules are imported on first use, so building the DAG of a COCO run does not import
the demo generator (OpenCV) and vice versa.
"""

from __future__ import annotations

import importlib

from lcseg_steps.data.records import Dataset

# name -> module defining DATASET; the order is the one error messages list
DATASETS: dict[str, str] = {
    "demo": "lcseg_steps.data.demo",
    "voc12": "lcseg_steps.data.voc",
    "coco": "lcseg_steps.data.coco",
    "folder": "lcseg_steps.data.folder",
    "cocostuff27": "lcseg_steps.data.cocostuff27",
    "cityscapes27": "lcseg_steps.data.cityscapes27",
    "demo_scene": "lcseg_steps.data.demo_scene",
}
# asked first by dataset_for_gt: their references ("<png>#<name>") would otherwise be
# claimed by an older reader (coco takes any "#", demo and voc12 any other path)
GT_FIRST = ("cocostuff27", "cityscapes27")


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``; an unknown name raises ``ValueError``."""
    if name not in DATASETS:
        raise ValueError(
            f"dataset.name: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}"
        )
    ds = importlib.import_module(DATASETS[name]).DATASET
    if ds.name != name:
        raise RuntimeError(f"{DATASETS[name]}.DATASET is named {ds.name!r}, registered as {name!r}")
    return ds


def has_background(name: str) -> bool:
    """Whether class 0 of the dataset ``name`` is a background class (``Dataset.background``;
    True for a name not registered)."""
    return name not in DATASETS or get_dataset(name).background


def dataset_for_gt(gt: str) -> Dataset:
    """The first registered dataset whose ``owns_gt`` accepts the reference ``gt``
    (those of ``GT_FIRST`` asked first)."""
    for name in [*GT_FIRST, *(n for n in DATASETS if n not in GT_FIRST)]:
        ds = get_dataset(name)
        if ds.owns_gt(gt):
            return ds
    raise ValueError(f"{gt}: no registered dataset reads this ground-truth reference")
