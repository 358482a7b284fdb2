"""Planted benchmark of the three clustering levels and their merge.

Synthetic patch features with a known foreground / background split and known image
categories, plus corruptions of increasing strength chosen so that each level has its
own failure mode (the levels make *partly independent* errors):

- per-image nuisance: a random half-plane of each image is pushed along a random
  direction of its own. A per-image 2-means can split along it instead of fg/bg; over
  many images the nuisance directions average out (hurts the image level);
- per-category background shift: the background of some categories drifts toward the
  mean foreground direction. One 2-means over the whole dataset then puts those
  backgrounds with the foreground; within one category background is still coherent
  (hurts the dataset level);
- few images per category and noisy CLS tokens: small categories see few nuisance
  directions, each weighing more, and noisy CLS tokens put images in the wrong
  pseudo-category (hurts the category level);
- isotropic noise on every patch (hurts all).

Each level is run with the pure functions of ``lcseg_steps.clustering.levels`` and the
k-means drivers of ``lcseg_steps.clustering.kmeans`` (k = 2 at every level, attention fg
rule, fg_vote = 0.5: the pipeline defaults), then merged by vote (2 of 3), intersect and
union. The score is the foreground IoU over all patches of the dataset.

    python -m benchmarks.planted            # 200 images of ~30x40 patches, 6 noise levels
    python -m benchmarks.planted --quick    # 60 images of ~15x20 patches
    python -m benchmarks.planted --k-dataset 8   # more dataset-level clusters, same votes
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

# one BLAS thread: the benchmark shares small machines, and thin products gain nothing
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from lcseg_steps.clustering import levels as lv  # noqa: E402
from lcseg_steps.clustering.categories import pseudo_categories  # noqa: E402
from lcseg_steps.clustering.kmeans import kmeans_stream, l2_normalize, nearest_centroid  # noqa: E402

K = 2  # clusters per image, over the dataset and per pseudo-category (pipeline defaults)
FG_VOTE = 0.5
MAX_ITER = 30
LEVEL_NAMES = ("image", "dataset", "category")
MERGES = ("vote", "intersect", "union")


@dataclass
class Config:
    n_images: int = 200
    grid_h: tuple[int, int] = (26, 34)  # patch rows, inclusive range
    grid_w: tuple[int, int] = (34, 46)
    dim: int = 64
    # share of images per category: the last ones are small on purpose
    category_share: tuple[float, ...] = (0.45, 0.3, 0.17, 0.08)
    noise_levels: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


QUICK = Config(n_images=60, grid_h=(13, 17), grid_w=(17, 23))

# corruption strengths at noise t (t in [0, 1]); see the module docstring
ISO = (0.03, 0.09)  # per-coordinate sd: ISO[0] + ISO[1] * t
NUISANCE = 0.9  # amplitude of the per-image nuisance at t = 1 (signals have norm 1)
BG_SHIFT = (0.3, 1.0, 0.0, 0.6)  # per-category background drift at t = 1
CLS_NOISE = (0.05, 0.45)  # per-coordinate sd of CLS tokens around their category: a + b * t


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@dataclass
class Planted:
    """One synthetic shard: ``X`` ``(N, D)`` float16, ``offsets`` ``(n + 1,)`` int64,
    ``grids`` ``(n, 2)`` int32, ``attn`` ``(N,)`` float32, ``cls`` ``(n, D)`` float32,
    ``truth`` ``(N,)`` bool planted foreground, ``category`` ``(n,)`` int64."""

    X: np.ndarray
    offsets: np.ndarray
    grids: np.ndarray
    attn: np.ndarray
    cls: np.ndarray
    truth: np.ndarray
    category: np.ndarray


def make_planted(cfg: Config, t: float, seed: int) -> Planted:
    """Features at corruption strength ``t``; the same ``seed`` gives the same images,
    regions and directions at every ``t``, so noise levels are paired."""
    rng = np.random.default_rng(seed)
    D, G = cfg.dim, len(cfg.category_share)
    bg, *fg_dirs = _unit(rng.standard_normal((G + 1, D)))
    fg_dirs = np.asarray(fg_dirs)
    cls_dirs = _unit(rng.standard_normal((G, D)))
    # background drift toward the mean foreground (plus a category-specific part)
    shift_dirs = _unit(_unit(fg_dirs.sum(0)) + 0.5 * _unit(rng.standard_normal((G, D))))
    counts = np.maximum(1, np.round(np.asarray(cfg.category_share) * cfg.n_images)).astype(int)
    counts[0] += cfg.n_images - counts.sum()
    category = rng.permutation(np.repeat(np.arange(G), counts))

    xs, attn, truth, grids, cls = [], [], [], [], []
    for c in category:
        gh = int(rng.integers(cfg.grid_h[0], cfg.grid_h[1] + 1))
        gw = int(rng.integers(cfg.grid_w[0], cfg.grid_w[1] + 1))
        yy, xx = np.mgrid[0:gh, 0:gw]
        yy, xx = yy / gh, xx / gw
        # foreground: an ellipse well inside the image
        cy, cx = rng.uniform(0.35, 0.65, size=2)
        ay, ax = rng.uniform(0.15, 0.32, size=2)
        fg = (((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1).ravel()
        # nuisance: a random half-plane covering 30-60 % of the image
        theta = rng.uniform(0, 2 * np.pi)
        proj = (yy - 0.5) * np.cos(theta) + (xx - 0.5) * np.sin(theta)
        region = (proj > np.quantile(proj, rng.uniform(0.4, 0.7))).ravel()
        u = _unit(rng.standard_normal(D))
        own_fg = _unit(fg_dirs[c] + 0.25 * _unit(rng.standard_normal(D)))
        back = bg + BG_SHIFT[c % len(BG_SHIFT)] * t * shift_dirs[c]
        n = gh * gw
        x = np.where(fg[:, None], own_fg, back)
        x = x + NUISANCE * t * region[:, None] * u
        x = x + (ISO[0] + ISO[1] * t) * rng.standard_normal((n, D))
        a = np.exp(0.8 * fg + 0.4 * rng.standard_normal(n))
        xs.append(x)
        attn.append(a / a.sum())
        truth.append(fg)
        grids.append((gh, gw))
        cls.append(cls_dirs[c] + (CLS_NOISE[0] + CLS_NOISE[1] * t) * rng.standard_normal(D))
    sizes = [h * w for h, w in grids]
    return Planted(
        X=np.concatenate(xs).astype(np.float16),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        grids=np.asarray(grids, dtype=np.int32),
        attn=np.concatenate(attn).astype(np.float32),
        cls=np.asarray(cls, dtype=np.float32),
        truth=np.concatenate(truth),
        category=category.astype(np.int64),
    )


def run_levels(
    p: Planted, n_categories: int, seed: int, k_dataset: int = K
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The three level masks ``(N,)`` uint8 of one planted shard, as the pipeline computes
    them (all in memory: the benchmark is one shard), and the pseudo-category ``(n,)`` of
    each image."""
    img = lv.image_level(
        p.X, p.offsets, p.grids, p.attn, k_image=K, fg_rule="attention", max_iter=MAX_ITER,
        tol=1e-4, seed=seed, device="cpu", image_clusterer="kmeans",
    )  # fmt: skip
    image_fg = img["fg"]

    block = 16384

    def blocks():
        return (p.X[i : i + block] for i in range(0, len(p.X), block))

    fit = kmeans_stream(blocks, k_dataset, init_sample=200_000, max_iter=MAX_ITER, seed=seed,
                           device="cpu")  # fmt: skip
    lab = nearest_centroid(l2_normalize(p.X), fit.centroids)
    ds_fg, _ = lv.foreground_clusters(lv.vote_counts(lab, image_fg, k_dataset), FG_VOTE)

    cats = pseudo_categories(p.cls, n_categories, "kmeans", seed)
    rows_cat = np.repeat(cats, np.diff(p.offsets))
    Xs, gs = lv.sample_rows_by_group(
        [(lambda: p.X, rows_cat)], np.bincount(rows_cat, minlength=n_categories), 200_000, seed
    )
    C, _ = lv.fit_groups(Xs, gs, n_categories, K, max_iter=MAX_ITER, seed=seed, device="cpu")
    clab = nearest_centroid(l2_normalize(p.X), C, groups=rows_cat)
    counts = lv.vote_counts(rows_cat * K + clab, image_fg, n_categories * K)
    cat_fg, _ = lv.foreground_clusters(counts.reshape(n_categories, K, 2), FG_VOTE)
    masks = {
        "image": image_fg.astype(np.uint8),
        "dataset": ds_fg[lab].astype(np.uint8),
        "category": cat_fg[rows_cat, clab].astype(np.uint8),
    }
    return masks, cats


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU over all patches of ``(N,)`` masks."""
    m, t = mask.astype(bool), truth.astype(bool)
    return float((m & t).sum() / max((m | t).sum(), 1))


def evaluate(p: Planted, masks: dict[str, np.ndarray]) -> dict[str, float]:
    level_masks = {name: masks[name] for name in LEVEL_NAMES}
    out = {name: iou(m, p.truth) for name, m in level_masks.items()}
    for merge in MERGES:
        merged, _ = lv.merge_masks(level_masks, merge, 2)
        out[merge] = iou(merged, p.truth)
    # vote vs each level: patches it gains (level wrong, the other two right) and loses
    wrong = {n: m.astype(bool) != p.truth for n, m in level_masks.items()}
    for n in LEVEL_NAMES:
        a, b = (wrong[o] for o in LEVEL_NAMES if o != n)
        out[f"gain_{n}"] = int((wrong[n] & ~a & ~b).sum())
        out[f"loss_{n}"] = int((~wrong[n] & a & b).sum())
    return out


def _category_agreement(pred: np.ndarray, planted: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(planted, pred))


def verdict(rows: list[dict[str, float]], tie: float = 1e-3) -> str:
    """One paragraph: does the vote beat every single level at each noise level, and why
    not where it does not (from the gain/loss patch counts of :func:`evaluate`)."""
    beats, perfect, parts = [], [], []
    for r in rows:
        noise = f"{r['noise']:.1f}"
        if all(r["vote"] > r[n] + tie for n in LEVEL_NAMES):
            beats.append(noise)
            continue
        if all(r[n] >= 1 - tie for n in LEVEL_NAMES):
            perfect.append(noise)
            continue
        why = []
        for n in (n for n in LEVEL_NAMES if r["vote"] <= r[n] + tie):
            a, b = (o for o in LEVEL_NAMES if o != n)
            if min(r["vote"], r[n]) >= 1 - tie:
                why.append(f"it ties the {n} level (both perfect)")
                continue
            rel = "ties" if abs(r["vote"] - r[n]) <= tie else "trails"
            lost, won = r[f"loss_{n}"], r[f"gain_{n}"]
            msg = (
                f"it {rel} the {n} level ({r['vote']:.3f} vs {r[n]:.3f}): the {a} and {b} "
                f"levels are wrong together on {lost} patches where the {n} level is right "
                f"(lost by the vote) and right together on {won} where it is wrong (won)"
            )
            if rel == "trails" and won >= lost:
                msg += (
                    ", so the loss is in which patches, not how many: IoU counts a missed "
                    "foreground patch and a false one differently"
                )
            why.append(msg)
        parts.append(f"at noise {noise} " + "; ".join(why))
    out = [
        "The 2-of-3 vote beats every single level "
        + (f"at noise {', '.join(beats)}." if beats else "at no noise level.")
    ]
    if perfect:
        out.append(f"At noise {', '.join(perfect)} every level is already perfect (a tie).")
    if parts:
        out.append("Elsewhere " + "; ".join(parts) + ".")
    out.append(
        "A vote corrects a level only where the other two are right together, so it wins "
        "while the levels err on different patches (image level: images split along their "
        "nuisance; dataset level: drifted backgrounds; category level: misgrouped images) "
        "and loses to a level whose errors are rarer than the other two levels' shared errors."
    )
    return " ".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller images and dataset")
    ap.add_argument("--seed", type=int, default=0, help="data and k-means seed")
    ap.add_argument(
        "--k-dataset", type=int, default=K, help="dataset-level clusters (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    G = len(cfg.category_share)
    t0 = time.perf_counter()
    print(
        f"planted benchmark: {cfg.n_images} images of {cfg.grid_h}x{cfg.grid_w} patches, "
        f"D={cfg.dim}, {G} categories (image shares {list(cfg.category_share)}), seed "
        f"{args.seed}; k_dataset={args.k_dataset}, k=2 per image and per category, "
        f"fg_rule=attention, fg_vote={FG_VOTE}"
    )
    header = (
        f"{'noise':>5} | {'image':>6} {'dataset':>7} {'category':>8} | {'vote':>6} "
        f"{'intersect':>9} {'union':>6} | {'cat ARI':>7}"
    )
    print("\npatch IoU of the planted foreground\n" + header + "\n" + "-" * len(header))
    rows = []
    for t in cfg.noise_levels:
        p = make_planted(cfg, t, args.seed)
        masks, cats = run_levels(p, G, args.seed, args.k_dataset)
        r = {"noise": t, **evaluate(p, masks)}
        r["cat_ari"] = _category_agreement(cats, p.category)
        rows.append(r)
        print(
            f"{t:5.1f} | {r['image']:6.3f} {r['dataset']:7.3f} {r['category']:8.3f} | "
            f"{r['vote']:6.3f} {r['intersect']:9.3f} {r['union']:6.3f} | {r['cat_ari']:7.3f}",
            flush=True,
        )
    print("\n" + verdict(rows))
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return rows


if __name__ == "__main__":
    main()
