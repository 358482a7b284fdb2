"""Image decoding and the resize policy shared by every stage that looks at pixels."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""


EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> how the stored (raw) pixels are turned to show the image as photo
# viewers do: None (as stored), a cv2.flip code, a cv2.rotate code, or "transpose" /
# "transverse" (the main / the anti-diagonal mirror)
_ORIENT = {
    1: (),
    2: (("flip", 1),),  # mirrored left-right
    3: (("rotate", cv2.ROTATE_180),),
    4: (("flip", 0),),  # mirrored top-bottom
    5: (("transpose", None),),
    6: (("rotate", cv2.ROTATE_90_CLOCKWISE),),  # how phones store portrait shots
    7: (("transpose", None), ("rotate", cv2.ROTATE_180)),
    8: (("rotate", cv2.ROTATE_90_COUNTERCLOCKWISE),),
}
ORIENTATIONS = tuple(_ORIENT)


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag (1..8) of an image file; 1 when the file has none, holds
    a value outside 1..8, or cannot be read (the decoder then names the problem). Only the
    header is read (PIL, no pixel decode): JPEG, PNG (eXIf), WebP and TIFF."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in _ORIENT else 1


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Raw pixels ``(H, W, ...)`` -> the image as viewers show it under EXIF
    ``orientation`` (1..8; 5..8 swap height and width). The same turn applies to a label
    map of the raw pixels."""
    if orientation not in _ORIENT:
        raise ValueError(f"EXIF orientation must be one of 1..8, got {orientation!r}")
    for op, code in _ORIENT[orientation]:
        if op == "flip":
            img = cv2.flip(img, code)
        elif op == "rotate":
            img = cv2.rotate(img, code)
        else:
            img = np.ascontiguousarray(np.swapaxes(img, 0, 1))
    return img


def oriented_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    """``(height, width)`` of raw pixels after :func:`orient`."""
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def read_rgb(path: str | os.PathLike, orientation: int | str = 1) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB.

    ``orientation``: 1 (the default) keeps the stored (raw) pixels, as VOC's and COCO's
    annotations expect; 2..8 turns them by that EXIF orientation (:func:`orient`);
    ``"exif"`` reads the file's own tag (:func:`exif_orientation`) and turns by it, as
    photo viewers show the image. The stages pass the orientation the index recorded
    (``ImageRecord.orientation``: :func:`read_record`).

    Grayscale (VOC and COCO both hold a few grayscale JPEGs) is replicated to three
    channels, CMYK JPEGs and palette PNGs are converted by the decoder, the alpha channel
    of an RGBA PNG is dropped (not composited), and 16-bit PNGs are scaled to 8 bits
    (``round(v / 257)``, so a 16-bit copy of an 8-bit image decodes to that image); any
    other non-uint8 depth is min-max stretched to 0..255. A missing, empty, truncated or
    undecodable file, or a directory in its place, raises ``ImageError`` naming it.
    """
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image file")
    if not p.is_file():
        raise ImageError(f"{p}: image file not found")
    buf = np.fromfile(str(p), dtype=np.uint8)
    if buf.size == 0:
        raise ImageError(f"{p}: image file is empty")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{p}: not a decodable image (corrupt, truncated or unsupported format)")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second copy
    if orientation == "exif":
        orientation = exif_orientation(p)
    return img if orientation == 1 else orient(img, orientation)


_JPEG_MAGIC = b"\xff\xd8\xff"
_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _reduced_scale(path: Path, min_side: int) -> tuple[int, tuple[int, int]]:
    """``(n, (height, width))``: the scale 1/n :func:`read_rgb_reduced` decodes ``path`` at
    (1: in full) and the raw size from the header (``(0, 0)`` when not read)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(3) != _JPEG_MAGIC:
                return 1, (0, 0)
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
    except Exception:
        return 1, (0, 0)  # read_rgb names the problem
    scale = 1
    while scale < 8 and max(height, width) / (2 * scale) >= min_side:
        scale *= 2
    return scale, (height, width)


def decodes_reduced(path: str | os.PathLike, min_side: int) -> bool:
    """Whether :func:`read_rgb_reduced` decodes ``path`` at a reduced scale for
    ``min_side`` (a header read)."""
    return _reduced_scale(Path(path), min_side)[0] > 1


def read_rgb_reduced(
    path: str | os.PathLike, orientation: int | str, min_side: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """``(image, (H, W))``: the image for a step that brings it down to at most
    ``min_side`` pixels on its longer side anyway, and its full size ``(H, W)`` (turned by
    ``orientation`` as :func:`read_rgb` turns it).

    A JPEG whose longer side is at least twice ``min_side`` is decoded at the smallest of
    the scales 1/2, 1/4 and 1/8 that keeps its longer side at least ``min_side``
    (libjpeg's scaling in the DCT domain, ``cv2.IMREAD_REDUCED_COLOR_n``: a 27 MP photo
    at 1/4 in a fraction of a full decode's time and memory); the copy is then about
    ``(H / n, W / n)`` (rounded up), turned. Every other file, and every image under
    twice ``min_side``, is :func:`read_rgb`'s full decode: byte-identical to it.
    """
    p = Path(path)
    scale, (height, width) = _reduced_scale(p, min_side)
    if scale == 1:
        img = read_rgb(p, orientation)
        return img, img.shape[:2]
    buf = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(buf, _REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageError(f"{p}: not a decodable image (corrupt, truncated or unsupported format)")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)
    if orientation == "exif":
        orientation = exif_orientation(p)
    if orientation != 1:
        img = orient(img, orientation)
    return img, oriented_size(height, width, orientation)


def read_record_reduced(record, min_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_rgb_reduced` of an index record (its recorded orientation)."""
    return read_rgb_reduced(record.path, getattr(record, "orientation", 1), min_side)


def read_record(record) -> np.ndarray:
    """The pixels of an index record (``ImageRecord``) as every stage sees them: decoded
    and turned by the orientation the index recorded (1 for VOC and COCO)."""
    return read_rgb(record.path, getattr(record, "orientation", 1))


def patch_grid_size(height: int, width: int, patch: int, long_side: int | None) -> tuple[int, int]:
    """Input size ``(h, w)`` for the backbone under the default policy.

    The longer side is scaled to ``long_side`` (``None`` keeps the original size), the
    aspect ratio is kept, and each side is rounded down to a multiple of ``patch``.
    A side that would fall below one patch is a clear error rather than an empty grid.
    """
    if height <= 0 or width <= 0:
        raise ImageError(f"image size {height}x{width} is empty")
    scale = 1.0 if long_side is None else long_side / max(height, width)
    h = int(round(height * scale)) // patch * patch
    w = int(round(width * scale)) // patch * patch
    if h < patch or w < patch:
        raise ImageError(
            f"image of {height}x{width} px resized to {long_side} on the long side is smaller "
            f"than one {patch}px patch"
        )
    return h, w


def resize_for_backbone(img: np.ndarray, patch: int, long_side: int | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` uint8 resized per ``patch_grid_size``."""
    h, w = patch_grid_size(img.shape[0], img.shape[1], patch, long_side)
    if (h, w) == img.shape[:2]:
        return img
    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def normalize(img: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB -> ``(3, h, w)`` float32 with ImageNet mean/std."""
    x = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))
