"""MS COCO: fast image listing from instances json files and semantic ground truth.

Listing runs while Snakemake parses the workflow, and ``instances_train2017.json`` is
448 MB, almost all of it the ``annotations`` array. ``read_coco_header`` therefore streams
the file with ijson and stops as soon as it has the top-level values it was asked for:
COCO files hold ``images`` before ``annotations``, so listing COCO train reads ~25 MB of
it. Rendering ground truth (and the class names, in the same process) loads the full file
once per process through pycocotools.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np

from lcseg_steps.data.records import Dataset, ImageRecord

_SKIP_KEY = "annotations"  # the top-level value the listing must not need


def read_coco_header(path: str | os.PathLike, keys: tuple[str, ...] = ("images", "categories")):
    """The top-level values ``keys`` of a COCO json, streamed with ijson.

    Reading stops once every key in ``keys`` has been read, so with COCO's member order
    (``info, licenses, images, annotations, categories``) asking for ``images`` never
    touches ``annotations``. A key that follows ``annotations`` in the file is found too,
    but only after ``annotations`` has been parsed (seconds and gigabytes for COCO train:
    the class names use pycocotools' load instead, see ``coco_class_names``). Returns a
    dict holding the found keys; a key absent from the file is absent from the dict. An
    empty, malformed or non-object file raises ``ValueError`` naming it.
    """
    import ijson  # only the listing needs it (envs/base.yaml)

    wanted = set(keys)
    if _SKIP_KEY in wanted:
        raise ValueError(f"read_coco_header does not read {_SKIP_KEY!r}; use pycocotools")
    path = Path(path)
    found: dict = {}
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path}: annotation file is empty")
        try:
            first = next(ijson.parse(f), None)
            if first is None or first[1] != "start_map":
                raise ValueError("the top level of a COCO annotation file must be an object")
            f.seek(0)
            for key, value in ijson.kvitems(f, "", use_float=True):
                if key in wanted:
                    found[key] = value
                    if len(found) == len(wanted):
                        break
        except (ijson.JSONError, ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a valid JSON annotation file ({err})") from err
    return found


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``({root}/{split}, {root}/annotations/instances_{split}.json)``."""
    base = Path(root)
    return base / split, base / "annotations" / f"instances_{split}.json"


def list_coco(root: str | os.PathLike, split: str) -> list[ImageRecord]:
    """Records of ``{root}/{split}`` (e.g. ``split="val2017"``) sorted by COCO image id.

    Image ids are file stems (``000000397133``); gt refs are
    ``"<instances json>#<coco image id>"``; heights and widths come from the json.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: COCO root directory not found (check dataset.root)")
    image_dir, ann = coco_paths(root, split)
    if not ann.is_file():
        raise FileNotFoundError(
            f"{ann}: COCO annotation file not found (check dataset.root and dataset.split)"
        )
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"{image_dir}: COCO image directory not found (check dataset.root and dataset.split)"
        )
    header = read_coco_header(ann, ("images",))
    images = header.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{ann}: no top-level 'images' list")
    records = []
    seen: set[str] = set()
    # plain string operations: pathlib (and os.path.join) per image cost seconds on COCO
    # train at DAG build
    prefix, ann_s = os.path.join(str(image_dir), ""), str(ann)
    splitext = os.path.splitext
    try:
        for im in sorted(images, key=lambda d: int(d["id"])):
            file_name = im["file_name"]
            image_id = splitext(file_name.rpartition("/")[2])[0]  # stem
            if image_id in seen:
                raise ValueError(f"{ann}: two images share the file stem {image_id!r}")
            seen.add(image_id)
            records.append(
                ImageRecord(
                    image_id=image_id,
                    # os.path.join's result, a tenth of its cost
                    path=file_name if file_name.startswith("/") else prefix + file_name,
                    gt=f"{ann_s}#{int(im['id'])}",
                    height=int(im["height"]),
                    width=int(im["width"]),
                )
            )
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{ann}: an image entry lacks id, file_name, height or width ({err})"
        ) from err
    return records


def coco_inputs(dataset: dict) -> list[str]:
    """The instances json: what the index of a COCO run reads."""
    return [str(coco_paths(dataset["root"], dataset.get("split", "val2017"))[1])]


def coco_class_names(dataset: dict) -> list[str]:
    """``background`` then the category names in ascending category-id order.

    Read through the same cached pycocotools load that ``render_coco_gt`` uses: the
    evaluate job that asks for the names renders every image's ground truth next, and
    ``categories`` comes after ``annotations`` in COCO files anyway.
    """
    _, ann = coco_paths(dataset["root"], dataset.get("split", "val2017"))
    if not ann.is_file():
        raise FileNotFoundError(f"{ann}: COCO annotation file not found")
    coco, mapping = _load_coco(str(ann.resolve()))
    names = ["background"] + [""] * len(mapping)
    for c in coco.loadCats(coco.getCatIds()):
        names[mapping[c["id"]]] = c["name"]
    return names


def owns_coco_gt(gt: str) -> bool:
    """A ``"<instances json>#<coco image id>"`` reference."""
    return "#" in gt


def read_coco_gt(record: ImageRecord) -> np.ndarray:
    """Ground truth of a record whose ``gt`` is ``"<json>#<coco image id>"``."""
    json_path, _, coco_id = record.gt.rpartition("#")
    try:
        coco_image_id = int(coco_id)
    except ValueError as err:
        raise ValueError(
            f"{record.gt}: coco ground-truth ref must be '<json>#<int image id>'"
        ) from err
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"{json_path}: coco annotation file not found")
    return render_coco_gt(json_path, coco_image_id)


def coco_category_map(categories: list[dict]) -> dict[int, int]:
    """Category id -> class id ``1..n`` in ascending category-id order (0 is background).

    For COCO's 80 thing categories (ids 1..90 with gaps) this gives classes 1..80.
    """
    ids = sorted({int(c["id"]) for c in categories})
    if len(ids) > 254:
        raise ValueError(f"{len(ids)} categories do not fit in uint8 labels with 255 = void")
    return {cid: i + 1 for i, cid in enumerate(ids)}


@functools.lru_cache(maxsize=2)
def _load_coco(path: str):
    """The pycocotools ``COCO`` object and category map of one json, loaded once."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timing lines
        coco = COCO(path)
    return coco, coco_category_map(coco.loadCats(coco.getCatIds()))


def render_coco_gt(annotation_json: str | os.PathLike, coco_image_id: int) -> np.ndarray:
    """Semantic ground truth of one COCO image, ``(H, W)`` uint8.

    0 = background, 1..n = categories via ``coco_category_map``, 255 = void.
    Overlap rule: non-crowd instances are painted in decreasing order of pixel area
    (ties by ascending annotation id), so a smaller instance lying on a larger one stays
    visible. Crowd regions become 255 only where no non-crowd instance lies.
    """
    path = str(Path(annotation_json).resolve())
    coco, cat_map = _load_coco(path)
    if coco_image_id not in coco.imgs:
        raise ValueError(f"{annotation_json}: no image with id {coco_image_id}")
    info = coco.imgs[coco_image_id]
    h, w = int(info["height"]), int(info["width"])
    labels = np.zeros((h, w), np.uint8)
    crowd = np.zeros((h, w), bool)
    things = []
    for ann in coco.imgToAnns.get(coco_image_id, []):
        cid = int(ann["category_id"])
        if cid not in cat_map:
            raise ValueError(
                f"{annotation_json}: annotation {ann.get('id')} has unknown category {cid}"
            )
        with warnings.catch_warnings():
            # pycocotools 2.0.x trips numpy 2's __array__(copy=...) deprecation on decode
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = coco.annToMask(ann).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(
                f"{annotation_json}: annotation {ann.get('id')} decodes to {mask.shape}, "
                f"image {coco_image_id} is {h}x{w}"
            )
        if ann.get("iscrowd", 0):
            crowd |= mask
        else:
            things.append((-int(mask.sum()), int(ann["id"]), cat_map[cid], mask))
    things.sort(key=lambda t: (t[0], t[1]))
    covered = np.zeros((h, w), bool)
    for _, _, cls, mask in things:
        labels[mask] = cls
        covered |= mask
    labels[crowd & ~covered] = 255
    return labels


DATASET = Dataset(
    name="coco",
    inputs=coco_inputs,
    list_images=lambda ds: list_coco(ds["root"], ds.get("split", "val2017")),
    class_names=coco_class_names,
    owns_gt=owns_coco_gt,
    read_gt=read_coco_gt,
)
