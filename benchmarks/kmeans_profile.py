"""Quick profile of lcseg's cosine k-means against sklearn (not the official harness).

Two ratios, each the median of ``--repeats`` timings, with the same thread limit on both
sides (threadpoolctl for OpenBLAS / OpenMP, ``torch.set_num_threads`` for the float16
conversion):

- batched: ``P`` problems of ~900 x 384 float16 rows, k=2, ``max_iter`` 10, ours
  (``kmeans_ranges``, float16 in, conversion and normalisation included) vs a loop of
  sklearn ``KMeans(n_clusters=2, n_init=1, max_iter=10, algorithm="lloyd", init=C0)`` on
  pre-normalised float32 rows (normalisation not timed), from the same initial centroids;
- streaming: ``N`` x 384 float16 rows, k=2, 20 iterations, ``kmeans_stream`` over row
  blocks vs sklearn lloyd on the whole float32 normalised array, same init; the objectives
  are compared (mean cosine to the assigned, renormalised centroid).

    python -m benchmarks.kmeans_profile                 # full sizes (1,449 images; 1M rows)
    python -m benchmarks.kmeans_profile --quick         # 200 images; 200k rows
    python -m benchmarks.kmeans_profile --only batched --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

D = 384


def synthetic_images(rng, n_images, D, dtype=np.float16, noise_scale=1.5):
    """Ragged per-image features with a fg/bg split: ``X`` ``(N, D)``, ``offsets``.

    Features share a large common direction (as attention keys do) plus an image-specific
    fg or bg direction and noise, so k=2 has a real but imperfect split.
    """
    sizes = rng.integers(800, 1001, n_images)
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    common = rng.standard_normal(D).astype(np.float32) * 2
    noise = rng.standard_normal((1 << 18, D)).astype(np.float32)
    X = np.empty((off[-1], D), dtype=dtype)
    for i in range(n_images):
        n = sizes[i]
        fg_dir, bg_dir = rng.standard_normal((2, D)).astype(np.float32)
        fg = rng.random(n) < rng.uniform(0.2, 0.6)
        start = rng.integers(0, noise.shape[0] - n)
        rows = (
            common + np.where(fg[:, None], fg_dir, bg_dir) + noise_scale * noise[start : start + n]
        )
        X[off[i] : off[i + 1]] = rows
    return X, off


def unit(a):
    a = np.asarray(a, dtype=np.float32)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.where(n > 0, a / np.where(n > 0, n, 1), 0).astype(np.float32)


def cosine_objective(Xn, labels, C):
    """Mean cosine of unit rows to the (renormalised) centroid of their label."""
    C = unit(C)
    return float(np.einsum("ij,ij->i", Xn, C[labels], dtype=np.float64).mean())


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


def bench_batched(args, km):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    X, off = synthetic_images(rng, args.images, D, noise_scale=args.noise)
    P = len(off) - 1
    C0 = np.stack([km.kmeans_plusplus(X[off[i] : off[i + 1]], 2, 0, stream=i) for i in range(P)])
    print(f"batched: {P} problems, {X.shape[0]} rows x {D} float16, k=2, max_iter=10")

    def ours(init):
        return km.kmeans_ranges(
            X, 2, offsets=off, init=init, max_iter=10, tol=args.tol, seed=0, device="cpu"
        )

    t_ours, ts, res = median_time(lambda: ours(C0), args.repeats)
    lab, it = res.labels, res.n_iter
    print(
        f"  ours (init array, tol={args.tol}): {t_ours:.3f} s  runs {np.round(ts, 3).tolist()}"
        f"  mean n_iter {it.mean():.2f}"
    )
    t_pp, ts, _ = median_time(lambda: ours("k-means++"), args.repeats)
    print(f"  ours (k-means++ init inside):   {t_pp:.3f} s  runs {np.round(ts, 3).tolist()}")

    Xn = [unit(X[off[i] : off[i + 1]]) for i in range(P)]
    n_sk = min(P, args.sk_images)

    def sk_loop():
        res = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(n_sk):
                m = KMeans(n_clusters=2, n_init=1, max_iter=10, algorithm="lloyd", init=C0[i])
                res.append(m.fit(Xn[i]))
        return res

    t_sk, ts, res = median_time(sk_loop, args.repeats)
    t_sk *= P / n_sk
    print(
        f"  sklearn loop ({n_sk} of {P} images, scaled): {t_sk:.3f} s  "
        f"runs {np.round(ts, 3).tolist()}  mean n_iter {np.mean([r.n_iter_ for r in res]):.2f}"
    )
    agree = np.mean(
        [
            max(
                np.mean(r.labels_ == lab[off[i] : off[i + 1]]),
                np.mean(r.labels_ != lab[off[i] : off[i + 1]]),
            )
            for i, r in enumerate(res)
        ]
    )
    print(f"  label agreement with sklearn: {agree:.5f}")
    print(f"  RATIO batched: {t_sk / t_ours:.1f}x (init array), {t_sk / t_pp:.1f}x (k-means++)")
    return t_sk / t_ours


def bench_streaming(args, km):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    N = args.rows
    X, _ = synthetic_images(rng, max(1, N // 900), D, noise_scale=args.noise)
    X = X[:N]
    N = X.shape[0]
    C0 = km.kmeans_plusplus(X[:: max(1, N // 100_000)], 2, 0)
    block = args.stream_block
    print(f"streaming: {N} x {D} float16, k=2, 20 iterations, blocks of {block} rows")

    def blocks():
        return (X[i : i + block] for i in range(0, N, block))

    def ours():
        return km.kmeans_stream(blocks, 2, init=C0, max_iter=20, tol=args.tol, device="cpu")

    t_ours, ts, r = median_time(ours, args.repeats)
    print(
        f"  ours: {t_ours:.3f} s  runs {np.round(ts, 3).tolist()}  n_iter {r.n_iter}"
        f"  objective {r.objective:.7f}"
    )
    Xn = unit(X)

    def sk():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return KMeans(2, n_init=1, max_iter=20, algorithm="lloyd", init=C0, tol=0).fit(Xn)

    t_sk, ts, m = median_time(sk, max(1, args.repeats - 1))
    J_sk = cosine_objective(Xn, m.labels_, m.cluster_centers_)
    J_ours = cosine_objective(Xn, r.labels, r.centroids)
    rel = abs(J_ours - J_sk) / abs(J_sk)
    print(
        f"  sklearn: {t_sk:.3f} s  runs {np.round(ts, 3).tolist()}  n_iter {m.n_iter_}"
        f"  objective {J_sk:.7f}  (ours recomputed {J_ours:.7f}, rel diff {rel:.2e})"
    )
    print(f"  RATIO streaming: {t_sk / t_ours:.2f}x")
    return t_sk / t_ours


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200 images, 200k streamed rows")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--sk-images", type=int, default=300, help="sklearn loop sample (scaled)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch threads, both sides")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tol", type=float, default=0.0, help="our tol (0: always max_iter passes)")
    p.add_argument("--stream-block", type=int, default=65536)
    p.add_argument(
        "--noise", type=float, default=1.5, help="noise scale (higher: slower convergence)"
    )
    p.add_argument("--only", choices=["batched", "streaming"], default=None)
    args = p.parse_args(argv)
    args.images = args.images or (200 if args.quick else 1449)
    args.rows = args.rows or (200_000 if args.quick else 1_000_000)

    from threadpoolctl import threadpool_limits

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    from lcseg_steps.clustering import kmeans as km

    print(f"threads: {args.threads} (threadpoolctl limits + torch), pid {os.getpid()}")
    with threadpool_limits(args.threads):
        if args.only in (None, "batched"):
            bench_batched(args, km)
        if args.only in (None, "streaming"):
            bench_streaming(args, km)


if __name__ == "__main__":
    main()
