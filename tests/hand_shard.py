"""A tiny on-disk shard with hand-made masks and stores (three images, their gt, patch
masks, features and refined pixel masks) for the tests of the last stages (refine,
objects, segment, report); conftest.py's ``shard`` and ``objects_store`` fixtures build
it once per session."""

from __future__ import annotations

import cv2
import numpy as np

from lcseg_steps.data.image_table import ImageRecord
from lcseg_steps.data.palette import write_label_png
from lcseg_steps.stages.objects import run_objects
from lcseg_steps.stages.refine import run_refine
from lcseg_steps.stores.layout import pixel_layout, write_store
from tests.schema_defaults import crf_settings

PATCH = 8
D = 6
SHARD = "s0000"
# id -> (height, width); grids are (h // 8, w // 8)
SIZES = {"a0": (40, 56), "a1": (40, 56), "a2": (32, 48)}
ATTRS = {"test": True}
OBJ_KW = {
    "regions": "components",
    "min_region_area": 0.01,
    "margin": 0.1,
    "long_side": 32,
    "batch_size": 2,
    "feature": "k",
    "device": "cpu",
    "attrs": ATTRS,
}
TINY_VIT = {
    "name": "vit_small_patch16_224",
    "weights": "random",
    "seed": 0,
    "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2},
}


def _quiet(_msg: str) -> None:
    pass


def _hand_masks() -> dict[str, np.ndarray]:
    """Pixel masks with known components (areas chosen distinct so the order is fixed).

    a0: B rows 8:32 x cols 32:48 (384 px, patch-aligned), A rows 8:24 x cols 8:24 plus a
    pixel joined only diagonally (257 px), a 2x2 dot (4 px < 1% of 2240) that is dropped;
    a1: one 24x24 block on the border (576 px); a2: empty.
    """
    a0 = np.zeros(SIZES["a0"], np.uint8)
    a0[8:32, 32:48] = 1
    a0[8:24, 8:24] = 1
    a0[24, 24] = 1
    a0[36:38, 2:4] = 1
    a1 = np.zeros(SIZES["a1"], np.uint8)
    a1[16:40, 0:24] = 1
    return {"a0": a0, "a1": a1, "a2": np.zeros(SIZES["a2"], np.uint8)}


def _ragged(per_image: dict[str, np.ndarray], grids: dict[str, tuple[int, int]]) -> dict:
    """Per-image grid arrays ``(gh, gw, ...)`` -> flat rows + offsets/grid/image_ids."""
    ids = list(per_image)
    rows = [per_image[i].reshape(grids[i][0] * grids[i][1], *per_image[i].shape[2:]) for i in ids]
    return {
        "flat": np.concatenate(rows),
        "offsets": np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64),
        "grid": np.asarray([grids[i] for i in ids], dtype=np.int32),
        "image_ids": np.array(ids),
    }


def make_shard(tmp):
    """Images, gt PNGs, records, a patch_masks store, a features store, a pixel_masks
    store of the hand-made masks, and the per-image score / feature grids."""
    rng = np.random.default_rng(0)
    masks = _hand_masks()
    grids = {i: (h // PATCH, w // PATCH) for i, (h, w) in SIZES.items()}
    records = {}
    for image_id, (h, w) in SIZES.items():
        img = np.full((h, w, 3), 40, np.uint8)
        img[masks[image_id] == 1] = (230, 200, 60)  # the bright "objects"
        img = np.clip(img + rng.integers(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = tmp / "images" / f"{image_id}.png"
        path.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(path), img)
        gt = np.where(masks[image_id] == 1, 1 + int(image_id == "a1"), 0).astype(np.uint8)
        gt[0, :] = 255
        gt_path = tmp / "gt" / f"{image_id}.png"
        write_label_png(gt_path, gt)
        records[image_id] = ImageRecord(image_id, str(path), str(gt_path), h, w, SHARD)

    scores = {i: rng.random(grids[i]).astype(np.float32) for i in SIZES}
    sc = _ragged(scores, grids)
    merged = (sc["flat"] >= 0.5).astype(np.uint8)
    patch_masks = write_store(
        tmp / "patch_masks" / f"{SHARD}.zarr",
        {
            "mask_image": merged,
            "merged": merged,
            "score": sc["flat"],
            "offsets": sc["offsets"],
            "grid": sc["grid"],
            "image_ids": sc["image_ids"],
        },
        ATTRS,
    )
    k = {i: rng.standard_normal((*grids[i], D)).astype(np.float16) for i in SIZES}
    kf = _ragged(k, grids)
    features = write_store(
        tmp / "features" / f"{SHARD}.zarr",
        {
            "k": kf["flat"],
            "cls": rng.standard_normal((len(SIZES), D)).astype(np.float16),
            "offsets": kf["offsets"],
            "grid": kf["grid"],
            "image_ids": kf["image_ids"],
        },
        {"backbone": "fake"},
    )
    lay = pixel_layout([masks[i] for i in SIZES])
    pixel_masks = write_store(
        tmp / "pixel_masks" / f"{SHARD}.zarr",
        {
            "mask": lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": np.array(list(SIZES)),
        },
        ATTRS,
    )
    return {
        "tmp": tmp,
        "records": records,
        "masks": masks,
        "scores": scores,
        "k": k,
        "patch_masks": patch_masks,
        "features": features,
        "pixel_masks": pixel_masks,
    }


def make_objects_store(shard):
    """run_objects (masked_keys) on the hand-made pixel masks."""
    return run_objects(
        shard["pixel_masks"],
        shard["features"],
        list(shard["records"].values()),
        shard["tmp"] / "objects" / f"{SHARD}.zarr",
        descriptor="masked_keys",
        backbone={},
        log=_quiet,
        **OBJ_KW,
    )


def _refine(shard, out, records, processes=1, crf=False):
    return run_refine(
        shard["patch_masks"],
        records,
        out,
        crf=crf,
        threshold=0.5,
        **crf_settings(iterations=3),
        processes=processes,
        attrs=ATTRS,
        log=_quiet,
    )


def _classes_store(path):
    # shard SHARD is the second one: its regions are rows 2:5, labels [2, 0, 1]
    return write_store(
        path,
        {
            "labels": np.array([1, 0, 2, 0, 1], dtype=np.int64),
            "region_offsets": np.array([0, 2, 5], dtype=np.int64),
            "shards": np.array(["s9999", SHARD]),
        },
    )
