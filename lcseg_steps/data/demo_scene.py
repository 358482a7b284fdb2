"""A small synthetic scene dataset (``dataset.name: demo_scene``): every pixel has a class,
none is background, as in COCO-Stuff-27 and Cityscapes-27.

Each image is a landscape of textured "stuff": sky above a wavy horizon, and below it two
ground regions (grass, water or road: two different ones, split by a slanted edge), often
with a road running towards the horizon (narrow far away, wide near the bottom, a dashed
centre line). On it stand one to three objects of the demo's four shape classes, with the
demo's colours and textures (``lcseg_steps.data.demo``). The label map gives every pixel
its class: stuff 0..3, objects 4..7; nothing is void and nothing is background.

Written in the demo's VOC layout (``JPEGImages``, ``SegmentationClass``,
``ImageSets/Segmentation/val.txt``) from ``dataset.demo``'s ``n_images``, ``seed``,
``min_size`` and ``max_size``. Output is a pure function of the seed: image ``i`` draws
from its own generator seeded with ``(seed, i)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import cv2
import numpy as np

from lcseg_steps.data.demo import (
    DEMO_CLASSES,
    _draw_size,
    _shape_mask,
    _texture,
    list_demo,
    write_voc_layout,
)
from lcseg_steps.data.palette import owns_label_png, read_gt_png
from lcseg_steps.data.records import Dataset

STUFF_CLASSES = ["sky", "grass", "road", "water"]
SCENE_CLASSES = [*STUFF_CLASSES, *DEMO_CLASSES]
SKY, GRASS, ROAD, WATER = range(4)
FIRST_OBJECT = len(STUFF_CLASSES)
MIN_VISIBLE = 0.3  # least fraction of an object's pixels left visible


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """``(h, w)`` float32 noise of unit scale, smooth over about ``cell`` px."""
    coarse = rng.normal(0, 1, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _stuff_texture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float32 RGB fill of stuff class ``cls``, with its own pattern."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if cls == SKY:  # a vertical blue gradient with soft white clouds
        top = np.array([60, 110, 200], np.float32) + rng.normal(0, 10, 3)
        low = np.array([170, 200, 235], np.float32) + rng.normal(0, 8, 3)
        t = (yy / max(h - 1, 1))[..., None]
        img = top * (1 - t) + low * t
        clouds = np.clip(_smooth_noise(rng, h, w, 24) - 0.3, 0, None)[..., None]
        return img + clouds * (255 - img) * rng.uniform(0.3, 0.6) + rng.normal(0, 2, (h, w, 3))
    if cls == GRASS:  # green with short vertical strokes
        base = np.array([70, 140, 50], np.float32) + rng.normal(0, 10, 3)
        strokes = cv2.blur(rng.normal(0, 1, (h, w)).astype(np.float32), (1, 7)) * 3
        blotch = _smooth_noise(rng, h, w, 20)[..., None] * 12
        return base + strokes[..., None] * np.array([18, 30, 12], np.float32) + blotch
    if cls == ROAD:  # grey asphalt, fine grain
        base = np.float32(rng.uniform(85, 120))
        grain = rng.normal(0, 9, (h, w)).astype(np.float32)
        img = np.repeat((base + grain + _smooth_noise(rng, h, w, 16) * 6)[..., None], 3, 2)
        return img + rng.normal(0, 3, 3).astype(np.float32)
    # water: horizontal ripples in blue-green
    base = np.array([40, 100, 140], np.float32) + rng.normal(0, 10, 3)
    period = rng.uniform(5, 9)
    ripple = np.sin(2 * np.pi * yy / period + 0.8 * _smooth_noise(rng, h, w, 12))
    return base + ripple[..., None] * np.array([15, 25, 30], np.float32) + rng.normal(0, 3, 3)


def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(h, w)`` uint8 stuff classes and ``(h, w)`` bool dashed road centre line."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = h * rng.uniform(0.28, 0.45) + h * 0.04 * np.sin(
        2 * np.pi * xx / (w * rng.uniform(0.6, 1.5)) + rng.uniform(0, 2 * np.pi)
    )
    left, right = (int(c) for c in rng.choice([GRASS, ROAD, WATER], 2, replace=False))
    # the ground's two regions meet along a slanted edge
    x_edge = w * rng.uniform(0.3, 0.7) + (yy - h) * rng.uniform(-0.6, 0.6)
    labels = np.where(xx < x_edge, left, right).astype(np.uint8)
    line = np.zeros((h, w), bool)
    if ROAD not in (left, right) or rng.random() < 0.5:
        # a road from the bottom towards a vanishing point on the horizon
        vx = w * rng.uniform(0.3, 0.7)
        vy = float(horizon.mean())
        bx = w * rng.uniform(0.2, 0.8)
        depth = np.clip((yy - vy) / max(h - vy, 1.0), 0, 1)
        centre = vx + (bx - vx) * depth
        half = w * rng.uniform(0.12, 0.22) * depth
        road = np.abs(xx - centre) < half
        labels[road] = ROAD
        dash = (np.floor(yy / max(h * 0.06, 3.0)) % 2 == 0) & (depth > 0.1)
        line = road & (np.abs(xx - centre) < np.maximum(half * 0.05, 0.6)) & dash
    labels[yy < horizon] = SKY
    line &= labels == ROAD
    return labels, line


def render_scene_image(
    rng: np.random.Generator, min_size: int, max_size: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One scene image: ``(rgb, labels, objects)``, ``(H, W, 3)`` uint8 RGB, ``(H, W)``
    uint8 classes (``SCENE_CLASSES``; every pixel has one) and the class of each object
    in drawing order (each keeps at least ``MIN_VISIBLE`` of its pixels visible)."""
    h, w = _draw_size(rng, min_size, max_size), _draw_size(rng, min_size, max_size)
    labels, line = _stuff_layout(rng, h, w)
    img = np.zeros((h, w, 3), np.float32)
    for cls in range(len(STUFF_CLASSES)):
        where = labels == cls
        if where.any():
            img[where] = _stuff_texture(rng, cls, h, w)[where]
    img[line] = np.float32(235)
    n_objects = int(rng.integers(1, 4))
    for _ in range(100):
        classes = [int(c) for c in rng.integers(0, len(DEMO_CLASSES), n_objects)]
        masks = [_shape_mask(rng, c, h, w) for c in classes]
        top = np.zeros((h, w), np.int16)  # the object drawn last at each pixel, 1-based
        for k, mask in enumerate(masks, 1):
            top[mask] = k
        visible = [np.count_nonzero(top == k) for k in range(1, n_objects + 1)]
        if all(v >= MIN_VISIBLE * m.sum() for v, m in zip(visible, masks, strict=True)):
            break
    for cls, mask in zip(classes, masks, strict=True):
        img[mask] = _texture(rng, cls, h, w)[mask]
        labels[mask] = FIRST_OBJECT + cls
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return rgb, labels, [FIRST_OBJECT + c for c in classes]


def generate_demo_scene(
    root: str | os.PathLike,
    n_images: int = 48,
    seed: int = 0,
    min_size: int = 200,
    max_size: int = 400,
    touching: float = 0.0,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Write the scene demo under ``root`` in VOC layout and return its ids (the demo's
    ``demo_0000``, ...). The same arguments give byte-identical files; ``touching`` is
    the object demo's and is refused here."""
    if touching:
        raise ValueError("dataset.demo.touching applies to dataset demo, not demo_scene")
    if not 1 <= min_size <= max_size:
        raise ValueError(
            f"dataset.demo: need 1 <= min_size <= max_size, got {min_size}, {max_size}"
        )

    def render(i: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, labels, _ = render_scene_image(np.random.default_rng([seed, i]), min_size, max_size)
        return rgb, labels

    ids = write_voc_layout(root, n_images, render, "demo_scene", log)
    log(f"demo_scene: {n_images} images ({len(SCENE_CLASSES)} classes) written to {root}")
    return ids


DATASET = Dataset(
    name="demo_scene",
    inputs=lambda ds: [ds["root"]],  # the generated tree (rule demo_data's output)
    list_images=list_demo,
    class_names=lambda ds: list(SCENE_CLASSES),
    owns_gt=owns_label_png,
    read_gt=read_gt_png,
    generated=True,
    background=False,
    generate=generate_demo_scene,
)
