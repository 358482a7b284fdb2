"""Store-to-store drivers of the last stages: refine, objects, assign, segment, evaluate,
summary and report. Algorithms live in ``refine``, ``objects``, ``descriptors``,
``assign``, ``evaluate`` and ``report``; this module reads and writes the artifacts.

Pixel-level stores are ragged over pixels: a flat array plus ``pixel_offsets``
``(images + 1,)`` and ``sizes`` ``(images, 2)`` (height, width), image ``i`` owning
``flat[pixel_offsets[i]:pixel_offsets[i + 1]]`` reshaped to ``sizes[i]``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lcseg_steps.atomic_write import tmp_sibling
from lcseg_steps.data.index import ImageRecord, load_ground_truth
from lcseg_steps.store import image_grid_array, open_store, read_ids, write_store

Log = Callable[[str], None]


PIXEL_CHUNK = 1 << 22  # pixels per chunk of a flat pixel array


def pixel_layout(masks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Flat pixel array (in the maps' own dtype), ``pixel_offsets`` and ``sizes``."""
    from lcseg_steps.refine import pack_masks

    dtype = np.result_type(*masks) if masks else np.uint8
    flat, offsets, sizes = pack_masks(masks, dtype=dtype)
    return {"flat": flat, "pixel_offsets": offsets, "sizes": sizes}


def write_pixel_store(
    out: str | Path,
    name: str,
    maps: Sequence[np.ndarray],
    image_ids: np.ndarray,
    attrs: dict,
    **arrays: np.ndarray,
) -> Path:
    """One store of per-image ``(H, W)`` maps as the flat array ``name`` (plus ``arrays``)."""
    lay = pixel_layout(maps)
    return write_store(
        out,
        {
            **arrays,
            name: lay["flat"],
            "pixel_offsets": lay["pixel_offsets"],
            "sizes": lay["sizes"],
            "image_ids": image_ids,
        },
        attrs,
        chunk_rows=PIXEL_CHUNK,
    )


def pixel_map(store, name: str, i: int) -> np.ndarray:
    """Image ``i``'s ``(H, W)`` map of the flat pixel array ``name``."""
    lo, hi = (int(x) for x in store["pixel_offsets"][i : i + 2])
    h, w = (int(x) for x in store["sizes"][i])
    return np.asarray(store[name][lo:hi]).reshape(h, w)


def _records_in_order(store, records: Sequence[ImageRecord], path) -> list[ImageRecord]:
    by_id = {r.image_id: r for r in records}
    ids = read_ids(store)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise KeyError(f"{path}: images {missing[:3]} are not in the index")
    return [by_id[i] for i in ids]


# ---------------------------------------------------------------------------------------
# refine


def run_refine(
    patch_masks: str | Path,
    records: Sequence[ImageRecord],
    out: str | Path,
    *,
    crf: bool,
    threshold: float,
    crf_params: dict,
    processes: int,
    attrs: dict,
    log: Log = print,
) -> Path:
    """Soft patch scores -> upsampled, CRF-refined binary pixel masks of one shard."""
    from lcseg_steps.refine import CRFParams, refine_images

    pm = open_store(patch_masks)
    recs = _records_in_order(pm, records, patch_masks)
    items = [(r.path, image_grid_array(pm, "score", i)) for i, r in enumerate(recs)]
    log(f"refine: {len(items)} images, crf={crf}, {processes} process(es)")
    masks = refine_images(
        items,
        processes=processes,
        crf=crf,
        threshold=threshold,
        params=CRFParams(**crf_params),
        log=log,
    )
    for r, m in zip(recs, masks, strict=True):
        if m.shape != (r.height, r.width):
            raise ValueError(f"{r.path}: refined mask {m.shape} != index size {r.height}x{r.width}")
    fg = sum(int(m.sum()) for m in masks)
    empty = sum(int(m.sum() == 0) for m in masks)
    share = fg / max(1, sum(m.size for m in masks))
    log(f"refine: foreground share {share:.3f}; {empty} empty mask(s)")
    return write_pixel_store(out, "mask", masks, read_ids(pm), attrs)


# ---------------------------------------------------------------------------------------
# objects


def run_objects(
    pixel_masks: str | Path,
    features: str | Path,
    records: Sequence[ImageRecord],
    out: str | Path,
    *,
    regions: str,
    min_area: float,
    descriptor: str,
    margin: float,
    long_side: int,
    batch_size: int,
    feature: str,
    backbone: dict,
    device: str,
    attrs: dict,
    log: Log = print,
) -> Path:
    """Object regions of the refined masks and one descriptor per region."""
    from lcseg_steps.images import read_rgb
    from lcseg_steps.objects import masked_key_descriptor, object_regions, region_box, region_crop

    px = open_store(pixel_masks)
    recs = _records_in_order(px, records, pixel_masks)
    if descriptor not in ("cls", "masked_keys"):
        raise ValueError(f"objects.descriptor must be cls or masked_keys, got {descriptor!r}")
    fs = open_store(features) if descriptor == "masked_keys" else None
    maps, crops, descs, image_index, boxes, comps, areas = [], [], [], [], [], [], []
    for i, r in enumerate(recs):
        mask = pixel_map(px, "mask", i)
        regs = object_regions(mask, mode=regions, min_area=min_area)
        region_map = np.zeros(mask.shape, dtype=np.uint16)
        img = read_rgb(r.path) if (regs and descriptor == "cls") else None
        for j, reg in enumerate(regs):
            region_map[reg] = j + 1
            image_index.append(i)
            boxes.append(region_box(reg, margin))
            comps.append(j)
            areas.append(int(reg.sum()))
            if descriptor == "cls":
                crops.append(region_crop(img, reg, margin))
            else:
                grid = image_grid_array(fs, feature, i).astype(np.float32)
                descs.append(masked_key_descriptor(grid, reg))
        maps.append(region_map)
    n_empty = sum(int(m.max() == 0) for m in maps)
    log(
        f"objects: {len(image_index)} regions in {len(recs)} images "
        f"({n_empty} without foreground), descriptor={descriptor}"
    )
    if descriptor == "cls":
        from lcseg_steps.backbone import load_backbone, weights_of_source
        from lcseg_steps.descriptors import crop_cls_descriptors

        # the weights and precision the features were extracted with (the config's
        # "auto" could resolve differently now, and would probe the hub again)
        fattrs = open_store(features).attrs
        weights, seed = backbone["weights"], backbone["seed"]
        if fattrs.get("weights"):
            weights, seed_of = weights_of_source(fattrs["weights"])
            seed = seed if seed_of is None else seed_of
        bf16 = fattrs.get("precision") == "bfloat16"
        model, info = load_backbone(
            backbone["name"], weights, seed=seed, overrides=backbone["overrides"], device=device
        )
        log(f"objects: CLS of {len(crops)} crops, weights {info.weights}, bf16={bf16}")
        D = crop_cls_descriptors(
            model,
            info,
            crops,
            long_side=long_side,
            batch_size=batch_size,
            device=device,
            bf16=bf16,
        )
    else:
        dim = open_store(features)[feature].shape[1]
        D = np.stack(descs).astype(np.float32) if descs else np.zeros((0, dim), np.float32)
    return write_pixel_store(
        out,
        "region_map",
        maps,
        read_ids(px),
        attrs,
        descriptors=D,
        image_index=np.asarray(image_index, dtype=np.int32),
        box=np.asarray(boxes, dtype=np.int32).reshape(-1, 4),
        component=np.asarray(comps, dtype=np.int32),
        area=np.asarray(areas, np.int64),
    )


# ---------------------------------------------------------------------------------------
# assign


def run_assign(
    objects: Sequence[str | Path],
    shards: Sequence[str],
    out: str | Path,
    *,
    n_classes: int,
    method: str,
    n_neighbors: int,
    seed: int,
    attrs: dict,
    log: Log = print,
) -> Path:
    """All region descriptors -> one class per region (spectral clustering by default)."""
    from lcseg_steps.assign import assign_classes

    descs = [np.asarray(open_store(p)["descriptors"][:]) for p in objects]
    counts = [len(d) for d in descs]
    X = np.concatenate(descs)
    log(f"assign: {len(X)} regions from {len(objects)} shard(s) -> {n_classes} classes ({method})")
    if len(X) < n_classes:
        raise ValueError(
            f"labels.n_classes={n_classes} but the masks gave only {len(X)} object regions; "
            "lower labels.n_classes, lower objects.min_region_area or add images"
        )
    labels = assign_classes(X, n_classes, method=method, n_neighbors=n_neighbors, seed=seed)
    log(f"assign: class sizes {np.bincount(labels, minlength=n_classes).tolist()}")
    return write_store(
        out,
        {
            "labels": labels,
            "region_offsets": np.concatenate([[0], np.cumsum(counts)]),
            "shards": np.asarray(list(shards), dtype=object),
        },
        attrs,
    )


# ---------------------------------------------------------------------------------------
# segment


def run_segment(
    objects: str | Path,
    classes: str | Path,
    shard: str,
    out: str | Path,
    pred_dir: str | Path,
    *,
    attrs: dict,
    log: Log = print,
) -> Path:
    """Semantic maps (0 background, class + 1 inside each region) as Zarr and palette PNGs."""
    from lcseg_steps.data.voc import write_label_png

    ob, cl = open_store(objects), open_store(classes)
    shards = list(read_ids(cl, "shards"))
    if shard not in shards:
        raise KeyError(f"{classes}: no classes for shard {shard}")
    s = shards.index(shard)
    lo, hi = (int(x) for x in cl["region_offsets"][s : s + 2])
    labels = np.asarray(cl["labels"][lo:hi])
    image_index = np.asarray(ob["image_index"][:])
    if len(labels) != len(image_index):
        raise ValueError(f"{classes}: {len(labels)} classes for {len(image_index)} regions")
    ids = read_ids(ob)
    pred_dir = Path(pred_dir)
    pred_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = tmp_sibling(pred_dir)
    tmp_dir.mkdir()
    maps, start = [], 0
    for i, image_id in enumerate(ids):
        region_map = pixel_map(ob, "region_map", i)
        n_regions = int((image_index == i).sum())
        lut = np.zeros(n_regions + 1, dtype=np.uint8)
        lut[1:] = labels[start : start + n_regions] + 1
        start += n_regions
        sem = lut[region_map]
        maps.append(sem)
        write_label_png(tmp_dir / f"{image_id}.png", sem)
    if pred_dir.exists():
        import shutil

        shutil.rmtree(pred_dir)
    os.replace(tmp_dir, pred_dir)
    log(f"segment: {len(ids)} images, PNGs in {pred_dir}")
    return write_pixel_store(out, "semantic", maps, ids, attrs)


# ---------------------------------------------------------------------------------------
# evaluate, summary


def run_evaluate(
    semantic: Sequence[str | Path],
    records: Sequence[ImageRecord],
    out_json: str | Path,
    iou_png: str | Path,
    confusion_png: str | Path,
    *,
    class_names: Sequence[str],
    n_classes: int,
    matching: str,
    facts: dict,
    log: Log = print,
) -> dict:
    """Confusion over all labelled images, Hungarian (or majority) matching, metrics.json.

    Images without a ground-truth reference (``gt == ""``: VOC extra lists) are skipped,
    logged and counted as ``n_images_unlabelled``; a referenced ground-truth file that is
    missing or whose size differs from the image is an error naming the file.
    """
    from lcseg_steps import evaluate as ev

    acc = ev.ConfusionAccumulator(len(class_names), n_classes + 1)
    skipped = 0
    for path in semantic:
        st = open_store(path)
        for i, r in enumerate(_records_in_order(st, records, path)):
            gt = load_ground_truth(r)
            if gt is None:
                skipped += 1  # extra unlabelled images join clustering, not scoring
                continue
            pred = pixel_map(st, "semantic", i)
            if gt.shape != pred.shape:
                raise ValueError(f"{r.gt}: ground truth {gt.shape} != prediction {pred.shape}")
            acc.add(gt, pred, image_id=r.image_id)
        log(f"evaluate: {acc.n_images} images scored, {skipped} unlabelled skipped after {path}")
    if acc.n_images == 0:
        raise ValueError("evaluate: no image has ground truth to score against")
    conf = acc.matrix
    mapping = ev.hungarian_match(conf) if matching == "hungarian" else ev.majority_match(conf)
    result = ev.scores(conf, mapping, class_names)
    ev.plot_per_class_iou(result, iou_png)
    ev.plot_confusion(result, confusion_png)
    metrics = {
        "miou": result["miou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "per_class_iou": dict(zip(result["class_names"], result["per_class_iou"], strict=True)),
        "matching": matching,
        "n_images_scored": acc.n_images,
        "n_images_unlabelled": skipped,
        **facts,
        "mapping": result["mapping"],
        "confusion": result["confusion"],
    }
    log(f"evaluate: mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}")
    Path(out_json).write_text(json.dumps(ev.json_ready(metrics), indent=2))
    return metrics


def summarize_seeds(metrics_files: Sequence[str | Path], seeds: Sequence[int]) -> dict:
    """mean ± std (population) of the scores over seeds."""
    runs = [json.loads(Path(p).read_text()) for p in metrics_files]
    out: dict = {"seeds": list(seeds)}
    for key in ("miou", "pixel_accuracy"):
        vals = np.array([math.nan if r[key] is None else r[key] for r in runs], dtype=float)
        scored = vals[~np.isnan(vals)]
        # None, not NaN, for missing scores: NaN is not valid JSON
        out[key] = {
            "mean": float(scored.mean()) if scored.size else None,
            "std": float(scored.std()) if scored.size else None,
            "per_seed": [None if math.isnan(v) else float(v) for v in vals],
        }
    return out


# ---------------------------------------------------------------------------------------
# report


def gallery_panels(
    record: ImageRecord,
    patch_masks,
    i_patch: int,
    pixel_masks,
    i_pix: int,
    semantic,
    i_sem: int,
) -> list[tuple[str, np.ndarray]]:
    """Captioned panels of one image: picture, ground truth, level masks, refined, prediction."""
    from lcseg_steps.data.voc import voc_palette
    from lcseg_steps.images import read_rgb
    from lcseg_steps.report import overlay, patch_mask_image

    palette = voc_palette()
    img = read_rgb(record.path)
    panels = [("image", img)]
    gt = load_ground_truth(record)
    if gt is not None:
        panels.append(("ground truth", overlay(img, gt, palette)))
    for name in ("mask_dataset", "mask_category", "mask_image", "merged", "score"):
        if name in patch_masks:
            grid = image_grid_array(patch_masks, name, i_patch).astype(np.float32)
            panels.append((name.replace("mask_", "level: "), patch_mask_image(img, grid)))
    refined = pixel_map(pixel_masks, "mask", i_pix)
    panels.append(("refined (CRF)", overlay(img, refined, palette)))
    pred = pixel_map(semantic, "semantic", i_sem)
    panels.append(("prediction (cluster ids)", overlay(img, pred, palette)))
    return panels


def run_report(
    out_html: str | Path,
    *,
    title: str,
    metrics_json: str | Path,
    summary_json: str | Path,
    plots: Sequence[tuple[str, str | Path]],
    records: Sequence[ImageRecord],
    patch_masks: Sequence[str | Path],
    pixel_masks: Sequence[str | Path],
    semantic: Sequence[str | Path],
    n_gallery: int,
    log: Log = print,
) -> Path:
    """The self-contained HTML page of one run (first seed's images, every seed's scores)."""
    from lcseg_steps.report import build_report

    metrics = json.loads(Path(metrics_json).read_text())
    summary = json.loads(Path(summary_json).read_text())
    gallery: list[dict] = []
    for pm_path, px_path, sem_path in zip(patch_masks, pixel_masks, semantic, strict=True):
        pm, px, sem = open_store(pm_path), open_store(px_path), open_store(sem_path)
        recs = _records_in_order(pm, records, pm_path)
        for i, r in enumerate(recs):
            if len(gallery) >= n_gallery:
                break
            gallery.append(
                {"image_id": r.image_id, "panels": gallery_panels(r, pm, i, px, i, sem, i)}
            )
    m = summary["miou"]
    over_seeds = "n/a" if m["mean"] is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"
    notes = [
        f"mIoU over seeds {summary['seeds']}: {over_seeds}",
        "Prediction colours are cluster ids before matching; scores use the Hungarian "
        "(or majority) matching of clusters to classes.",
    ]
    log(f"report: {len(gallery)} gallery images")
    return build_report(
        out_html, title=title, metrics=metrics, plots=plots, gallery=gallery, notes=notes
    )
