"""The user's own images: every image file under ``dataset.root``, recursively.

Image files are those whose extension is one of ``IMAGE_EXTENSIONS`` in any letter case
(``.jpg``, ``.JPG``, ``.Jpeg``, ``.tif``, ...). Hidden files and folders (name starting
with ``.``, e.g. macOS ``._IMG_0001.jpg`` resource forks) are left out, and so is the
``masks`` folder when it lies inside ``root``. Images are listed in the sorted order of
their relative paths.

Nothing is left out silently (``scan_folder``): every other file under ``root`` is listed
with the reason it is not used (not an image, a GIF, a hidden file, inside a hidden
folder), and the index writes them into ``skipped.tsv`` beside the images it could not
decode. An animation among the image files (animated WebP or PNG, a multi-page TIFF) is
skipped by the index, never cut to its first frame silently.

Ids (``image_ids``): the path relative to ``root`` without its extension, each ``/``
replaced by ``ID_SEP`` (``holiday/beach/001.jpg`` -> ``holiday__beach__001``), so an id is
a plain file name (prediction PNGs are named after ids). Files whose ids would be equal
(``a/b.jpg`` and ``a/b.png``, or ``a__b.jpg`` beside ``a/b.jpg``) all keep their extension,
as written (``a__b.jpg``, ``a__b.png``); an id still taken after that gets ``~2``, ``~3``,
... in listing order. Ids therefore depend on the relative paths only (and on which other
files share a stem).

Ground truth (optional, ``dataset.masks``): label PNGs (palette or grayscale indices,
class ids ``0..n_classes``, 255 = void) under the masks folder at the image's relative
path with ``.png`` (any case) in place of its extension (``masks/holiday/beach/001.png``);
``masks/<relative path with extension>.png`` (``masks/a/b.jpg.png``) is looked up first,
for images that share a stem. An image without a mask is unlabelled: it is clustered but
not scored.

Orientation: images are turned by their EXIF orientation tag (as photo viewers show them,
``Dataset.orient``); the index records each image's tag. A mask is in the same, turned,
convention; a mask whose size fits only the stored pixels (orientations 5..8 of a
non-square image: height and width swapped) is turned by the image's orientation
(``index.load_ground_truth``). Any other size is an error naming the mask.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass

from lcseg_steps.data.palette import owns_label_png, read_gt_png
from lcseg_steps.data.records import Dataset, ImageRecord

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_EXTENSION = ".png"
ID_SEP = "__"  # replaces "/" of relative paths in ids


@dataclass(frozen=True)
class FolderScan:
    """What ``scan_folder`` finds: the image files (relative paths, sorted) and every
    other file or hidden folder with the reason it is not used (``(relative path,
    reason)``, sorted)."""

    images: list[str]
    left_out: list[tuple[str, str]]


def _reason_left_out(name: str, extensions: tuple[str, ...]) -> str:
    ext = os.path.splitext(name)[1].lower()
    if name.startswith("."):
        return "hidden file (its name starts with '.')"
    if ext == ".gif":
        return "GIF is not read (lcseg segments still images; save the frame you want as PNG)"
    what = f"extension {ext!r}" if ext else "no extension"
    return f"not an image ({what}; images are {', '.join(extensions)}, any case)"


def scan_folder(
    root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, exclude=None
) -> FolderScan:
    """Every file under ``root``, recursively: those whose lower-cased extension is in
    ``extensions`` (not hidden, not under a hidden folder) are used, every other one is
    left out with its reason; a hidden folder is one entry (it is not searched). The
    folder ``exclude`` (the masks inside ``root``) is neither searched nor listed."""
    root = os.fspath(root)
    skip = os.path.realpath(exclude) if exclude else None
    found: list[str] = []
    left: list[tuple[str, str]] = []

    def rel(dirpath: str, name: str) -> str:
        rel_dir = os.path.relpath(dirpath, root)
        return (name if rel_dir == "." else os.path.join(rel_dir, name)).replace(os.sep, "/")

    for dirpath, dirnames, filenames in os.walk(root):
        kept = []
        for d in dirnames:
            if skip is not None and os.path.realpath(os.path.join(dirpath, d)) == skip:
                continue
            if d.startswith("."):
                left.append((rel(dirpath, d) + "/", "hidden folder (not searched)"))
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(rel(dirpath, name))
            else:
                left.append((rel(dirpath, name), _reason_left_out(name, extensions)))
    return FolderScan(sorted(found), sorted(left))


def _walk(root: str, extensions: tuple[str, ...], exclude: str | None = None) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the non-hidden files under ``root``
    whose lower-cased extension is in ``extensions``; the folder ``exclude`` is skipped."""
    return scan_folder(root, extensions, exclude).images


def image_ids(rel_paths: list[str]) -> list[str]:
    """Unique ids of relative image paths (the rule in the module docstring)."""
    stems = [os.path.splitext(p)[0].replace("/", ID_SEP) for p in rel_paths]
    shared = Counter(stems)
    taken: set[str] = set()
    ids = []
    for rel, stem in zip(rel_paths, stems, strict=True):
        base = stem if shared[stem] == 1 else stem + os.path.splitext(rel)[1]
        image_id, n = base, 2
        while image_id in taken:
            image_id, n = f"{base}~{n}", n + 1
        taken.add(image_id)
        ids.append(image_id)
    return ids


def _root(dataset: dict) -> str:
    root = dataset["root"]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: image folder not found (check dataset.root)")
    return root


def _masks(dataset: dict) -> str | None:
    masks = dataset.get("masks")
    if not masks:
        return None
    if not os.path.isdir(masks):
        raise FileNotFoundError(f"{masks}: mask folder not found (check dataset.masks)")
    if not dataset.get("n_classes"):
        raise ValueError("dataset.masks is set: set dataset.n_classes too (classes besides 0)")
    return masks


def list_folder(dataset: dict) -> list[ImageRecord]:
    """Records of every image under ``dataset.root`` (see the module docstring); with
    ``dataset.masks``, gt refs are the matching mask PNGs ("" for an image without one)."""
    root, masks = _root(dataset), _masks(dataset)
    rel_paths = _walk(root, IMAGE_EXTENSIONS, exclude=masks)
    if not rel_paths:
        raise ValueError(
            f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}, any case) under dataset.root"
        )
    by_key: dict[str, str] = {}
    if masks:
        for rel in _walk(masks, (MASK_EXTENSION,)):
            by_key[rel[: -len(MASK_EXTENSION)]] = os.path.join(masks, rel)
    records = []
    for rel, image_id in zip(rel_paths, image_ids(rel_paths), strict=True):
        gt = (by_key.get(rel) or by_key.get(os.path.splitext(rel)[0])) if masks else None
        records.append(ImageRecord(image_id=image_id, path=os.path.join(root, rel), gt=gt or ""))
    if masks:
        labelled = sum(bool(r.gt) for r in records)
        if not labelled:
            raise ValueError(
                f"{masks}: no mask matches an image under {root} (dataset.masks: masks are "
                "<relative image path without extension>.png)"
            )
        if labelled < len(records):
            warnings.warn(
                f"{masks}: {len(records) - labelled} of {len(records)} images have no mask; "
                "they are clustered but not scored",
                stacklevel=2,
            )
    return records


def folder_left_out(dataset: dict) -> list[tuple[str, str]]:
    """``(path, reason)`` of every file under ``dataset.root`` that is not used as an
    image (``scan_folder``), paths joined to ``root``."""
    root = _root(dataset)
    scan = scan_folder(root, IMAGE_EXTENSIONS, exclude=_masks(dataset))
    return [(os.path.join(root, rel), reason) for rel, reason in scan.left_out]


def folder_inputs(dataset: dict) -> list[str]:
    """Every listed image and mask file, so adding, removing or changing one reruns the
    index."""
    records = list_folder(dataset)
    return [r.path for r in records] + [r.gt for r in records if r.gt]


def folder_class_names(dataset: dict) -> list[str]:
    """``dataset.class_names`` (``n_classes`` names, background prepended, or
    ``n_classes + 1`` from background on), else ``background, class_1, ...``."""
    n = dataset.get("n_classes")
    if not n:
        raise ValueError("dataset.n_classes is not set: the folder has no ground truth")
    names = list(dataset.get("class_names") or [])
    if not names:
        return ["background"] + [f"class_{i}" for i in range(1, n + 1)]
    if len(names) == n:
        return ["background", *names]
    if len(names) == n + 1:
        return names
    raise ValueError(
        f"dataset.class_names lists {len(names)} names; expected n_classes={n} "
        f"(background added) or {n + 1} (background first)"
    )


DATASET = Dataset(
    name="folder",
    inputs=folder_inputs,
    list_images=list_folder,
    class_names=folder_class_names,
    owns_gt=owns_label_png,
    read_gt=read_gt_png,
    on_bad_image="skip",
    left_out=folder_left_out,
    orient=True,
)
