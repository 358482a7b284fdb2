"""A small generated scene dataset in the ``folder`` layout, for scene mode
(``labels.scope: scene``): textured "stuff" regions (sky, grass, water, sand) and objects
(discs, boxes) that together cover every pixel, so the ground truth has no background and
no void: class ids ``0..5`` (:data:`SCENE_CLASSES`).

``python -m lcseg_steps.data.scene_tree <folder> [n_images] [seed]`` writes
``<folder>/images/<id>.png`` and ``<folder>/masks/<id>.png``, read by
``dataset: {name: folder, root: <folder>/images, masks: <folder>/masks, n_classes: 5,
class_names: [...]}`` (``workflow/configs/demo_scene.yaml``). A stand-in until the
generated scene demo of ``lcseg_steps.data.demo`` exists; the tests of scene mode draw
their scenes here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SCENE_CLASSES = ("sky", "grass", "water", "sand", "disc", "box")
# base RGB of each class
_COLOURS = np.array(
    [[110, 160, 235], [60, 150, 50], [30, 90, 140], [215, 190, 130], [210, 40, 40], [240, 210, 30]],
    dtype=np.float32,
)


def _texture(cls: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` float32 RGB of class ``cls``: its colour, a class-specific pattern and
    noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.broadcast_to(_COLOURS[cls], (h, w, 3)).copy()
    phase = rng.uniform(0, 2 * np.pi)
    if cls == 0:  # sky: brighter towards the top
        pattern = 25.0 * (1.0 - yy / max(h - 1, 1))
    elif cls == 1:  # grass: vertical stripes
        pattern = 25.0 * np.sin(xx * 1.2 + phase)
    elif cls == 2:  # water: horizontal waves
        pattern = 25.0 * np.sin(yy * 0.8 + 0.3 * np.sin(xx * 0.3) + phase)
    elif cls == 3:  # sand: coarse speckle
        pattern = (
            30.0 * (rng.random((h // 3 + 1, w // 3 + 1)) - 0.5).repeat(3, 0).repeat(3, 1)[:h, :w]
        )
    elif cls == 4:  # disc: radial shading
        pattern = 20.0 * np.cos(xx * 0.2 + phase) * np.cos(yy * 0.2)
    else:  # box: checker
        pattern = 30.0 * (((yy // 4) + (xx // 4)) % 2 - 0.5)
    noise = rng.normal(0.0, 8.0, (h, w, 1))
    return base + pattern[..., None] + noise


def render_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(h, w, 3)`` uint8 RGB and ``(h, w)`` uint8 labels in ``0..5``, every
    pixel labelled. Sky above a wavy horizon, two ground classes split by a slanted line,
    one or two objects (a disc, a box) on top."""
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), dtype=np.uint8)
    horizon = h * rng.uniform(0.25, 0.5) + h * 0.05 * np.sin(xx / w * 2 * np.pi + rng.uniform(0, 6))
    ground = yy >= horizon
    a, b = rng.choice([1, 2, 3], size=2, replace=False)
    split = w * rng.uniform(0.3, 0.7) + (yy - h / 2) * rng.uniform(-0.6, 0.6)
    labels[ground & (xx < split)] = a
    labels[ground & (xx >= split)] = b
    for cls in rng.choice([4, 5], size=int(rng.integers(1, 3)), replace=False):
        r = int(min(h, w) * rng.uniform(0.12, 0.2))
        cy, cx = int(rng.uniform(r, h - r)), int(rng.uniform(r, w - r))
        if cls == 4:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(r * 1.3))
        labels[inside] = cls
    image = np.zeros((h, w, 3), dtype=np.float32)
    for cls in np.unique(labels):
        tex = _texture(int(cls), h, w, rng)
        image[labels == cls] = tex[labels == cls]
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_scene_tree(
    folder: str | Path, n_images: int = 12, seed: int = 0, min_size: int = 96, max_size: int = 128
) -> list[str]:
    """Write ``n_images`` scenes (:func:`render_scene`) to ``folder/images/`` and their
    label PNGs (VOC palette) to ``folder/masks/``; returns the ids (``scene_0000``, ...)."""
    from PIL import Image

    from lcseg_steps.data.voc import write_label_png

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n_images):
        h, w = (int(rng.integers(min_size, max_size + 1)) for _ in range(2))
        image, labels = render_scene(rng, h, w)
        image_id = f"scene_{i:04d}"
        Image.fromarray(image).save(folder / "images" / f"{image_id}.png")
        write_label_png(folder / "masks" / f"{image_id}.png", labels)
        ids.append(image_id)
    return ids


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 3:
        raise SystemExit("usage: python -m lcseg_steps.data.scene_tree FOLDER [N_IMAGES] [SEED]")
    ids = write_scene_tree(argv[0], *(int(a) for a in argv[1:]))
    print(f"wrote {len(ids)} scenes to {argv[0]}/images and {argv[0]}/masks")


if __name__ == "__main__":
    main(sys.argv[1:])
