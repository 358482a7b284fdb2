"""Cosine (spherical) k-means, written once against an array namespace, and its drivers.

The algorithm is implemented once, on batches of problems ``(B, n, D)``, against an array
namespace ``xp`` (``numpy`` on CPU, ``cupy`` on a GPU when it imports); the drivers only
decide where the rows come from:

- :func:`cosine_kmeans`: one in-memory problem (a batch of one);
- :func:`streaming_kmeans`: one problem whose rows are streamed block by block, one pass per
  Lloyd iteration, memory bounded by a block;
- :func:`batched_kmeans`: many small independent problems (the ragged layout of the feature
  stores), padded into blocks of problems and solved together;
- :func:`grouped_kmeans`: one :func:`cosine_kmeans` per group value.

Definitions shared by every driver (our choices; the paper only says "cosine k-means"):

- Rows are L2-normalised in float32 (float16 storage is converted block by block). A row
  whose norm is ``<= eps`` is a *zero row*: it stays exactly zero (never NaN), is labelled
  0 (the argmax of an all-zero similarity row), is never a member of any cluster, never
  becomes a centroid, and counts in the objective with similarity 0.
- Initialisation is k-means++ with the squared chordal distance ``d^2 = |x - c|^2 =
  2 - 2 cos(x, c)`` (the usual D^2 weighting, on the unit sphere), one candidate per step.
  Its random numbers come from a counter-based hash of ``(seed, stream, draw)``, so problem
  ``i`` of the batched driver is exactly ``kmeans_plusplus(X_i, k, seed, stream=i)`` whatever
  the blocking, and the streaming sample is the same whatever the block sizes.
- A pass ``t = 0, 1, ...`` assigns every row to ``argmax(X @ C_t.T)`` and measures the
  objective ``J_t`` = mean over all rows (zero rows included) of the cosine similarity to the
  assigned centroid. It stops when ``t == max_iter`` or, for ``t >= 1`` with no empty
  cluster, when ``J_t - J_{t-1} <= tol * |J_{t-1}|`` (relative tolerance). Otherwise
  ``C_{t+1}`` = renormalised sum of the members of each cluster (a cluster whose members sum
  to ~0 keeps its centroid); each empty cluster is reseeded, in cluster order, with a distinct
  worst-fitting row (lowest similarity to its own centroid, ties by lowest row index).
- The result is ``C_t`` with the labels and objective of pass ``t``, so labels are always
  the argmax for the returned centroids; ``n_iter = t`` is the number of centroid updates.
  ``J_t`` is non-decreasing in exact arithmetic.

Arrays returned by the drivers are NumPy (moved to the host when computed on a GPU). On
CPU, float16 -> float32 conversion goes through torch when it imports (exact, and ~15x
faster than NumPy's cast); BLAS threads are left to the caller (on a busy machine an
OpenBLAS thread pool made these thin matrix products several times slower: consider
``threadpoolctl.threadpool_limits``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

EPS = 1e-12
_F32 = np.float32
_F64 = np.float64


@dataclass
class KMeansResult:
    """Outcome of one k-means problem.

    ``centroids`` ``(k, D)`` float32 unit rows; ``labels`` ``(n,)`` int64 or None (streaming
    driver unless asked); ``objective`` mean cosine similarity of rows to their centroid;
    ``n_iter`` number of centroid updates; ``history`` the objective of every pass.
    """

    centroids: np.ndarray
    labels: np.ndarray | None
    objective: float
    n_iter: int
    history: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# array namespace


def array_namespace(device: str = "auto"):
    """``numpy`` or ``cupy`` for ``device`` in ``"auto" | "cpu" | "cuda" | "gpu" | "cuda:N"``.

    ``"auto"`` gives cupy when it imports and sees a GPU, else numpy; asking for a GPU
    without a usable cupy is a RuntimeError.
    """
    if not isinstance(device, str):
        raise ValueError(f"device must be a string, got {device!r}")
    dev = device.strip().lower()
    if dev == "cpu":
        return np
    want_gpu = dev in ("cuda", "gpu") or dev.startswith("cuda:")
    if dev != "auto" and not want_gpu:
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    try:
        import cupy

        n_gpu = cupy.cuda.runtime.getDeviceCount()
    except ImportError as exc:
        if want_gpu:
            raise RuntimeError(
                f"device={device!r} needs cupy, which is not importable ({exc}); install "
                "the 'gpu' extra (cupy-cuda12x) or use device='cpu'"
            ) from exc
        return np
    except Exception as exc:  # cupy present but no driver / runtime
        if want_gpu:
            raise RuntimeError(f"device={device!r}: cupy cannot reach a GPU ({exc})") from exc
        return np
    if n_gpu < 1:
        if want_gpu:
            raise RuntimeError(f"device={device!r}: cupy imports but sees no GPU")
        return np
    if dev.startswith("cuda:"):
        cupy.cuda.Device(int(dev.split(":", 1)[1])).use()
    return cupy


def _to_host(a) -> np.ndarray:
    """A NumPy copy/view of an ``xp`` array (cupy arrays have ``.get()``)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


# ---------------------------------------------------------------------------------------
# normalisation and random numbers


_TORCH = None


def _torch():
    """torch if importable (cached), else False."""
    global _TORCH
    if _TORCH is None:
        try:
            import torch

            _TORCH = torch
        except ImportError:
            _TORCH = False
    return _TORCH


def _as_float32(a, xp, out=None):
    """A float32 copy of host or device array ``a`` in namespace ``xp`` (into ``out`` if given).

    NumPy's float16 -> float32 cast is scalar code (~1 ns/element); torch's is vectorised
    and exact, so on CPU it is used when importable. On a GPU the cast runs on the device
    after shipping the (smaller) storage dtype.
    """
    if xp is not np:
        a = xp.asarray(a)
        if out is None:
            return a.astype(_F32, copy=True)
        out[...] = a
        return out
    a = np.asarray(_to_host(a))
    if out is None:
        out = np.empty(a.shape, dtype=_F32)
    torch = _torch() if a.dtype == np.float16 and a.size >= 4096 else False
    if torch and a.flags.writeable and a.dtype.isnative:
        torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(a)))
    else:
        np.copyto(out, a, casting="unsafe")
    return out


def _normalize_inplace(X, xp, eps: float = EPS):
    """Scale the float32 rows of ``X`` ``(..., n, D)`` to unit norm in place.

    Returns ``valid`` ``(..., n)`` bool (norm > eps) and ``bad`` ``(..., n)`` bool (non-finite
    row). Rows with norm <= eps become exactly zero.
    """
    norm2 = xp.einsum("...d,...d->...", X, X)
    bad = ~xp.isfinite(norm2)
    norm = xp.sqrt(norm2)
    valid = norm > eps
    inv = xp.where(valid, 1.0 / xp.where(valid, norm, 1.0), 0.0).astype(_F32)
    X *= inv[..., None]
    return valid, bad


def l2_normalize(X, xp=np, eps: float = EPS):
    """Unit-norm float32 copy of ``X`` ``(..., D)``; rows with norm <= ``eps`` become zero.

    Any float dtype in, float32 out, in namespace ``xp``. Non-finite rows are not checked
    here (the drivers reject them).
    """
    Xf = _as_float32(X, xp)
    if Xf.ndim == 0:
        raise ValueError("l2_normalize: expected an array of rows (..., D), got a scalar")
    _normalize_inplace(Xf, xp, eps)
    return Xf


_M64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = x + _GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_uniforms(seed: int, streams, count: int, domain: int = 0) -> np.ndarray:
    """Uniforms in [0, 1) ``(len(streams), count)`` float64, a pure function of the inputs.

    Counter-based (hash of ``domain, seed, stream, draw``) so that a stream's numbers do not
    depend on which other streams are drawn alongside it (blocking, batching).
    """
    if not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    with np.errstate(over="ignore"):
        base = _splitmix64(
            np.array([(int(seed) & _M64) ^ (domain * 0x632BE59BD9B4E019 & _M64)], dtype=np.uint64)
        )
        s = np.asarray(streams, dtype=np.int64).astype(np.uint64).reshape(-1)
        key = _splitmix64(base ^ _splitmix64(s))
        draws = np.arange(1, count + 1, dtype=np.uint64) * _GAMMA
        z = _splitmix64(key[:, None] + draws[None, :])
    return (z >> np.uint64(11)).astype(_F64) * (1.0 / (1 << 53))


# ---------------------------------------------------------------------------------------
# the algorithm, on batches of problems (B, n, D)


def _nth_true(mask, r, xp):
    """Index of the ``r[b]``-th (0-based) True of each row of ``mask`` ``(B, n)``."""
    return xp.argmax(xp.cumsum(mask, axis=1) > r[:, None], axis=1)


def _kmeanspp(Xn, valid, u, xp):
    """Batched k-means++ (squared chordal distance) -> ``(B, k, D)`` float32.

    ``Xn`` ``(B, n, D)`` float32 unit or zero rows, ``valid`` ``(B, n)`` bool with at least
    ``k`` True per problem, ``u`` ``(B, k)`` float64 host uniforms (one per centre).
    """
    B, n, D = Xn.shape
    k = u.shape[1]
    u = xp.asarray(u)
    ar = xp.arange(B)
    C = xp.empty((B, k, D), dtype=_F32)
    chosen = xp.zeros((B, n), dtype=bool)
    n_valid = xp.sum(valid, axis=1)
    first = _nth_true(valid, xp.floor(u[:, 0] * n_valid).astype(np.int64), xp)
    d2 = None
    for j in range(k):
        if j == 0:
            idx = first
        else:
            cum = xp.cumsum(d2.astype(_F64), axis=1)
            total = cum[:, -1]
            # r < total strictly, so the first cum > r sits on a row with d2 > 0
            r = xp.minimum(u[:, j] * total, xp.nextafter(total, xp.zeros_like(total)))
            by_d2 = xp.sum(cum <= r[:, None], axis=1)
            # all remaining valid rows coincide with chosen centres: pick uniformly instead
            avail = valid & ~chosen
            n_avail = xp.sum(avail, axis=1)
            by_rank = _nth_true(avail, xp.floor(u[:, j] * n_avail).astype(np.int64), xp)
            idx = xp.where(total > 0, by_d2, by_rank)
        C[:, j] = Xn[ar, idx]
        chosen[ar, idx] = True
        if j + 1 < k:
            cos = xp.matmul(Xn, C[:, j, :, None])[..., 0]
            dj = xp.maximum(2.0 - 2.0 * cos, 0.0).astype(_F32)
            dj = xp.where(valid & ~chosen, dj, 0.0).astype(_F32)
            d2 = dj if d2 is None else xp.minimum(d2, dj)
    return C


# OpenBLAS runs an (n, D) @ (D, k) product ~4x slower for k = 2 than k matrix-vector
# products, which are as fast per column as k = 1; from k ~ 4 on the matrix product wins.
_PER_COLUMN_K = 3


def _assign(Xn, C, xp):
    """Labels ``(B, n)`` int64 = argmax cosine, and that similarity ``(B, n)`` float32.

    ``Xn`` ``(B, n, D)`` and ``C`` ``(B, k, D)`` float32; ties go to the lowest cluster.
    """
    k = C.shape[1]
    if k <= _PER_COLUMN_K:
        S = xp.concatenate([xp.matmul(Xn, C[:, j, :, None]) for j in range(k)], axis=2)
    else:
        S = xp.matmul(Xn, xp.swapaxes(C, 1, 2))
    return xp.argmax(S, axis=2).astype(np.int64), xp.max(S, axis=2)


def _membership(labels, valid, k: int, xp):
    """Transposed one-hot membership ``(B, k, n)`` float32 (zero rows are not members)."""
    return ((labels[:, None, :] == xp.arange(k)[None, :, None]) & valid[:, None, :]).astype(_F32)


def _member_sums(onehot_t, Xn, xp):
    """Per-cluster sums of member rows ``(B, k, D)`` float32, as one-hot^T @ X."""
    k = onehot_t.shape[1]
    if k <= _PER_COLUMN_K:
        return xp.concatenate([xp.matmul(onehot_t[:, j : j + 1], Xn) for j in range(k)], axis=1)
    return xp.matmul(onehot_t, Xn)


def _renormalize(sums64, C_old, xp, eps: float = EPS):
    """Unit centroids ``(B, k, D)`` float32 from float64 member sums; ~0 sums keep ``C_old``."""
    norm = xp.sqrt(xp.sum(sums64 * sums64, axis=-1))
    ok = norm > eps
    C = sums64 / xp.where(ok, norm, 1.0)[..., None]
    return xp.where(ok[..., None], C.astype(_F32), C_old).astype(_F32)


def _lowest(sim: np.ndarray, valid: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``m`` lowest ``sim`` among ``valid`` rows (host arrays).

    Sorted by (similarity, index), so the choice is unique and merging the candidates of
    consecutive blocks gives the same answer as selecting over all rows at once.
    """
    cand = np.flatnonzero(valid)
    s = sim[cand]
    if len(cand) > m:
        kth = np.partition(s, m - 1)[m - 1]
        keep = s <= kth
        cand, s = cand[keep], s[keep]
    order = np.lexsort((cand, s))[:m]
    return cand[order], s[order]


def _stop(t: int, max_iter: int, J, J_prev, tol: float, n_empty):
    """Per-problem stopping rule (arrays ``(B,)``): see the module docstring."""
    J = np.asarray(J, dtype=_F64)
    if t >= max_iter:
        return np.ones(J.shape, dtype=bool)
    if t == 0:
        return np.zeros(J.shape, dtype=bool)
    return (np.asarray(n_empty) == 0) & (J - J_prev <= tol * np.abs(J_prev))


# ---------------------------------------------------------------------------------------
# argument checks


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_iter(max_iter, tol) -> tuple[int, float]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return int(max_iter), float(tol)


def _check_rows(X, what: str) -> np.ndarray:
    """``X`` must be a real 2-D ``(n, D)`` array with ``D >= 1``."""
    shape = getattr(X, "shape", None)
    if shape is None:
        X = np.asarray(X)
        shape = X.shape
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"{what}: expected a 2-D array of rows (n, D) with D >= 1, got {shape}")
    kind = np.dtype(X.dtype).kind
    if kind not in "fiu":
        raise ValueError(f"{what}: expected real numbers, got dtype {X.dtype}")
    return X


def _check_count(k: int, n: int, n_valid: int, what: str) -> None:
    if k > n:
        raise ValueError(f"{what}: k={k} clusters but only {n} points")
    if k > n_valid:
        raise ValueError(
            f"{what}: k={k} clusters but only {n_valid} non-zero rows (of {n} points); "
            "zero rows cannot be cluster centres"
        )


def _check_init(init, k: int, D: int, xp, what: str):
    """Explicit initial centroids -> unit float32 ``(k, D)`` in ``xp``."""
    C = np.asarray(_to_host(init))
    if C.shape != (k, D):
        raise ValueError(f"{what}: init must have shape (k, D) = {(k, D)}, got {C.shape}")
    C = l2_normalize(C.astype(_F64), np, eps=EPS)
    norms = np.linalg.norm(C, axis=1)
    if not np.all(np.isfinite(C)) or np.any(norms == 0):
        raise ValueError(f"{what}: init rows must be finite and non-zero")
    return xp.asarray(C)


def _init_kind(init, what: str) -> str:
    if isinstance(init, str):
        if init != "k-means++":
            raise ValueError(f"{what}: init must be 'k-means++' or an array, got {init!r}")
        return "k-means++"
    return "array"


# ---------------------------------------------------------------------------------------
# single problem: k-means++ and the Lloyd loop over a sequence of row blocks


def kmeans_plusplus(X, k: int, seed: int, xp=np, *, stream: int = 0):
    """Seeded cosine k-means++ centres ``(k, D)`` float32 (unit rows, in ``xp``).

    ``X`` ``(n, D)`` any real dtype, normalised here; zero rows are never chosen. ``stream``
    selects an independent random stream for the same seed (problem ``i`` of
    :func:`batched_kmeans` uses ``stream=i``).
    """
    k = _check_k(k)
    X = _check_rows(X, "kmeans_plusplus")
    Xn = _as_float32(X, xp)
    valid, bad = _normalize_inplace(Xn, xp)
    if bool(xp.any(bad)):
        raise ValueError("kmeans_plusplus: X has non-finite values")
    _check_count(k, X.shape[0], int(xp.sum(valid)), "kmeans_plusplus")
    u = seeded_uniforms(seed, [stream], k)
    return _kmeanspp(Xn[None], valid[None], u, xp)[0]


@dataclass
class _Pass:
    """Accumulated statistics of one pass over all rows for fixed centroids."""

    n: int
    n_valid: int
    sim_sum: float
    sums: object  # (k, D) float64, xp
    counts: np.ndarray  # (k,) int64
    worst: np.ndarray  # (<=k, D) float32 rows of lowest similarity, by (sim, row index)
    labels: np.ndarray | None


def _run_pass(blocks: Iterable[tuple[object, object]], C, k: int, xp, want_labels: bool) -> _Pass:
    """Assign every row of ``blocks`` (pairs of unit rows ``(m, D)`` and valid ``(m,)``)."""
    D = C.shape[1]
    sums = xp.zeros((k, D), dtype=_F64)
    counts = np.zeros(k, dtype=np.int64)
    sim_sum, n = 0.0, 0
    w_sim = np.empty(0, dtype=_F32)
    w_idx = np.empty(0, dtype=np.int64)
    w_vec = np.empty((0, D), dtype=_F32)
    labels = []
    for Xn, valid in blocks:
        lab, sim = _assign(Xn[None], C[None], xp)
        onehot = _membership(lab, valid[None], k, xp)
        sums += _member_sums(onehot, Xn[None], xp)[0].astype(_F64)
        counts += _to_host(xp.sum(onehot[0], axis=1)).astype(np.int64)
        sim_sum += float(xp.sum(sim, dtype=_F64))
        idx, vals = _lowest(_to_host(sim[0]), _to_host(valid), k)
        # keep the k worst rows seen so far, ordered by (similarity, global row index)
        w_sim = np.concatenate([w_sim, vals])
        w_idx = np.concatenate([w_idx, idx + n])
        w_vec = np.concatenate([w_vec, _to_host(Xn[xp.asarray(idx)])])
        keep = np.lexsort((w_idx, w_sim))[:k]
        w_sim, w_idx, w_vec = w_sim[keep], w_idx[keep], w_vec[keep]
        if want_labels:
            labels.append(_to_host(lab[0]))
        n += Xn.shape[0]
    return _Pass(
        n=n,
        n_valid=int(counts.sum()),
        sim_sum=sim_sum,
        sums=sums,
        counts=counts,
        worst=w_vec,
        labels=np.concatenate(labels) if want_labels and labels else None,
    )


def _lloyd(
    run_pass: Callable[[object, bool], _Pass],
    C,
    k: int,
    max_iter: int,
    tol: float,
    xp,
    want_labels: bool,
    log: Callable[[str], None] | None,
    what: str,
) -> KMeansResult:
    """The Lloyd loop of a single problem; ``run_pass(C, want_labels)`` does one pass."""
    history: list[float] = []
    J_prev = 0.0
    n_first = None
    for t in range(max_iter + 1):
        p = run_pass(C, want_labels)
        if n_first is None:
            n_first = p.n
            _check_count(k, p.n, p.n_valid, what)
        elif p.n != n_first:
            raise ValueError(f"{what}: pass {t} saw {p.n} rows, the first pass saw {n_first}")
        J = p.sim_sum / p.n
        history.append(J)
        empty = np.flatnonzero(p.counts == 0)
        if log is not None:
            log(f"{what}: pass {t} objective {J:.6f} over {p.n} rows, {len(empty)} empty")
        if _stop(t, max_iter, [J], [J_prev], tol, [len(empty)])[0]:
            return KMeansResult(
                centroids=_to_host(C).astype(_F32),
                labels=p.labels,
                objective=float(J),
                n_iter=t,
                history=history,
            )
        C = _renormalize(p.sums[None], C[None], xp)[0]
        if len(empty):
            C[xp.asarray(empty)] = xp.asarray(p.worst[: len(empty)])
        J_prev = J
    raise AssertionError("unreachable: the last pass always stops")


def cosine_kmeans(
    X,
    k: int,
    *,
    init="k-means++",
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
) -> KMeansResult:
    """Cosine k-means of the rows of ``X`` ``(n, D)`` (any real dtype) held in memory.

    ``init`` is ``"k-means++"`` (seeded) or unit-normalisable centroids ``(k, D)``. Returns
    NumPy ``centroids`` ``(k, D)`` float32 and ``labels`` ``(n,)`` int64.
    """
    k = _check_k(k)
    max_iter, tol = _check_iter(max_iter, tol)
    X = _check_rows(X, "cosine_kmeans")
    kind = _init_kind(init, "cosine_kmeans")
    xp = array_namespace(device)
    Xn = _as_float32(X, xp)
    valid, bad = _normalize_inplace(Xn, xp)
    if bool(xp.any(bad)):
        rows = np.flatnonzero(_to_host(bad))
        raise ValueError(f"cosine_kmeans: non-finite values in rows {rows[:5].tolist()}...")
    _check_count(k, X.shape[0], int(xp.sum(valid)), "cosine_kmeans")
    if kind == "array":
        C = _check_init(init, k, X.shape[1], xp, "cosine_kmeans")
    else:
        C = _kmeanspp(Xn[None], valid[None], seeded_uniforms(seed, [0], k), xp)[0]

    def run_pass(C, want_labels):
        return _run_pass([(Xn, valid)], C, k, xp, want_labels)

    return _lloyd(run_pass, C, k, max_iter, tol, xp, True, None, "cosine_kmeans")


# ---------------------------------------------------------------------------------------
# streaming driver

_SAMPLE_DOMAIN = 1  # random stream of the init sample, separate from k-means++


def _checked_blocks(blocks: Callable[[], Iterable[np.ndarray]], what: str) -> Iterator[np.ndarray]:
    """Iterate ``blocks()`` checking every block is a 2-D real array with the same D."""
    D = None
    for i, b in enumerate(blocks()):
        b = _check_rows(b, f"{what}: block {i}")
        if D is None:
            D = b.shape[1]
        elif b.shape[1] != D:
            raise ValueError(f"{what}: block {i} has D={b.shape[1]}, earlier blocks D={D}")
        if b.shape[0]:
            yield b


def _init_sample(
    blocks: Callable[[], Iterable[np.ndarray]], max_points: int | None, seed: int, what: str
) -> np.ndarray:
    """Host float32 ``(m, D)`` uniform sample of at most ``max_points`` rows, in row order.

    Bottom-``max_points`` sampling on hashed per-row keys: a seeded uniform sample without
    replacement, independent of how the rows are split into blocks, with memory bounded
    by the sample plus one block. ``None`` (or ``max_points >= n``) keeps every row.
    """
    if max_points is None:
        parts = [_as_float32(b, np) for b in _checked_blocks(blocks, what)]
        if not parts:
            raise ValueError(f"{what}: blocks() yielded no rows")
        return np.concatenate(parts)
    if isinstance(max_points, bool) or not isinstance(max_points, numbers.Integral):
        raise ValueError(f"{what}: max_points must be a positive integer or None")
    if max_points < 1:
        raise ValueError(f"{what}: max_points must be >= 1, got {max_points}")
    buf = keys = rows = None
    filled = n = 0
    for b in _checked_blocks(blocks, what):
        m = b.shape[0]
        if buf is None:
            buf = np.empty((max_points, b.shape[1]), dtype=_F32)
            keys = np.empty(max_points, dtype=_F64)
            rows = np.empty(max_points, dtype=np.int64)
        bkeys = seeded_uniforms(seed, np.arange(n, n + m), 1, domain=_SAMPLE_DOMAIN)[:, 0]
        if filled + m <= max_points:
            _as_float32(b, np, out=buf[filled : filled + m])
            keys[filled : filled + m] = bkeys
            rows[filled : filled + m] = np.arange(n, n + m)
            filled += m
        else:
            allkeys = np.concatenate([keys[:filled], bkeys])
            keep = np.argpartition(allkeys, max_points - 1)[:max_points]
            keep_old, keep_new = keep[keep < filled], keep[keep >= filled] - filled
            free = np.ones(max_points, dtype=bool)
            free[keep_old] = False
            slots = np.flatnonzero(free)
            buf[slots] = _as_float32(b[keep_new], np)
            keys[slots] = bkeys[keep_new]
            rows[slots] = n + keep_new
            filled = max_points
        n += m
    if buf is None:
        raise ValueError(f"{what}: blocks() yielded no rows")
    return buf[:filled][np.argsort(rows[:filled], kind="stable")]


def streaming_kmeans(
    blocks: Callable[[], Iterable[np.ndarray]],
    k: int,
    *,
    init="k-means++",
    max_points: int | None = None,
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    return_labels: bool = False,
    log: Callable[[str], None] | None = None,
) -> KMeansResult:
    """Cosine k-means over rows streamed from ``blocks()``, one pass per Lloyd iteration.

    ``blocks()`` must return a fresh iterable of ``(n_i, D)`` float16/float32 arrays each call,
    in the same order every time. Blocks are converted to float32 and normalised one at a
    time, so memory is bounded by a block (plus ``(n,)`` labels if ``return_labels``).
    k-means++ runs on a seeded uniform sample of at most ``max_points`` rows (None: all rows,
    gathered as float32 for the init only). Same result as :func:`cosine_kmeans` on the
    concatenated rows, up to float32 rounding of per-block sums.
    """
    what = "streaming_kmeans"
    k = _check_k(k)
    max_iter, tol = _check_iter(max_iter, tol)
    if not callable(blocks):
        raise ValueError(f"{what}: blocks must be a callable returning an iterable of blocks")
    kind = _init_kind(init, what)
    xp = array_namespace(device)
    if kind == "array":
        C = None
    else:
        sample = _init_sample(blocks, max_points, seed, what)
        Sn = xp.asarray(sample)
        valid, bad = _normalize_inplace(Sn, xp)
        if bool(xp.any(bad)):
            raise ValueError(f"{what}: non-finite values in the data")
        n_valid = int(xp.sum(valid))
        if k > n_valid:
            scope = "" if max_points is None else f" in the init sample of max_points={max_points}"
            raise ValueError(
                f"{what}: k={k} clusters but only {n_valid} non-zero rows{scope} "
                f"(of {sample.shape[0]} rows)"
            )
        C = _kmeanspp(Sn[None], valid[None], seeded_uniforms(seed, [0], k), xp)[0]
        del sample, Sn, valid

    def prepared():
        for i, b in enumerate(_checked_blocks(blocks, what)):
            Xn = _as_float32(b, xp)
            valid, bad = _normalize_inplace(Xn, xp)
            if bool(xp.any(bad)):
                raise ValueError(f"{what}: non-finite values in block {i}")
            yield Xn, valid

    def run_pass(C, want_labels):
        return _run_pass(prepared(), C, k, xp, want_labels)

    if C is None:
        # D is only known from the data
        first = next(iter(_checked_blocks(blocks, what)), None)
        if first is None:
            raise ValueError(f"{what}: blocks() yielded no rows")
        C = _check_init(init, k, first.shape[1], xp, what)
    return _lloyd(run_pass, C, k, max_iter, tol, xp, return_labels, log, what)


# ---------------------------------------------------------------------------------------
# batched driver


def _check_offsets(offsets, N: int) -> np.ndarray:
    off = np.asarray(offsets)
    if off.ndim != 1 or off.shape[0] < 1 or off.dtype.kind not in "iu":
        raise ValueError(
            f"batched_kmeans: offsets must be a 1-D integer array (problems + 1,), got "
            f"shape {off.shape} dtype {off.dtype}"
        )
    off = off.astype(np.int64)
    if off[0] != 0 or off[-1] != N:
        raise ValueError(
            f"batched_kmeans: offsets must start at 0 and end at len(X)={N}, "
            f"got {off[0]}..{off[-1]}"
        )
    if np.any(np.diff(off) < 0):
        i = int(np.flatnonzero(np.diff(off) < 0)[0])
        raise ValueError(f"batched_kmeans: offsets decrease at problem {i}")
    return off


def batched_kmeans(
    X: np.ndarray,
    offsets: np.ndarray,
    k: int,
    *,
    init="k-means++",
    max_iter: int = 10,
    tol: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    block_problems: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Many independent cosine k-means problems on ragged rows.

    Problem ``i`` is rows ``offsets[i]:offsets[i + 1]`` of ``X`` ``(N, D)`` (float16/32; any
    array whose row slices give NumPy arrays, e.g. a Zarr array, is read one block at a time).
    Problems are ordered by size and solved ``block_problems`` at a time, zero-padded to
    the largest in the block, running all iterations of a block before the next; converged
    problems are dropped from the block. The block should fit in cache: 64 problems of
    900 x 384 float32 are 88 MB; 8 were ~1.8x faster than 64 on a 32 MB L3. ``init`` is
    ``"k-means++"`` (problem ``i`` uses ``kmeans_plusplus(X_i, k, seed, stream=i)``) or
    ``(n_problems, k, D)`` centroids.
    Each problem follows exactly the rules of :func:`cosine_kmeans`, so results do not
    depend on ``block_problems`` (up to float rounding).

    Returns ``labels`` ``(N,)`` int64, ``centroids`` ``(n_problems, k, D)`` float32,
    ``objective`` ``(n_problems,)`` float64 and ``n_iter`` ``(n_problems,)`` int64.
    """
    what = "batched_kmeans"
    k = _check_k(k)
    max_iter, tol = _check_iter(max_iter, tol)
    X = _check_rows(X, what)
    N, D = X.shape
    off = _check_offsets(offsets, N)
    if isinstance(block_problems, bool) or not isinstance(block_problems, numbers.Integral):
        raise ValueError(f"{what}: block_problems must be a positive integer")
    if block_problems < 1:
        raise ValueError(f"{what}: block_problems must be >= 1, got {block_problems}")
    sizes = np.diff(off)
    P = len(sizes)
    small = np.flatnonzero(sizes < k)
    if len(small):
        i = int(small[0])
        raise ValueError(
            f"{what}: problem {i} has {sizes[i]} rows, fewer than k={k} "
            f"({len(small)} problem(s) too small)"
        )
    kind = _init_kind(init, what)
    if kind == "array":
        init_arr = np.asarray(_to_host(init))
        if init_arr.shape != (P, k, D):
            raise ValueError(
                f"{what}: init must have shape (n_problems, k, D) = {(P, k, D)}, "
                f"got {init_arr.shape}"
            )
    xp = array_namespace(device)

    labels_out = np.zeros(N, dtype=np.int64)
    C_out = np.zeros((P, k, D), dtype=_F32)
    J_out = np.zeros(P, dtype=_F64)
    it_out = np.zeros(P, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    for start in range(0, P, int(block_problems)):
        ids = order[start : start + int(block_problems)]
        if kind == "array":
            C0 = xp.stack([_check_init(init_arr[i], k, D, xp, f"{what}: problem {i}") for i in ids])
        else:
            C0 = None
        lab, C, J, it = _solve_block(X, off, ids, k, C0, max_iter, tol, seed, xp)
        for b, i in enumerate(ids):
            labels_out[off[i] : off[i + 1]] = lab[b, : sizes[i]]
        C_out[ids], J_out[ids], it_out[ids] = C, J, it
    return labels_out, C_out, J_out, it_out


def _solve_block(X, off, ids, k, C0, max_iter, tol, seed, xp):
    """Solve problems ``ids`` together; host results ``(B, n_pad)``, ``(B, k, D)``, ``(B,)``x2."""
    what = "batched_kmeans"
    sizes = (off[ids + 1] - off[ids]).astype(np.int64)
    B, n_pad, D = len(ids), int(sizes.max()), X.shape[1]
    # on CPU fill float32 directly; on GPU ship the storage dtype and convert on device
    host = np.empty((B, n_pad, D), dtype=_F32 if xp is np else X.dtype)
    for b, i in enumerate(ids):
        host[b, sizes[b] :] = 0
        if xp is np:
            _as_float32(X[off[i] : off[i + 1]], np, out=host[b, : sizes[b]])
        else:
            host[b, : sizes[b]] = X[off[i] : off[i + 1]]
    Xn = xp.asarray(host).astype(_F32, copy=False)
    valid, bad = _normalize_inplace(Xn, xp)
    bad_rows = _to_host(xp.any(bad, axis=1))
    if bad_rows.any():
        raise ValueError(f"{what}: non-finite values in problem {int(ids[np.argmax(bad_rows)])}")
    n_valid = _to_host(xp.sum(valid, axis=1))
    if np.any(n_valid < k):
        b = int(np.flatnonzero(n_valid < k)[0])
        raise ValueError(
            f"{what}: problem {int(ids[b])} has {int(n_valid[b])} non-zero rows "
            f"(of {int(sizes[b])}), fewer than k={k}"
        )
    C = C0 if C0 is not None else _kmeanspp(Xn, valid, seeded_uniforms(seed, ids, k), xp)

    lab_out = np.zeros((B, n_pad), dtype=np.int64)
    C_out = np.zeros((B, k, D), dtype=_F32)
    J_out = np.zeros(B, dtype=_F64)
    it_out = np.zeros(B, dtype=np.int64)
    live = np.arange(B)  # block positions still iterating
    J_prev = np.zeros(B, dtype=_F64)
    sizes_f = sizes.astype(_F64)
    for t in range(max_iter + 1):
        labels, sim = _assign(Xn, C, xp)
        J = _to_host(xp.sum(sim, axis=1, dtype=_F64)) / sizes_f[live]
        onehot = _membership(labels, valid, k, xp)
        counts = _to_host(xp.sum(onehot, axis=2))
        n_empty = (counts == 0).sum(axis=1)
        stop = _stop(t, max_iter, J, J_prev[live], tol, n_empty)
        if stop.any():
            done = live[stop]
            lab_out[done] = _to_host(labels[xp.asarray(np.flatnonzero(stop))])
            C_out[done] = _to_host(C[xp.asarray(np.flatnonzero(stop))])
            J_out[done], it_out[done] = J[stop], t
        if stop.all():
            break
        J_prev[live] = J
        if stop.any():
            # drop finished problems before the update: they need no new centroids
            go = ~stop
            keep = xp.asarray(np.flatnonzero(go))
            Xn, valid, C, onehot, sim = Xn[keep], valid[keep], C[keep], onehot[keep], sim[keep]
            live, counts = live[go], counts[go]
        C = _renormalize(_member_sums(onehot, Xn, xp).astype(_F64), C, xp)
        for b in np.flatnonzero((counts == 0).any(axis=1)):
            empty = np.flatnonzero(counts[b] == 0)
            worst, _ = _lowest(_to_host(sim[b]), _to_host(valid[b]), len(empty))
            C[b, xp.asarray(empty)] = Xn[b, xp.asarray(worst)]
    return lab_out, C_out, J_out, it_out


# ---------------------------------------------------------------------------------------
# grouped driver


def grouped_kmeans(X, groups: np.ndarray, k: int, **kw) -> dict[int, KMeansResult]:
    """One :func:`cosine_kmeans` per distinct value of ``groups`` ``(n,)`` int.

    ``X`` ``(n, D)``; keyword arguments go to :func:`cosine_kmeans`, except that ``init`` may
    also be a mapping from group value to ``(k, D)`` centroids. Result keys are the group
    values (ascending); each result's labels index that group's rows in their original
    order (``X[groups == g]``).
    """
    X = _check_rows(X, "grouped_kmeans")
    g = np.asarray(groups)
    if g.shape != (X.shape[0],) or g.dtype.kind not in "iu":
        raise ValueError(
            f"grouped_kmeans: groups must be an integer array of shape ({X.shape[0]},), "
            f"got shape {g.shape} dtype {g.dtype}"
        )
    init = kw.pop("init", "k-means++")
    out: dict[int, KMeansResult] = {}
    for value in np.unique(g):
        gi = int(value)
        gin = init[gi] if isinstance(init, Mapping) else init
        try:
            out[gi] = cosine_kmeans(X[g == value], k, init=gin, **kw)
        except ValueError as exc:
            raise ValueError(f"grouped_kmeans: group {gi}: {exc}") from exc
    return out
