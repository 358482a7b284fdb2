"""MS COCO: fast image listing from instances json files and semantic ground truth.

Listing runs while Snakemake parses the workflow, and ``instances_train2017.json`` is
448 MB, almost all of it the ``annotations`` array. ``read_coco_header`` therefore
decodes only the top-level values it is asked for and never parses ``annotations``
(see its docstring); rendering ground truth loads the full file once per process
through pycocotools.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import warnings
from pathlib import Path

import numpy as np

from lcseg_steps.data.index import ImageRecord

_WS = " \t\n\r"
_SKIP_KEY = "annotations"  # the only top-level value large enough to be worth not parsing
_FIRST_WINDOW = 1 << 22  # bytes decoded at first; doubled while a value runs past the end


class _Truncated(Exception):
    """The decoded window ended inside a value: decode a larger window."""


def _utf8_cut(data, end: int) -> int:
    """Move ``end`` back so ``data[:end]`` does not split a UTF-8 character."""
    if end >= len(data):
        return len(data)
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return end


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _parse_members(
    text: str, pos: int, wanted: set[str], complete: bool, stop_at: str | None
) -> tuple[dict, int, bool]:
    """Walk the members of the top-level object from ``pos`` (just after ``{`` or ``,``).

    Returns ``(values of wanted keys, position, reached_end)``. Stops before the value of
    ``stop_at`` (returning the position of its key). ``complete`` says whether ``text``
    holds the rest of the file; if not, running off its end raises ``_Truncated``.
    """
    decoder = json.JSONDecoder()
    found: dict = {}
    first = True
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            if complete:
                raise ValueError("unexpected end of file inside the top-level object")
            raise _Truncated
        if text[pos] == "}":
            return found, pos, True
        if not first:
            if text[pos] != ",":
                raise ValueError(f"expected ',' or '}}' at character {pos}")
            pos = _skip_ws(text, pos + 1)
        first = False
        key_pos = pos
        try:
            key, pos = decoder.raw_decode(text, pos)
            if not isinstance(key, str):
                raise ValueError(f"expected a key string at character {key_pos}")
            pos = _skip_ws(text, pos)
            if pos >= len(text):
                raise json.JSONDecodeError("truncated", text, pos)
            if text[pos] != ":":
                raise ValueError(f"expected ':' at character {pos}")
            pos = _skip_ws(text, pos + 1)
            if key == stop_at:
                return found, key_pos, False
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            if complete:
                raise
            raise _Truncated from None
        if key in wanted:
            found[key] = value


def _parse_prefix(buf, wanted: set[str]) -> tuple[dict, bool]:
    """Parse top-level members from the start until the ``annotations`` key.

    Returns ``(found values, reached the end of the object)``.
    """
    size = len(buf)
    window = min(_FIRST_WINDOW, size)
    while True:
        end = _utf8_cut(buf, window)
        complete = end >= size
        text = buf[:end].decode("utf-8")
        pos = _skip_ws(text, 0)
        if pos >= len(text) or text[pos] != "{":
            raise ValueError("the file is not a JSON object")
        try:
            found, _, reached_end = _parse_members(text, pos + 1, wanted, complete, _SKIP_KEY)
            return found, reached_end
        except _Truncated:
            window *= 2


def _parse_tail(buf, key: str, wanted: set[str]) -> dict | None:
    """Find top-level ``key`` by searching backwards from the end of the file.

    A candidate ``"key"`` is accepted only if the text from it to the end parses as
    the last members of the top-level object (``"key": v, "k2": v2 ... }`` then
    end of file); a match inside a nested object or a string cannot parse that way.
    Returns the wanted values found in that tail, or ``None`` if no candidate fits.
    """
    needle = json.dumps(key).encode("utf-8")
    end = len(buf)
    for _ in range(8):  # a few false candidates at most before giving up
        start = buf.rfind(needle, 0, end)
        if start < 0:
            return None
        end = start
        if start > 0 and buf[start - 1] == ord("\\"):
            continue
        text = buf[start:].decode("utf-8", errors="strict")
        try:
            found, pos, reached_end = _parse_members(text, 0, wanted, True, None)
        except ValueError:  # JSONDecodeError is a ValueError too
            continue
        if reached_end and _skip_ws(text, pos + 1) == len(text) and key in found:
            return found
    return None


def read_coco_header(path: str | os.PathLike, keys: tuple[str, ...] = ("images", "categories")):
    """The top-level values ``keys`` of a COCO json, without parsing ``annotations``.

    Members are decoded in file order up to the ``annotations`` key; keys not found by
    then are searched backwards from the end of the file and verified by parsing the
    file's tail (COCO files end with ``categories``). If that fails the whole file is
    loaded with ``json.load`` as a slow but correct fallback. Returns a dict holding the
    found keys; a key absent from the file is absent from the dict.
    """
    wanted = set(keys)
    if _SKIP_KEY in wanted:
        raise ValueError(f"read_coco_header does not read {_SKIP_KEY!r}; use pycocotools")
    path = Path(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path}: annotation file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                found, reached_end = _parse_prefix(buf, wanted)
                if not reached_end:
                    for key in sorted(wanted - set(found)):
                        if key in found:
                            continue
                        tail = _parse_tail(buf, key, wanted)
                        if tail is not None:
                            found.update({k: v for k, v in tail.items() if k not in found})
                        else:
                            break  # absent or not verifiable: fall back below
                    else:
                        return found
                else:
                    return found
            except (ValueError, UnicodeDecodeError):
                pass
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid JSON annotation file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level of a COCO annotation file must be an object")
    return {k: data[k] for k in keys if k in data}


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
    # plain string operations: pathlib per image costs seconds on COCO train at DAG build
    image_dir_s, ann_s = str(image_dir), str(ann)
    try:
        for im in sorted(images, key=lambda d: int(d["id"])):
            file_name = im["file_name"]
            image_id = os.path.splitext(os.path.basename(file_name))[0]
            if image_id in seen:
                raise ValueError(f"{ann}: two images share the file stem {image_id!r}")
            seen.add(image_id)
            records.append(
                ImageRecord(
                    image_id=image_id,
                    path=os.path.join(image_dir_s, file_name),
                    gt=f"{ann_s}#{int(im['id'])}",
                    height=int(im["height"]),
                    width=int(im["width"]),
                )
            )
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{ann}: an image entry lacks id, file_name, height or width ({err})"
        ) from err
    return records


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
