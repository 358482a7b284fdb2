"""The generated scenes of ``dataset: demo_scene`` written in the ``folder`` layout, with
masks: what a user's own scene photos and label PNGs look like (``dataset: folder``,
``labels.scope: scene``). The scenes are :func:`lcseg_steps.data.demo_scene.render_scene_image`'s,
so every pixel has one of :data:`~lcseg_steps.data.demo_scene.SCENE_CLASSES` (no void, no
background).

``python -m lcseg_steps.data.scene_tree <folder> [n_images] [seed]`` writes
``<folder>/images/<id>.png`` and ``<folder>/masks/<id>.png``, read by
``dataset: {name: folder, root: <folder>/images, masks: <folder>/masks, n_classes: 7,
class_names: [...]}``; the tests of scene mode on a folder draw their scenes here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lcseg_steps.data.demo_scene import render_scene_image


def write_scene_tree(
    folder: str | Path, n_images: int = 12, seed: int = 0, min_size: int = 96, max_size: int = 128
) -> list[str]:
    """Write ``n_images`` scenes (image ``i`` drawn from ``default_rng([seed, i])``) to
    ``folder/images/`` and their label PNGs (VOC palette) to ``folder/masks/``; returns the
    ids (``scene_0000``, ...)."""
    from PIL import Image

    from lcseg_steps.data.palette import write_label_png

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n_images):
        rgb, labels, _ = render_scene_image(np.random.default_rng([seed, i]), min_size, max_size)
        image_id = f"scene_{i:04d}"
        Image.fromarray(rgb).save(folder / "images" / f"{image_id}.png")
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
