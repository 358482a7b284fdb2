"""Store-to-store drivers of the clustering stages (image_level, fit_dataset,
fit_category, merge). The algorithms live in ``lcseg_steps.levels`` and
``lcseg_steps.kmeans``; this module only reads and writes stores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zarr

from lcseg_steps import levels as lv
from lcseg_steps.kmeans import (
    STREAM_CACHE_BYTES,
    NonFiniteError,
    import_torch_cast_if_worth,
    kmeans_stream,
)
from lcseg_steps.store import iter_row_blocks, open_store, read_ids, write_store

Log = Callable[[str], None]


def feature_array(store: zarr.Group, path: str | Path, feature: str) -> zarr.Array:
    if feature not in store:
        raise ValueError(
            f"{path}: has no '{feature}' features (clustering.feature={feature!r}); add it to "
            f"extract.store_features or choose one of "
            f"{[f for f in ('q', 'k', 'v') if f in store]}"
        )
    return store[feature]


def check_finite(store: zarr.Group, path: str | Path, feature: str, X=None) -> None:
    """Raise ``ValueError`` naming the store, the feature and the first image whose
    ``feature`` rows hold NaN or inf (a corrupt store: extract writes finite rows only).

    ``X``: the rows already in memory; otherwise the array is read block by block.
    """
    blocks = [np.asarray(X)] if X is not None else iter_row_blocks(store[feature])
    start = 0
    for block in blocks:
        bad = ~np.isfinite(block).all(axis=tuple(range(1, block.ndim)))
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            n_bad = int(bad.sum())
            if X is None:  # count the rest too
                for rest in blocks:
                    n_bad += int((~np.isfinite(rest).all(axis=tuple(range(1, rest.ndim)))).sum())
            offsets = np.asarray(store["offsets"][:])
            image = int(np.searchsorted(offsets, row, side="right")) - 1
            raise ValueError(
                f"{path}: '{feature}' features hold NaN or inf in {n_bad} patch row(s), first "
                f"in row {row} (image {read_ids(store)[image]!r}); the store is corrupt, "
                "delete it and rerun extract"
            )
        start += len(block)


def _layout(store: zarr.Group) -> dict[str, np.ndarray]:
    return {
        "offsets": np.asarray(store["offsets"][:]),
        "grid": np.asarray(store["grid"][:]),
        "image_ids": read_ids(store),
    }


def run_image_level(
    features: str | Path,
    out: str | Path,
    *,
    feature: str,
    k: int,
    fg_rule: str,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    log: Log = print,
    threads: int = 1,
) -> Path:
    """``features/{shard}.zarr`` -> ``image_level/{shard}.zarr`` (labels, fg mask, fg cluster)."""
    fs = open_store(features)
    X = np.asarray(feature_array(fs, features, feature)[:])
    layout = _layout(fs)
    n = len(layout["image_ids"])
    log(f"image_level: {n} images, {X.shape[0]} patches, k={k}, fg_rule={fg_rule}")
    import_torch_cast_if_worth(X.size)
    try:
        res = lv.image_level(
            X,
            layout["offsets"],
            layout["grid"],
            np.asarray(fs["cls_attn"][:]),
            k=k,
            fg_rule=fg_rule,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            device=device,
            threads=threads,
        )
    except NonFiniteError:
        check_finite(fs, features, feature, X)  # names the store and image (error path only)
        raise
    skipped = int((res["fg_cluster"] < 0).sum())
    if skipped:
        log(f"WARNING: {skipped} image(s) have fewer than k={k} patches; left as background")
    log(
        f"image_level: mean objective {np.nanmean(res['objective']):.4f}, "
        f"foreground share {res['fg'].mean():.3f}"
    )
    return write_store(out, {**res, **layout}, {**attrs, "level": "image", "k": k})


def _shard_rows(paths: Sequence[str | Path], feature: str):
    stores = [(p, open_store(p)) for p in paths]
    return [(p, s, feature_array(s, p, feature)) for p, s in stores]


def _image_fg(path: str | Path) -> np.ndarray:
    return np.asarray(open_store(path)["fg"][:])


def run_fit_dataset(
    features: Sequence[str | Path],
    image_levels: Sequence[str | Path],
    out: str | Path,
    *,
    feature: str,
    k: int,
    fg_vote: float,
    init_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    log: Log = print,
    threads: int = 1,
) -> Path:
    """All feature shards (streamed) -> ``dataset_level.zarr``: centroids and fg clusters."""
    shards = _shard_rows(features, feature)
    n_rows = sum(a.shape[0] for _, _, a in shards)
    log(f"fit_dataset: {n_rows} patches in {len(shards)} shards, k={k}")
    # kmeans_stream casts every row once, and again every pass if its float32 cache
    # cannot hold them all
    once = n_rows * shards[0][2].shape[1]
    cached = 4 * once <= STREAM_CACHE_BYTES
    import_torch_cast_if_worth(once if cached else once * max(1, max_iter))

    def blocks():
        for _, _, arr in shards:
            yield from iter_row_blocks(arr, lazy=True)

    try:
        fit = kmeans_stream(
            blocks,
            k,
            init_sample=init_sample,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            device=device,
            log=log,
            threads=threads,
            return_labels=True,  # the fit's last pass labels every row: no second read
        )
    except NonFiniteError:
        # the fit checks every row but cannot say in which store; find it (error path only)
        for path, store, _ in shards:
            check_finite(store, path, feature)
        raise
    counts = np.zeros((k, 2), dtype=np.int64)
    start = 0
    for (_, _, arr), il in zip(shards, image_levels, strict=True):
        labels = fit.labels[start : start + arr.shape[0]]
        counts += lv.vote_counts(labels, _image_fg(il), k)
        start += arr.shape[0]
    fg, frac = lv.foreground_clusters(counts, fg_vote)
    log(
        f"fit_dataset: objective {fit.objective:.4f} after {fit.n_iter} iterations; "
        f"foreground share per cluster {np.round(frac, 3).tolist()} -> fg clusters "
        f"{np.flatnonzero(fg).tolist()}"
    )
    return write_store(
        out,
        {
            "centroids": fit.centroids,
            "fg_clusters": fg,
            "fg_fraction": frac,
            "counts": counts,
            "history": np.asarray(fit.history),
        },
        {**attrs, "level": "dataset", "k": k, "objective": fit.objective, "n_iter": fit.n_iter},
    )


def pseudo_categories(cls: np.ndarray, n_categories: int, method: str, seed: int) -> np.ndarray:
    """Images -> pseudo-category by clustering their CLS tokens ``(n, D)`` -> ``(n,)`` int64."""
    from lcseg_steps.assign import assign_classes

    if n_categories > len(cls):
        raise ValueError(
            f"clustering.n_categories={n_categories} but the run has only {len(cls)} images"
        )
    if n_categories == 1:
        return np.zeros(len(cls), dtype=np.int64)
    return assign_classes(np.asarray(cls, dtype=np.float32), n_categories, method=method, seed=seed)


def run_fit_category(
    features: Sequence[str | Path],
    image_levels: Sequence[str | Path],
    out: str | Path,
    *,
    feature: str,
    n_categories: int,
    clusterer: str,
    k: int,
    fg_vote: float,
    category_fit_sample: int | None,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    log: Log = print,
    threads: int = 1,
) -> Path:
    """CLS tokens -> pseudo-categories; per category ``k`` centroids and fg clusters."""
    shards = _shard_rows(features, feature)
    cls = np.concatenate([np.asarray(s["cls"][:], dtype=np.float32) for _, s, _ in shards])
    image_ids = np.concatenate([_layout(s)["image_ids"] for _, s, _ in shards])
    cats = pseudo_categories(cls, n_categories, clusterer, seed)
    log(
        f"fit_category: {len(cls)} images -> {n_categories} pseudo-categories "
        f"(sizes {np.bincount(cats, minlength=n_categories).tolist()})"
    )
    row_cats, start = [], 0
    for _, s, _ in shards:
        sizes = np.diff(np.asarray(s["offsets"][:]))
        row_cats.append(np.repeat(cats[start : start + len(sizes)], sizes))
        start += len(sizes)
    group_sizes = np.bincount(np.concatenate(row_cats), minlength=n_categories)
    X, g = lv.sample_rows_by_group(
        (
            (lambda a=arr: np.asarray(a[:]), rc)
            for (_, _, arr), rc in zip(shards, row_cats, strict=True)
        ),
        group_sizes,
        category_fit_sample,
        seed,
    )
    log(f"fit_category: fitting k={k} per category on {len(X)} sampled patches")
    import_torch_cast_if_worth(X.size)
    C, fit = lv.fit_groups(
        X,
        g,
        n_categories,
        k,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
    )
    counts = np.zeros((n_categories * k, 2), dtype=np.int64)
    for (_, _, arr), rc, il in zip(shards, row_cats, image_levels, strict=True):
        lab = lv.nearest_centroid_grouped(arr[:], rc, C)
        counts += lv.vote_counts(rc * k + lab, _image_fg(il), n_categories * k)
    counts = counts.reshape(n_categories, k, 2)
    fg, frac = lv.foreground_clusters(counts, fg_vote)
    log(f"fit_category: fg clusters per category {[np.flatnonzero(f).tolist() for f in fg]}")
    return write_store(
        out,
        {
            "image_ids": image_ids,
            "category": cats,
            "centroids": C,
            "fg_clusters": fg,
            "fg_fraction": frac,
            "counts": counts,
            "objective": fit.objective,
        },
        {**attrs, "level": "category", "k": k, "n_categories": n_categories},
    )


def run_merge(
    features: str | Path,
    image_level: str | Path,
    dataset_level: str | Path | None,
    category_level: str | Path | None,
    out: str | Path,
    *,
    feature: str,
    levels: Sequence[str],
    consistency: str,
    min_levels: int,
    attrs: dict,
    log: Log = print,
) -> Path:
    """One shard's level masks and their merge -> ``patch_masks/{shard}.zarr``."""
    levels = lv.check_levels(levels)
    fs = open_store(features)
    layout = _layout(fs)
    il = open_store(image_level)
    need_x = any(name in levels for name in ("dataset", "category"))
    X = np.asarray(feature_array(fs, features, feature)[:]) if need_x else None
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    if "dataset" in levels:
        ds = open_store(dataset_level)
        lab = lv.nearest_centroid(X, ds["centroids"][:])
        masks["dataset"] = np.asarray(ds["fg_clusters"][:])[lab].astype(np.uint8)
        arrays["label_dataset"] = lab.astype(np.int16)
    if "category" in levels:
        cs = open_store(category_level)
        cat_of = dict(
            zip(
                read_ids(cs),
                np.asarray(cs["category"][:]),
                strict=True,
            )
        )
        img_cat = np.array([cat_of[str(i)] for i in layout["image_ids"]], dtype=np.int64)
        rows_cat = np.repeat(img_cat, np.diff(layout["offsets"]))
        lab = lv.nearest_centroid_grouped(X, rows_cat, np.asarray(cs["centroids"][:]))
        masks["category"] = np.asarray(cs["fg_clusters"][:])[rows_cat, lab].astype(np.uint8)
        arrays["label_category"] = lab.astype(np.int16)
        arrays["category"] = img_cat
    if "image" in levels:
        masks["image"] = np.asarray(il["fg"][:])
        arrays["label_image"] = np.asarray(il["labels"][:])
    merged, score = lv.merge_masks(masks, consistency, min_levels)
    for name, m in masks.items():
        arrays[f"mask_{name}"] = m
    sizes = np.diff(layout["offsets"])
    fg_per_image = np.add.reduceat(merged, layout["offsets"][:-1]) if len(merged) else sizes * 0
    empty = int((fg_per_image == 0).sum())
    log(
        f"merge: levels {levels}, {consistency}; foreground share {merged.mean():.3f}; "
        f"{empty} of {len(sizes)} image(s) with empty foreground"
    )
    return write_store(
        out,
        {**arrays, "merged": merged, "score": score, **layout},
        {**attrs, "levels": levels, "consistency": consistency, "min_levels": min_levels},
    )
