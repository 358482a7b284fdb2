"""A small synthetic dataset in VOC layout, so the whole pipeline runs without downloads.

Each class differs from the others in shape, colour and texture; backgrounds are
textured with random hues so that colour alone does not separate objects from the
background. Like VOC, a void band (255) a few pixels wide covers every object outline.
Output is a pure function of the seed: image ``i`` draws from its own generator seeded
with ``(seed, i)``, so it does not depend on ``n_images`` either.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from lcseg_steps.data.palette import owns_label_png, read_gt_png, write_label_png
from lcseg_steps.data.records import Dataset, ImageRecord

DEMO_CLASSES = [
    "red_striped_ellipse",
    "blue_checkered_rectangle",
    "green_dotted_triangle",
    "yellow_star",
]
# the colour of each class in RGB, jittered per object
_CLASS_RGB = np.array([[205, 40, 35], [35, 70, 200], [40, 170, 55], [235, 205, 30]], np.float32)
VOID_BAND = 5  # px: width of the void band drawn across every object outline
JPEG_QUALITY = 92
MIN_VISIBLE = 0.3  # least fraction of an object's pixels left visible and non-void


def demo_ids(n_images: int) -> list[str]:
    """``["demo_0000", "demo_0001", ...]``, ``n_images`` of them."""
    if n_images <= 0:
        raise ValueError(f"dataset.demo.n_images must be positive, got {n_images}")
    return [f"demo_{i:04d}" for i in range(n_images)]


def _draw_size(rng: np.random.Generator, min_size: int, max_size: int) -> int:
    """A side length in ``[min_size, max_size]`` that is no multiple of 14 or 16, so the
    backbone's resize-to-patch-grid path is always exercised."""
    for _ in range(1000):
        s = int(rng.integers(min_size, max_size + 1))
        if s % 14 and s % 16:
            return s
    raise ValueError(f"no side length in [{min_size}, {max_size}] avoids multiples of 14 and 16")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, hue in [0, 1), to float32 RGB in [0, 255]."""
    px = np.array([[[h * 180.0, s * 255.0, v * 255.0]]], np.float32)
    return cv2.cvtColor(px.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float32 RGB: random-hue gradient, low-contrast waves, blotches, noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0 = _hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.85))
    c1 = _hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.85))
    angle = rng.uniform(0, np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    # a low-contrast wave pattern of its own hue
    freq = rng.uniform(0.02, 0.12)
    phase_angle = rng.uniform(0, np.pi)
    wave = np.sin(freq * (xx * np.cos(phase_angle) + yy * np.sin(phase_angle)))
    wave_rgb = _hsv_to_rgb(rng.random(), 0.5, 0.7) - 128.0
    img += rng.uniform(0.05, 0.2) * wave[..., None] * wave_rgb
    # smooth blotches: upsampled coarse noise
    coarse = rng.normal(0, 1, (max(2, h // 40), max(2, w // 40), 3)).astype(np.float32)
    img += rng.uniform(5, 20) * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, rng.uniform(3, 10), (h, w, 3)).astype(np.float32)
    return img


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """``(h, w)`` bool mask of one object of class ``cls`` (0-based) at a random pose."""
    mask = np.zeros((h, w), np.uint8)
    r = rng.uniform(0.12, 0.3) * min(h, w)
    cx = rng.uniform(r * 0.6, w - r * 0.6)
    cy = rng.uniform(r * 0.6, h - r * 0.6)
    rot = rng.uniform(0, 2 * np.pi)
    if cls == 0:  # ellipse
        axes = (int(r), int(r * rng.uniform(0.45, 0.75)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(np.degrees(rot)), 0, 360, 1, -1)
        return mask.astype(bool)
    if cls == 1:  # rectangle
        a, b = r, r * rng.uniform(0.5, 0.9)
        corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]], np.float32)
    elif cls == 2:  # triangle
        ang = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        corners = np.stack([np.cos(ang), np.sin(ang)], 1) * r
    else:  # five-pointed star
        ang = np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        corners = np.stack([np.cos(ang) * radius, np.sin(ang) * radius], 1)
    c, s = np.cos(rot), np.sin(rot)
    pts = corners @ np.array([[c, s], [-s, c]], np.float32) + np.array([cx, cy], np.float32)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def _texture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float32 RGB fill of class ``cls``: its colour and its own pattern."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.clip(_CLASS_RGB[cls] + rng.normal(0, 12, 3), 0, 255).astype(np.float32)
    dark = base * 0.35
    period = rng.uniform(9, 16)
    rot = rng.uniform(0, np.pi)
    u = xx * np.cos(rot) + yy * np.sin(rot)
    v = -xx * np.sin(rot) + yy * np.cos(rot)
    if cls == 0:  # stripes
        pattern = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif cls == 1:  # checkerboard
        pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif cls == 2:  # dots on a regular grid
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        pattern = (du * du + dv * dv > (period * 0.3) ** 2).astype(np.float32)
    else:  # plain
        pattern = np.ones((h, w), np.float32)
    tex = dark + (base - dark) * pattern[..., None]
    return tex + rng.normal(0, 4, (h, w, 3)).astype(np.float32)


def void_band(instances: np.ndarray, width: int = VOID_BAND) -> np.ndarray:
    """``(H, W)`` bool: pixels within about ``width / 2`` px of a change of instance id.

    ``instances`` is ``(H, W)`` uint8 with 0 = background and one id per object, so the
    band also separates two touching objects of the same class. The image border does
    not count as an outline.
    """
    kernel = np.ones((width, width), np.uint8)
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


def _shifted(mask: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``mask`` ``(h, w)`` bool moved by ``(dy, dx)`` px (nearest; what leaves is cut)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    h, w = mask.shape
    moved = cv2.warpAffine(mask.view(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    return moved.astype(bool)


def _touching_pair(rng: np.random.Generator, h: int, w: int) -> tuple[list[int], list]:
    """Two objects of different classes that touch along a shared edge: the second is
    moved towards the first, along a random direction, until it overlaps it by 3-15% of
    the smaller one's area (drawn on top: its outline is the edge they share). Returns
    the 0-based classes and ``(h, w)`` bool masks; None when no such pose is found."""
    a, b = (int(c) for c in rng.choice(len(DEMO_CLASSES), 2, replace=False))
    ma, mb = _shape_mask(rng, a, h, w), _shape_mask(rng, b, h, w)
    ya, xa = np.argwhere(ma).mean(0)
    yb, xb = np.argwhere(mb).mean(0)
    theta = rng.uniform(0, 2 * np.pi)
    want = rng.uniform(0.03, 0.15) * min(ma.sum(), mb.sum())
    # from far away along theta towards A's centre, in 2 px steps: the first overlap
    # above the wanted share
    for d in np.arange(max(h, w), -1, -2.0):
        cy, cx = ya + d * np.sin(theta), xa + d * np.cos(theta)
        moved = _shifted(mb, cy - yb, cx - xb)
        if moved.sum() < 0.9 * mb.sum():  # mostly outside the image: not yet
            continue
        overlap = np.count_nonzero(moved & ma)
        if overlap >= want:
            # entering the image already deep over A (A near the border): another pose
            return ([a, b], [ma, moved]) if overlap <= 0.2 * min(ma.sum(), mb.sum()) else None
    return None


def render_demo_image(
    rng: np.random.Generator, min_size: int, max_size: int, touching: bool = False
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One demo image.

    Returns ``(rgb, labels, classes)``: ``(H, W, 3)`` uint8 RGB, ``(H, W)`` uint8 class
    ids (0 background, 1..len(DEMO_CLASSES), 255 void band), and the class id of each
    drawn object in drawing order (later objects occlude earlier ones; each keeps at least
    ``MIN_VISIBLE`` of its pixels visible and outside the void band). ``touching``: the
    objects are a pair of two different classes touching along a shared edge (one
    connected foreground component; :func:`_touching_pair`).
    """
    h, w = _draw_size(rng, min_size, max_size), _draw_size(rng, min_size, max_size)
    img = _background(rng, h, w)
    n_objects = 2 if touching else int(rng.integers(1, 4))
    for _ in range(100):
        # occlusion may hide most of an object; re-draw the layout until every object
        # keeps a fair share of its pixels outside the void band
        if touching:
            pair = None
            while pair is None:
                pair = _touching_pair(rng, h, w)
            classes, masks = pair
        else:
            classes = [int(c) for c in rng.integers(0, len(DEMO_CLASSES), n_objects)]
            masks = [_shape_mask(rng, c, h, w) for c in classes]
        instances = np.zeros((h, w), np.uint8)
        for k, mask in enumerate(masks, 1):
            instances[mask] = k
        void = void_band(instances)
        visible = [np.count_nonzero((instances == k) & ~void) for k in range(1, n_objects + 1)]
        if all(v >= MIN_VISIBLE * m.sum() for v, m in zip(visible, masks, strict=True)):
            break
    for cls, mask in zip(classes, masks, strict=True):
        img[mask] = _texture(rng, cls, h, w)[mask]
    classes = [c + 1 for c in classes]
    labels = np.array([0] + classes, np.uint8)[instances]
    labels[void] = 255
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return rgb, labels, classes


def generate_demo(
    root: str | os.PathLike,
    n_images: int = 48,
    seed: int = 0,
    min_size: int = 200,
    max_size: int = 400,
    touching: float = 0.0,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Write the demo dataset under ``root`` in VOC layout and return its ids.

    Writes ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG, VOC
    palette) and ``ImageSets/Segmentation/val.txt``. The same arguments give
    byte-identical files. ``touching``: the share of images that hold a pair of objects
    of two classes touching along a shared edge (image ``i`` is one when a draw of its own
    generator ``(seed, i, 1)`` is below it). At 0 nothing of it is drawn: the images are
    those of before the option existed.
    """
    if not 0 <= touching <= 1:
        raise ValueError(f"dataset.demo.touching must be in [0, 1], got {touching}")
    if not 1 <= min_size <= max_size:
        raise ValueError(
            f"dataset.demo: need 1 <= min_size <= max_size, got {min_size}, {max_size}"
        )

    def render(i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, i])
        # a stream of its own: the image's generator draws nothing more for the choice
        touch = touching > 0 and np.random.default_rng([seed, i, 1]).random() < touching
        rgb, labels, _ = render_demo_image(rng, min_size, max_size, touch)
        return rgb, labels

    ids = write_voc_layout(root, n_images, render, "demo", log)
    log(f"demo: {n_images} images ({len(DEMO_CLASSES)} classes) written to {root}")
    return ids


def write_voc_layout(
    root: str | os.PathLike,
    n_images: int,
    render: Callable[[int], tuple[np.ndarray, np.ndarray]],
    what: str,
    log: Callable[[str], None] = print,
) -> list[str]:
    """A generated dataset in VOC layout under ``root``: image ``i`` of ``render(i)``
    (``(H, W, 3)`` uint8 RGB, ``(H, W)`` uint8 labels) as ``JPEGImages/<id>.jpg`` and the
    palette PNG ``SegmentationClass/<id>.png``, and the ids (``demo_ids``) in
    ``ImageSets/Segmentation/val.txt``. ``what`` names the dataset in errors and
    progress."""
    base = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = demo_ids(n_images)
    for i, image_id in enumerate(ids):
        rgb, labels = render(i)
        jpg = base / "JPEGImages" / f"{image_id}.jpg"
        ok = cv2.imwrite(
            str(jpg), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise OSError(f"{jpg}: could not write the {what} image")
        write_label_png(base / "SegmentationClass" / f"{image_id}.png", labels)
        if (i + 1) % 100 == 0:
            log(f"{what}: {i + 1}/{n_images} images written")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text(
        "".join(f"{i}\n" for i in ids), encoding="utf-8"
    )
    return ids


def demo_params(demo: dict) -> dict:
    """The ``dataset.demo`` block as rule ``demo_data`` passes it: ``touching`` only when
    above 0, so a default run's parameters (and so its reruns) are those of before."""
    return {k: v for k, v in demo.items() if k != "touching" or v}


def list_demo(dataset: dict) -> list[ImageRecord]:
    """Records of the demo set, from ``dataset.demo.n_images`` alone, so the DAG can be
    built before ``generate_demo`` has written anything."""
    n_images = int(dataset.get("demo", {}).get("n_images", 48))
    base = Path(dataset["root"])
    return [
        ImageRecord(
            image_id=i,
            path=str(base / "JPEGImages" / f"{i}.jpg"),
            gt=str(base / "SegmentationClass" / f"{i}.png"),
        )
        for i in demo_ids(n_images)
    ]


DATASET = Dataset(
    name="demo",
    inputs=lambda ds: [ds["root"]],  # the generated tree (rule demo_data's output)
    list_images=list_demo,
    class_names=lambda ds: ["background", *DEMO_CLASSES],
    owns_gt=owns_label_png,
    read_gt=read_gt_png,
    generated=True,
    generate=generate_demo,
)
