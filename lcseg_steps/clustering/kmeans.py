"""Cosine (spherical) k-means: one Lloyd loop over row sources, written against the array API.

The loop (:func:`_lloyd`) runs ``B`` problems at once on arrays ``(B, m, D)`` in the namespace
of its input (NumPy, CuPy, torch, ``array_api_strict``). The row sources:

- :func:`kmeans` ``(X, k)``: one problem held in memory;
- ``offsets=``: problem ``i`` is rows ``offsets[i]:offsets[i + 1]`` (the image level), solved
  in blocks of consecutive problems zero-padded to ``(B, m_max, D)``: on NumPy a few, which
  stay in cache through all their passes, elsewhere (a GPU) as many as fill the device;
- ``groups=``: one problem per distinct group value (rows reordered, then as ``offsets``);
- :func:`kmeans_stream`: one problem streamed block by block, one read per pass, the first
  blocks kept up to a budget (float16 as read on NumPy, otherwise float32 copies).

Definitions shared by every source (our choices; the paper only says "cosine k-means"):

- Rows are L2-normalised in float32. A row whose norm is ``<= eps`` is a *zero row*: it
  stays zero (never NaN), is labelled 0, is never a member nor a centroid, and counts in
  the objective with similarity 0.
- Initialisation is k-means++ with the squared chordal distance ``d^2 = 2 - 2 cos(x, c)``,
  one candidate per step, on :func:`seeded_uniforms` (a counter-based hash of ``(domain,
  seed, stream, draw)``): problem ``i`` of ``offsets`` uses stream ``i``, group ``g`` stream
  ``-1 - g``, a single problem stream 0; the streamed init sample draws one key per global
  row in its own domain, so it does not depend on the block sizes.
- Pass ``t = 0, 1, ...`` assigns every row to ``argmax(X @ C_t.T)`` (ties to the lowest
  cluster; for k = 2 the sign of ``x . (c_1 - c_0)``) and measures ``J_t`` = mean over all
  rows of the cosine to the assigned centroid (``sum_j c_j . s_j / n`` from the member sums
  ``s_j``). It stops at ``t == max_iter`` or, for ``t >= 1`` with no empty cluster, when
  ``J_t - J_{t-1} <= tol * |J_{t-1}|``. Otherwise ``C_{t+1}`` = renormalised member sums (a
  cluster whose members sum to ~0 keeps its centroid); each empty cluster is reseeded, in
  cluster order, with a distinct worst-fitting row (lowest cosine to its own centroid, ties
  by lowest row).
- The result is ``C_t`` with the labels and objective of pass ``t`` (labels are the argmax
  for the returned centroids); ``n_iter = t`` is the number of centroid updates.

Returned arrays are NumPy. Only the stopping test (objective and empty-cluster count per
problem) leaves the device during a pass. NumPy (the namespace itself, which implements the
standard from 2.1 on) has two backend functions of its own, compiled with numba: after the
first pass :func:`_sweep_np` moves only the rows that changed cluster between the member
sums (other namespaces recompute them), and :func:`_step` ends a pass in one call. On
NumPy, kernels run single-threaded and ``threads`` Python threads work on independent
problems or blocks (BLAS's own pool splits these thin products badly and competes for the
cores).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import sys
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import array_api_compat as aac
import numpy as np

EPS = 1e-12
STREAM_CACHE_BYTES = 1 << 30  # float32 copies of streamed blocks kept (callers size memory)
TORCH_CAST_WORTH = 1 << 27  # float16 elements cast above which importing torch pays off
# padded rows per block of problems solved together: on NumPy a block stays in cache
# through all its passes, elsewhere (a GPU) it fills the device
_CPU_PAD_ROWS, _PAD_ROWS = 4096, 1 << 21
_SAMPLE_DOMAIN = 1  # random domain of the streamed init sample (k-means++ uses 0)


class NonFiniteError(ValueError):
    """The rows hold NaN or inf (callers that know where the rows came from can say so)."""


@dataclass
class KMeansResult:
    """``centroids`` ``(k, D)`` float32 unit rows (``(P, k, D)`` for offsets/groups);
    ``labels`` ``(N,)`` int64 in row order (None from :func:`kmeans_stream` unless asked);
    ``objective`` float mean cosine similarity (``(P,)`` float64); ``n_iter`` int centroid
    updates (``(P,)`` int64); ``history`` the objective of every pass (single problem or
    stream); ``group_values`` ``(P,)`` int64 ascending group values for ``groups=``."""

    centroids: np.ndarray
    labels: np.ndarray | None
    objective: float | np.ndarray
    n_iter: int | np.ndarray
    history: list[float] = field(default_factory=list)
    group_values: np.ndarray | None = None


# ---------------------------------------------------------------------------------------
# backend: namespaces, host transfers, the float16 cast, threads


def array_namespace(device: str = "auto"):
    """The array-api-compat namespace (NumPy or CuPy) for ``device`` in ``"auto" | "cpu" |
    "cuda" | "gpu" | "cuda:N"``. ``"auto"``: CuPy when it imports and sees a GPU, else NumPy;
    asking for a GPU without a usable CuPy is a RuntimeError."""
    dev = device.strip().lower() if isinstance(device, str) else ""
    gpu = dev in ("cuda", "gpu") or dev.startswith("cuda:")
    if dev not in ("cpu", "auto") and not gpu:
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    try:
        if dev == "cpu":
            raise ImportError("device='cpu'")
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("cupy imports but sees no GPU")
    except Exception as exc:  # not installed, no driver, no GPU
        if gpu:
            raise RuntimeError(
                f"device={device!r} needs cupy and a GPU ({exc}); install the 'gpu' extra "
                "(cupy-cuda12x) or use device='cpu'"
            ) from exc
        return np
    if dev.startswith("cuda:"):
        cupy.cuda.Device(int(dev.split(":", 1)[1])).use()
    return aac.array_namespace(cupy.empty(0))


def _namespace(X, device):
    """``X``'s own namespace when ``device`` is None (NumPy for host objects such as Zarr
    arrays), else :func:`array_namespace` ``(device)``."""
    if device is not None:
        return array_namespace(device)
    if aac.is_array_api_obj(X) and not isinstance(X, np.ndarray | np.generic):
        return aac.array_namespace(X)
    return np


def _is_np(xp) -> bool:
    return xp is np


def _to_host(a) -> np.ndarray:
    """A NumPy array of any namespace's array (one device-to-host copy off the CPU)."""
    if isinstance(a, np.ndarray | np.generic):
        return np.asarray(a)
    if aac.is_cupy_array(a):
        return a.get()
    if aac.is_torch_array(a):
        return a.detach().cpu().numpy()
    return np.from_dlpack(a) if aac.is_array_api_obj(a) else np.asarray(a)


def _torch():
    """torch if this process imported it (its float16 cast is exact and vectorised; NumPy's
    is scalar code); the engine never imports it itself."""
    return sys.modules.get("torch") or False


def import_torch_cast_if_worth(n_elements: int) -> bool:
    """Import torch for the float16 cast when a run casts at least ``TORCH_CAST_WORTH``
    elements and torch is installed. Returns whether it will be used."""
    if "torch" not in sys.modules and n_elements >= TORCH_CAST_WORTH:
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401
    return bool(_torch())


def _device_free_bytes(xp) -> int | None:
    """Free memory of ``xp``'s current device in bytes (CuPy), None when unknown."""
    if aac.is_cupy_namespace(xp):
        import cupy

        return int(cupy.cuda.runtime.memGetInfo()[0])
    return None


def _cache_budget(xp, requested: int | None) -> int:
    """Bytes of streamed rows :func:`kmeans_stream` keeps: ``requested`` when given; on NumPy
    ``STREAM_CACHE_BYTES``; on a device half its free memory, at least that."""
    if requested is not None:
        return requested
    free = None if _is_np(xp) else _device_free_bytes(xp)
    return max(STREAM_CACHE_BYTES, (free or 0) // 2)


def _device_of(a, xp):
    """``a``'s device when it already is a (non-NumPy) ``xp`` array, else None (host rows go
    to ``xp``'s current device)."""
    if _is_np(xp) or isinstance(a, np.ndarray) or not aac.is_array_api_obj(a):
        return None
    return aac.device(a)


def _as_float32(a, xp, dev=None, out=None):
    """A float32 copy in ``xp`` of ``a`` (host, Zarr or ``xp`` array of any real dtype); on
    NumPy into ``out`` when given."""
    if not _is_np(xp):
        if not aac.is_array_api_obj(a) or isinstance(a, np.ndarray):
            a = xp.asarray(np.asarray(a), device=dev)  # ships the storage dtype
        return xp.astype(a, xp.float32, copy=True)
    a = np.asarray(_to_host(a))
    out = np.empty(a.shape, dtype=np.float32) if out is None else out
    torch = _torch() if a.dtype == np.float16 and a.size >= 4096 else False
    if torch and a.flags.writeable and a.dtype.isnative:
        torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(a)))
    else:
        np.copyto(out, a, casting="unsafe")
    return out


@contextlib.contextmanager
def _single_threaded_kernels(xp):
    """On NumPy, BLAS and torch run one thread each until exit (then their settings return)."""
    torch = _torch() if _is_np(xp) else False
    before = torch.get_num_threads() if torch else None
    with contextlib.ExitStack() as stack:
        if _is_np(xp):
            with contextlib.suppress(ImportError):  # threadpoolctl ships with scikit-learn
                from threadpoolctl import threadpool_limits

                stack.enter_context(threadpool_limits(1, user_api="blas"))
        if torch:
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, before)
        yield


def _ordered_map(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """``fn(item)`` for every item, in input order, with at most ``2 * threads`` in flight
    (a stream of blocks is never read far ahead of the work)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="kmeans") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


# ---------------------------------------------------------------------------------------
# normalisation and random numbers


def _prepare(raw, xp, dev=None, copy=True):
    """A float32 copy ``X`` ``(..., D)`` of ``raw`` on ``dev`` (``raw`` itself unless ``copy``),
    inverse norms ``inv`` ``(...,)`` float32 (0 for zero rows) and ``bad`` ``(...,)`` bool
    (non-finite row). The unit row is ``X * inv[..., None]``; the loop folds ``inv`` into
    ``(m,)`` vectors instead."""
    X = _as_float32(raw, xp, dev) if copy else raw
    norm = xp.sqrt(xp.vecdot(X, X))
    valid = norm > EPS
    inv = xp.where(valid, 1.0 / xp.where(valid, norm, 1.0), 0.0)
    return X, xp.astype(inv, xp.float32), ~xp.isfinite(norm)


def l2_normalize(X, xp=None):
    """Unit-norm float32 copy of ``X`` ``(..., D)`` (rows with norm <= ``EPS`` become zero), in
    ``xp`` (default: ``X``'s namespace). Non-finite rows are not checked here."""
    if len(getattr(X, "shape", np.shape(X))) == 0:
        raise ValueError("l2_normalize: expected an array of rows (..., D), got a scalar")
    xp = xp or _namespace(X, None)
    Xf, inv, _ = _prepare(X, xp)
    return Xf * inv[..., None]


def nearest_centroid(X, C, *, groups=None, block: int | None = None, xp=None):
    """The nearest centroid by cosine of every row: ``(n,)`` int64 labels. The one
    nearest-centroid rule of the package (the dataset and category levels, the class
    prototypes of ``lcseg_steps.clustering.class_clustering``); the Lloyd loop applies the
    same rule.

    Args:
        X: ``(n, D)`` unit rows (:func:`l2_normalize`); a zero row scores 0 against every
            centroid.
        C: ``(k, D)`` unit centroids, or ``(G, k, D)`` with ``groups``. An all-zero centroid
            (a class left empty) never wins.
        groups: None, or ``(n,)`` int in ``[0, G)``: each row is labelled among the ``k``
            centroids of its own group (labels in ``[0, k)``); one product against all
            ``G * k`` centroids, then each row keeps its group's slice.
        block: rows per product (None: one product of all rows).
        xp: the namespace (default: ``X``'s).

    The score is ``X @ C.T`` in ``X``'s dtype (``C`` is cast to it: float32 rows give
    float32 scores, float64 rows float64). Tie rule: the lowest index among the highest
    scores (``argmax``). The Lloyd loop scores raw rows as ``(X @ C.T) * inv`` (the inverse
    norms folded in; for ``k = 2`` the sign of ``x . (c_1 - c_0)``, ties to 0), and its
    compiled sweep keeps a cluster only on a strictly higher score: the same rule.
    """
    xp = xp or _namespace(X, None)
    X = xp.asarray(X)
    C = xp.asarray(C)
    C = xp.astype(C, X.dtype)
    n, D = X.shape
    flat = xp.reshape(C, (-1, D))  # (G * k, D), or (k, D)
    live = xp.sum(flat * flat, axis=1) > 0
    step = n if block is None else block
    parts = []
    for lo in range(0, max(n, 1), max(step, 1)):
        S = X[lo : lo + step] @ xp.matrix_transpose(flat)
        if not bool(xp.all(live)):
            S = xp.where(live[None, :], S, -xp.inf)
        if groups is not None:
            m, (G, k) = S.shape[0], C.shape[:2]
            g = xp.asarray(groups[lo : lo + step], dtype=xp.int64)
            rows = g + xp.arange(m, dtype=xp.int64) * G
            S = xp.take(xp.reshape(S, (m * G, k)), rows, axis=0)
        parts.append(xp.astype(xp.argmax(S, axis=1), xp.int64))
    return parts[0] if len(parts) == 1 else xp.concat(parts)


_M64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_uniforms(seed: int, streams, count: int, domain: int = 0) -> np.ndarray:
    """Uniforms in [0, 1) ``(len(streams), count)`` float64 (host), a pure function of
    ``(domain, seed, stream, draw)``: a stream's numbers do not depend on the others drawn."""
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
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ---------------------------------------------------------------------------------------
# the algorithm: k-means++ and the Lloyd loop of B problems


def _half_np(a, xp) -> bool:
    """Whether ``a`` is kept as read: float16 rows on NumPy (the kernels read them)."""
    return _is_np(xp) and a.dtype == np.float16


def _kmeanspp(X, inv, u, xp):
    """k-means++ of ``B`` problems: ``X`` ``(B, m, D)`` float32 raw rows, ``inv`` ``(B, m)``
    (0: zero or padding row; at least ``k`` others), ``u`` ``(B, k)`` host float64 uniforms
    -> ``(B, k, D)`` float32 unit rows. Centre ``j`` is the first row whose cumulative weight
    exceeds ``u_j`` times the total: 1 per free valid row for the first centre (and when all
    free rows are at distance 0), else the squared chordal distance to the nearest centre."""
    B, m, D = X.shape
    dev = aac.device(X)
    U = xp.asarray(u, device=dev)
    valid = inv > 0
    chosen = xp.zeros((B, m), dtype=xp.bool, device=dev)
    flat = (xp.reshape(X, (B * m, D)), xp.reshape(inv, (B * m,)))
    base = xp.arange(B, dtype=xp.int64, device=dev) * m
    cols = xp.arange(m, dtype=xp.int64, device=dev)
    d2, C = None, []
    for j in range(u.shape[1]):
        w = free = xp.astype(valid & ~chosen, xp.float64)
        if d2 is not None:
            w = xp.astype(d2, xp.float64)
            w = xp.where((xp.sum(w, axis=1) > 0)[:, None], w, free)
        cum = xp.cumulative_sum(w, axis=1)
        total = cum[:, -1]
        r = xp.minimum(U[:, j] * total, xp.nextafter(total, xp.zeros_like(total)))
        at = base + xp.sum(xp.astype(cum <= r[:, None], xp.int64), axis=1)
        c = xp.take(flat[0], at, axis=0) * xp.take(flat[1], at)[:, None]
        C.append(c)
        chosen = chosen | (cols[None, :] == (at - base)[:, None])
        cos = (X @ c[:, :, None])[..., 0] * inv
        dj = xp.where(valid & ~chosen, xp.maximum(2.0 - 2.0 * cos, 0.0), 0.0)
        d2 = dj if d2 is None else xp.minimum(d2, dj)
    return xp.stack(C, axis=1)


def _label_and_sum(X, inv, C, xp, prev=None, live=None):
    """One chunk of a pass: ``X`` ``(B, m, D)`` raw rows (float32; on NumPy float16 too),
    ``inv`` ``(B, m)``, ``C`` ``(B, k, D)`` -> labels ``(B, m)`` int64, member sums ``(B, k, D)``
    float64 and counts ``(B, k)`` int64 (zero rows: label 0, weight 0, not counted). ``prev``
    (this chunk's result of the last pass) and ``live`` ``(B,)`` host bool (problems still
    iterating) serve the NumPy backend (:func:`_product`, :func:`_sweep_np`)."""
    k = C.shape[1]
    S = None
    if k == 2:  # the sign of one product with c1 - c0
        S = _product(X, (C[:, 1, :] - C[:, 0, :])[..., None], xp, live)
    elif k > 2:
        S = _product(X, xp.matrix_transpose(C), xp, live)
    if _is_np(xp) and prev is not None:
        return _sweep_np(X, inv, S, k, prev, live)
    if k == 1:
        lab = xp.zeros(inv.shape, dtype=xp.int64, device=aac.device(X))
    elif k == 2:
        lab = xp.astype((S[..., 0] > 0) & (inv > 0), xp.int64)
    else:
        lab = xp.argmax(S * inv[..., None], axis=-1)
    member = xp.arange(k, dtype=xp.int64, device=aac.device(X))[:, None] == lab[:, None, :]
    W = xp.astype(member, xp.float32) * inv[:, None, :]  # (B, k, m)
    counts = xp.sum(xp.astype(W > 0, xp.int64), axis=-1)
    return lab, xp.astype(W @ X, xp.float64), counts


def _product(X, M, xp, live=None):
    """``X @ M`` for ``X`` ``(B, m, D)`` and ``M`` ``(B, D, c)`` float32. On NumPy ``M`` is made
    contiguous (a transposed view takes a slow path), problems not ``live`` are skipped
    (zeros), and rows of another dtype (streamed blocks kept as read) are cast in
    cache-sized pieces as they are used."""
    if not _is_np(xp):
        return X @ M
    M = np.ascontiguousarray(M)
    if live is not None and not live.all():  # rows in float32 here (blocks of problems)
        out = np.zeros((*X.shape[:2], M.shape[2]), dtype=np.float32)
        for b in np.flatnonzero(live):
            np.matmul(X[b], M[b], out=out[b])
        return out
    if X.dtype == np.float32:
        return X @ M
    step = 2048
    parts = [_as_float32(X[:, a : a + step], xp) @ M for a in range(0, X.shape[1], step)]
    return np.concatenate(parts, axis=1)


def _sweep_np(X, inv, S, k, prev, live):
    """NumPy labels, member sums and counts (as :func:`_label_and_sum`) from ``prev``, the last
    pass's, in one compiled sweep that moves only the rows that changed cluster (they are
    still in cache, so a pass costs about one product). ``prev`` is updated in place."""
    lab, sums, counts = prev
    S = np.zeros((*lab.shape, 1), np.float32) if S is None else S
    rows = X.view(np.uint16) if X.dtype == np.float16 else X
    live = np.ones(lab.shape[0], dtype=bool) if live is None else live
    kernels = _kernels()
    kernels.sweep(rows, kernels.half, inv, S, lab, sums, counts, live)
    return lab, sums, counts


@functools.cache
def _kernels():
    """The compiled NumPy kernels (numba, imported and compiled on first use)."""
    try:
        import numba
        from numba.extending import overload
    except ImportError as exc:
        raise RuntimeError(
            f"k-means on NumPy needs numba ({exc}): pip install 'numba>=0.61', or use the "
            "envs/cluster.yaml environment"
        ) from exc

    def value(x, table):
        pass

    @overload(value, inline="always")
    def _value(x, table):
        if x == numba.types.uint16:  # float16 bits (only float16 rows are viewed so)
            return lambda x, table: np.float64(table[x])
        return lambda x, table: np.float64(x)

    @numba.njit(nogil=True, cache=True)
    def sweep(X, table, inv, S, lab, sums, counts, live):
        B, m, D = X.shape
        c, pair = S.shape[2], sums.shape[1] == 2
        gain = np.zeros(D)  # k = 2: what cluster 1 gains and cluster 0 loses
        for b in range(B):
            if not live[b]:
                continue
            gain[:] = 0.0
            for r in range(m):
                w = inv[b, r]
                if w <= 0:  # zero rows stay in cluster 0, uncounted
                    continue
                new = 0
                if c == 1:
                    new = 1 if S[b, r, 0] > 0 else 0
                else:  # argmax of the cosines, ties to the lowest cluster
                    best = S[b, r, 0] * w
                    for j in range(1, c):
                        v = S[b, r, j] * w
                        if v > best:
                            best, new = v, j
                was = lab[b, r]
                if new == was:
                    continue
                lab[b, r] = new
                counts[b, new] += 1
                counts[b, was] -= 1
                wd = np.float64(w)
                if pair:
                    wd = wd if new == 1 else -wd
                    for d in range(D):
                        gain[d] += wd * value(X[b, r, d], table)
                    continue
                for d in range(D):
                    v = wd * value(X[b, r, d], table)
                    sums[b, new, d] += v
                    sums[b, was, d] -= v
            if pair:
                for d in range(D):
                    sums[b, 1, d] += gain[d]
                    sums[b, 0, d] -= gain[d]

    @numba.njit(nogil=True, cache=True)
    def step(C, sums, counts, eps):
        B, k, D = sums.shape
        stats, C_new = np.empty((B, 3 * k)), np.empty_like(C)
        for b in range(B):
            for j in range(k):
                dot = sq = 0.0
                for d in range(D):
                    dot += np.float64(C[b, j, d]) * sums[b, j, d]
                    sq += sums[b, j, d] * sums[b, j, d]
                norm = np.sqrt(sq)
                stats[b, j], stats[b, k + j], stats[b, 2 * k + j] = dot, counts[b, j], norm
                for d in range(D):
                    C_new[b, j, d] = sums[b, j, d] / norm if norm > eps else C[b, j, d]
        return stats, C_new

    # float16 bits -> float32 value, for the sweep's reads of float16 rows
    half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    return types.SimpleNamespace(sweep=sweep, step=step, half=half.astype(np.float32))


def _step(C, sums, counts, xp):
    """The end of a pass: ``C`` ``(B, k, D)`` float32, member sums ``(B, k, D)`` float64 and
    counts ``(B, k)`` -> host stats ``(B, 3k)`` float64 (``c_j . s_j``, counts, ``|s_j|``: the
    one transfer of a pass) and the next centroids ``s_j / |s_j|`` (a cluster whose members
    sum to ~0 keeps its centroid). On NumPy one compiled call."""
    if _is_np(xp):
        return _kernels().step(C, sums, counts, EPS)
    dot = xp.vecdot(xp.astype(C, xp.float64), sums)
    norm = xp.sqrt(xp.vecdot(sums, sums))
    stats = _to_host(xp.concat([dot, xp.astype(counts, xp.float64), norm], axis=1))
    if bool(np.all(stats[:, 2 * C.shape[1] :] > EPS)):
        return stats, xp.astype(sums / norm[..., None], C.dtype)
    ok = (norm > EPS)[..., None]
    return stats, xp.where(ok, xp.astype(sums / xp.where(ok, norm[..., None], 1.0), C.dtype), C)


def _flat_take(A, idx, xp):
    """``A[b, idx[b, j]]`` for ``A`` ``(B, m, ...)`` and ``idx`` ``(B, j)`` int64."""
    B, m = A.shape[:2]
    flat = idx + xp.arange(B, dtype=xp.int64, device=aac.device(A))[:, None] * m
    got = xp.take(xp.reshape(A, (B * m, -1)), xp.reshape(flat, (-1,)), axis=0)
    return xp.reshape(got, (*idx.shape, *A.shape[2:]))


def _worst_rows(chunks, C, xp):
    """Per problem the ``k`` worst-fitting unit rows ``(B, k, D)`` float32 for ``C``, in order
    (lowest cosine to the own centroid, ties by lowest row; zero rows last), over the
    ``(i, (X, inv))`` of ``chunks()``."""
    k = C.shape[1]
    sims, vecs = [], []
    for _, (X, inv) in chunks():
        best = xp.max((X @ xp.matrix_transpose(C)) * inv[..., None], axis=-1)
        best = xp.where(inv > 0, best, xp.inf)
        order = xp.argsort(best, axis=1, stable=True)[:, : min(k, X.shape[1])]
        sims.append(_flat_take(best, order, xp))
        vecs.append(_flat_take(X, order, xp) * _flat_take(inv, order, xp)[..., None])
    order = xp.argsort(xp.concat(sims, axis=1), axis=1, stable=True)[:, :k]
    return _flat_take(xp.concat(vecs, axis=1), order, xp)


def _lloyd(chunks, C, n, max_iter: int, tol: float, xp, where, threads=1, on_pass=None):
    """The Lloyd loop of ``B`` problems (rules: module docstring). Every pass reads the
    chunks ``(i, (X (B, m, D) float32, inv (B, m) float32))`` of ``chunks()`` (same order each
    pass). ``C`` ``(B, k, D)`` float32 unit initial centroids; ``n`` ``(B,)`` host row counts
    (or a callable giving them after a pass); ``where(b)`` names problem ``b`` in errors;
    ``on_pass(t, J, n_empty)`` of problem 0. Problems that stop leave the loop (their rows
    are skipped on NumPy, elsewhere computed and ignored). Returns host centroids
    ``(B, k, D)``, labels (``(B, m)`` per chunk), objectives ``(B,)`` and pass counts ``(B,)``."""
    B, k, _ = C.shape
    dev = aac.device(C)
    live = np.ones(B, dtype=bool)
    J_prev, J_out, it_out = np.zeros(B), np.zeros(B), np.zeros(B, dtype=np.int64)
    state: dict[int, tuple] = {}  # chunk -> (labels, sums, counts) of the last pass
    done: list[tuple] = []  # (problems, centroids, {chunk: labels}) as each stopped
    for t in range(max_iter + 1):

        def one(chunk, C=C, mask=live.copy()):  # noqa: B008
            return chunk[0], _label_and_sum(*chunk[1], C, xp, state.get(chunk[0]), mask)

        sums = counts = None
        for i, out in _ordered_map(one, chunks(), threads):
            state[i] = out
            sums, counts = (out[1], out[2]) if sums is None else (sums + out[1], counts + out[2])
        n_h = n() if callable(n) else n
        stats, C_new = _step(C, sums, counts, xp)
        J, counts_h = stats[:, :k].sum(axis=1) / n_h, stats[:, k : 2 * k]
        n_empty = (counts_h == 0).sum(axis=1) * live
        if t == 0:  # enough non-zero rows (checked here when no k-means++ sample was)
            _check_counts(where, k, n_h, counts_h.sum(axis=1))
        if on_pass is not None:
            on_pass(t, float(J[0]), int(n_empty[0]))
        stop = (n_empty == 0) & (J - J_prev <= tol * np.abs(J_prev)) if t else J < -np.inf
        if t >= max_iter or (stop & live).any():
            stop = live & (stop | (t >= max_iter))
            J_out[stop], it_out[stop] = J[stop], t
            sel = xp.asarray(np.flatnonzero(stop), device=dev)
            labs = {i: xp.take(st[0], sel, axis=0) for i, st in state.items()}
            done.append((np.flatnonzero(stop), xp.take(C, sel, axis=0), labs))
            live &= ~stop
            if not live.any():
                break
        J_prev = J
        if n_empty.any():  # rare: repair empty clusters on the host
            C_h, worst = _to_host(C_new).copy(), _to_host(_worst_rows(chunks, C, xp))
            empty = counts_h == 0
            for b in np.flatnonzero(n_empty):
                C_h[b, empty[b]] = worst[b, : int(empty[b].sum())]
            C_new = xp.asarray(C_h, device=dev)
        C = C_new
    C_out = np.zeros((B, *C.shape[1:]), dtype=np.float32)
    labels = {i: np.zeros((B, *st[0].shape[1:]), dtype=np.int64) for i, st in state.items()}
    for orig, C_s, labs in done:
        C_out[orig] = _to_host(C_s)
        for i, lab in labs.items():
            labels[i][orig] = _to_host(lab)
    return C_out, [labels[i] for i in range(len(labels))], J_out, it_out


# ---------------------------------------------------------------------------------------
# checks (once, at the boundary; ``where`` / ``where(b)`` prefixes the message)


def _check_int(where: str, name: str, v, lo: int, none_ok: bool = False):
    if none_ok and v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        kind = ("None or " if none_ok else "") + ("a positive" if lo else "a non-negative")
        raise ValueError(f"{where}{name} must be {kind} integer, got {v!r}")
    return int(v)


def _check_args(where: str, k, max_iter, tol, threads):
    k, max_iter = _check_int(where, "k", k, 1), _check_int(where, "max_iter", max_iter, 0)
    threads = _check_int(where, "threads", threads, 1)
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"{where}tol must be a finite number >= 0, got {tol!r}")
    return k, max_iter, float(tol), threads


def _check_rows(X, where: str):
    """``X`` must be a real 2-D ``(n, D)`` array with ``D >= 1``."""
    X = X if hasattr(X, "shape") else np.asarray(X)
    if len(X.shape) != 2 or X.shape[1] < 1:
        raise ValueError(f"{where}expected a 2-D array of rows (n, D) with D >= 1, got {X.shape}")
    if aac.is_array_api_obj(X) and not isinstance(X, np.ndarray):
        real = aac.array_namespace(X).isdtype(X.dtype, ("real floating", "integral"))
    else:
        real = np.dtype(X.dtype).kind in "fiu"
    if not real:
        raise ValueError(f"{where}expected real numbers, got dtype {X.dtype}")
    return X


def _check_init(init, shape: tuple, where: str) -> np.ndarray | None:
    """``"k-means++"`` -> None; explicit centroids -> host unit float32 rows of ``shape``."""
    if isinstance(init, str):
        if init != "k-means++":
            raise ValueError(f"{where}init must be 'k-means++' or an array, got {init!r}")
        return None
    C = np.asarray(_to_host(init), dtype=np.float64)
    if C.shape != shape:
        names = "(n_problems, k, D)" if len(shape) == 3 else "(k, D)"
        raise ValueError(f"{where}init must have shape {names} = {shape}, got {C.shape}")
    norm = np.sqrt(np.sum(C * C, axis=-1, keepdims=True))
    if not np.all(np.isfinite(norm)) or np.any(norm <= EPS):
        raise ValueError(f"{where}init rows must be finite and non-zero")
    return (C / norm).astype(np.float32)


def _check_finite(bad, xp, msg: Callable[[int], str]) -> None:
    """Raise ``msg(b)`` for the first problem ``b`` of ``bad`` ``(B, m)`` or ``(m,)`` (in
    ``xp``) with a non-finite row."""
    bad = np.reshape(_to_host(xp.any(bad, axis=-1)), -1)
    if bad.any():
        raise NonFiniteError(msg(int(np.argmax(bad))))


def _check_counts(where: Callable[[int], str], k: int, n, n_valid) -> None:
    """Raise for the first problem ``b`` (``where(b)`` names it, built only then) with fewer
    than ``k`` points or non-zero rows (``n``, ``n_valid``: host counts per problem)."""
    n, n_valid = np.reshape(n, -1), np.reshape(n_valid, -1)
    for b in np.flatnonzero((n < k) | (n_valid < k))[:1]:
        msg = f"{where(b)}k={k} clusters but only "
        if n[b] < k:
            raise ValueError(f"{msg}{int(n[b])} points")
        raise ValueError(
            f"{msg}{int(n_valid[b])} non-zero rows (of {int(n[b])} points); zero rows cannot "
            "be cluster centres"
        )


# ---------------------------------------------------------------------------------------
# in-memory sources: one problem, offsets, groups


def kmeans_plusplus(X, k: int, seed: int, stream: int = 0):
    """Seeded cosine k-means++ centres ``(k, D)`` float32 unit rows (NumPy) of ``X`` ``(n, D)``
    (any real dtype and namespace; zero rows are never chosen). ``stream`` selects an
    independent random stream (problem ``i`` of ``offsets`` uses ``stream=i``)."""
    where = "kmeans_plusplus: "
    k = _check_int(where, "k", k, 1)
    X = _check_rows(X, where)
    n = np.array([0, X.shape[0]])
    out = _solve(X, n, np.array([stream]), k, None, 0, 0.0, seed, _namespace(X, None), 1, where)
    return out[1][0]


def _padded(X, starts, ids, xp, dev):
    """Problems ``ids`` (consecutive) of ``X`` as float32 ``(B, m, D)`` zero-padded to the
    longest, with :func:`_prepare`'s ``inv`` and ``bad`` ``(B, m)``."""
    ids = np.asarray(ids)
    n, lo, hi = starts[ids + 1] - starts[ids], int(starts[ids[0]]), int(starts[ids[-1] + 1])
    B, m, D = len(ids), int(max(n)), X.shape[1]
    if _is_np(xp):  # cast straight into the padded layout (a gather would copy once more)
        Xf = np.empty((B, m, D), dtype=np.float32)
        for b, i in enumerate(ids):
            _as_float32(X[starts[i] : starts[i + 1]], xp, out=Xf[b, : n[b]])
            Xf[b, n[b] :] = 0
        return _prepare(Xf, xp, copy=False)
    out = _prepare(X[lo:hi, ...], xp, dev)
    if B == 1:
        return tuple(a[None, ...] for a in out)
    src = np.full((B, m), hi - lo, dtype=np.int64)  # row hi - lo: a zero row
    for b, i in enumerate(ids):
        src[b, : n[b]] = np.arange(starts[i] - lo, starts[i + 1] - lo)
    src = xp.asarray(np.reshape(src, (-1,)), device=aac.device(out[0]))
    return tuple(
        xp.reshape(
            xp.take(xp.concat([a, xp.zeros_like(a[:1, ...])]), src, axis=0), (B, m, *a.shape[1:])
        )
        for a in out
    )


def _solve(X, starts, streams, k, init, max_iter, tol, seed, xp, threads, where, history=None):
    """Problems ``i`` = rows ``starts[i]:starts[i + 1]`` of ``X`` (host offsets), k-means++
    stream ``streams[i]`` or ``init[i]`` ``(k, D)``, solved in blocks of consecutive problems
    zero-padded to a common length. ``where``: str or ``i -> str``. Returns host labels
    ``(N,)``, centroids ``(P, k, D)``, objectives ``(P,)`` and pass counts ``(P,)``."""
    where = where.format if isinstance(where, str) else where
    P, D = len(starts) - 1, X.shape[1]
    labels = np.zeros(X.shape[0], dtype=np.int64)
    C_out, J_out, it_out = np.zeros((P, k, D), np.float32), np.zeros(P), np.zeros(P, np.int64)
    sizes = np.diff(starts)
    _check_counts(where, k, sizes, sizes)
    pad_rows = _CPU_PAD_ROWS if _is_np(xp) else _PAD_ROWS
    blocks, cur = [], []
    for i in range(P):
        if cur and (len(cur) + 1) * max(sizes[cur[0] : i + 1]) > pad_rows:
            blocks, cur = blocks + [cur], []
        cur.append(i)
    blocks += [cur] if cur else []
    dev = _device_of(X, xp)

    def solve_block(ids):
        n_b = sizes[ids]
        Xf, inv, bad = _padded(X, starts, ids, xp, dev)
        name = lambda b: where(ids[b])  # noqa: E731
        _check_finite(bad, xp, lambda b: f"{name(b)}non-finite values")
        if init is None:
            n_valid = _to_host(xp.sum(xp.astype(inv > 0, xp.int64), axis=1))
            _check_counts(name, k, n_b, n_valid)
            C0 = _kmeanspp(Xf, inv, seeded_uniforms(seed, streams[ids], k), xp)
        else:
            C0 = xp.asarray(init[ids], device=aac.device(Xf))
        on_pass = (lambda t, J, e: history.append(J)) if history is not None else None
        C, labs, J, it = _lloyd(
            lambda: [(0, (Xf, inv))], C0, n_b.astype(np.float64), max_iter, tol, xp, name,
            on_pass=on_pass,
        )  # fmt: skip
        for b, i in enumerate(ids):
            labels[starts[i] : starts[i + 1]] = labs[0][b, : sizes[i]]
        C_out[ids], J_out[ids], it_out[ids] = C, J, it

    with _single_threaded_kernels(xp):
        for _ in _ordered_map(solve_block, blocks, threads if _is_np(xp) else 1):
            pass
    return labels, C_out, J_out, it_out


def kmeans(
    X,
    k: int,
    *,
    offsets=None,
    groups=None,
    init="k-means++",
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
    threads: int = 1,
    streams=None,
) -> KMeansResult:
    """Cosine k-means of the rows of ``X`` ``(N, D)`` (any real dtype; any array-API array,
    or a host array whose row slices read as NumPy, e.g. Zarr).

    One problem, or with ``offsets`` ``(P + 1,)`` int problem ``i`` = rows
    ``offsets[i]:offsets[i + 1]``, or with ``groups`` ``(N,)`` int one problem per distinct
    value (ascending). ``init``: ``"k-means++"`` or unit-normalisable centroids ``(k, D)``,
    ``(P, k, D)`` for offsets/groups, or a mapping group value -> ``(k, D)``. ``device``:
    None computes in ``X``'s namespace, else see :func:`array_namespace`. ``threads``:
    problems solved at once (NumPy). Results do not depend on ``threads`` nor on blocking.
    ``streams`` ``(P,)`` (offsets only): the random stream of each problem's k-means++
    start, default ``i`` for problem ``i``; all 0 solves each as if it were alone.
    """
    what = "kmeans: "
    k, max_iter, tol, threads = _check_args(what, k, max_iter, tol, threads)
    X = _check_rows(X, what)
    (N, D), xp = X.shape, _namespace(X, device)
    args = (max_iter, tol, seed, xp, threads)
    if offsets is not None and groups is not None:
        raise ValueError(f"{what}give offsets or groups, not both")
    if groups is not None:
        g = np.asarray(_to_host(groups))
        if g.shape != (N,) or g.dtype.kind not in "iu":
            raise ValueError(f"{what}groups must be integers of shape ({N},), got {g.shape}")
        values, counts = np.unique(g.astype(np.int64), return_counts=True)
        if isinstance(init, Mapping):
            missing = [int(v) for v in values if int(v) not in init]
            if missing:
                raise ValueError(f"{what}init has no centroids for groups {missing}")
            init = np.stack([np.asarray(_to_host(init[int(v)]), np.float64) for v in values])
        C0 = _check_init(init, (len(values), k, D), what)
        order = np.argsort(g, kind="stable")  # rows grouped, then solved as offsets
        dev = _device_of(X, xp)
        Xs = X[order] if dev is None else xp.take(X, xp.asarray(order, device=dev), axis=0)
        starts = np.concatenate([[0], np.cumsum(counts)])
        lab, C, J, it = _solve(
            Xs, starts, -1 - values, k, C0, *args, lambda i: f"{what}group {values[i]}: "
        )
        labels = np.empty_like(lab)
        labels[order] = lab
        return KMeansResult(C, labels, J, it, [], values)
    if offsets is not None:
        off = np.asarray(_to_host(offsets))
        ok = off.ndim == 1 and off.shape[0] >= 1 and off.dtype.kind in "iu"
        if not ok or off[0] != 0 or off[-1] != N or np.any(np.diff(off) < 0):
            raise ValueError(
                f"{what}offsets must be 1-D integers that start at 0, never decrease and "
                f"end at len(X)={N}, got shape {off.shape} dtype {off.dtype}"
            )
        off, P = off.astype(np.int64), len(off) - 1
        C0 = _check_init(init, (P, k, D), what)
        st = np.arange(P) if streams is None else np.asarray(streams, dtype=np.int64)
        if st.shape != (P,):
            raise ValueError(f"{what}streams must have shape ({P},), got {st.shape}")
        lab, C, J, it = _solve(X, off, st, k, C0, *args, f"{what}problem {{}}: ")
        return KMeansResult(C, lab, J, it)
    C0 = _check_init(init, (k, D), what)
    C0 = None if C0 is None else C0[None]
    hist: list[float] = []
    lab, C, J, it = _solve(X, np.array([0, N]), np.array([0]), k, C0, *args, what, hist)
    return KMeansResult(C[0], lab, float(J[0]), int(it[0]), hist)


# ---------------------------------------------------------------------------------------
# streamed source


def _checked_blocks(blocks: Callable[[], Iterable], what: str) -> Iterator:
    """The non-empty blocks of ``blocks()``, each checked to be 2-D, real, of the same D."""
    D = None
    for i, b in enumerate(blocks()):
        b = _check_rows(b, f"{what}block {i}: ")
        if D is None:
            D = b.shape[1]
        elif b.shape[1] != D:
            raise ValueError(f"{what}block {i} has D={b.shape[1]}, earlier blocks D={D}")
        if b.shape[0]:
            yield b


def _init_sample(blocks, size: int | None, seed: int, what: str) -> np.ndarray:
    """Host float32 ``(m, D)`` uniform sample without replacement of at most ``size`` rows (None:
    all), in row order: the rows with the ``size`` lowest keys ``seeded_uniforms(seed, row, 1,
    domain=1)``, so independent of the block sizes (memory: the sample plus one block)."""
    size = _check_int(what, "init_sample", size, 1, none_ok=True)
    rows, keys, parts, n = [], [], [], 0
    host = _namespace(np.empty(0), None)
    for b in _checked_blocks(blocks, what):
        r = np.arange(n, n + b.shape[0])
        n += b.shape[0]
        if size is None:
            parts.append(_as_float32(b, host))
            continue
        kb = seeded_uniforms(seed, r, 1, domain=_SAMPLE_DOMAIN)[:, 0]
        sel = np.sort(np.argsort(kb, kind="stable")[:size])
        parts.append(_as_float32(np.asarray(_to_host(b))[sel], host))
        rows, keys = rows + [r[sel]], keys + [kb[sel]]
        if sum(len(p) for p in parts) > 2 * size:  # keep the size lowest keys so far
            parts, rows, keys = _bottom(parts, rows, keys, size)
    if not parts:
        raise ValueError(f"{what}blocks() yielded no rows")
    if size is not None:
        parts, rows, keys = _bottom(parts, rows, keys, size)
    return np.concatenate(parts)


def _bottom(parts, rows, keys, size):
    """The rows with the ``size`` lowest keys of the candidates, in row order."""
    P, r, kk = np.concatenate(parts), np.concatenate(rows), np.concatenate(keys)
    keep = np.sort(np.lexsort((r, kk))[:size])
    return [P[keep]], [r[keep]], [kk[keep]]


def kmeans_stream(
    blocks: Callable[[], Iterable],
    k: int,
    *,
    init="k-means++",
    init_sample: int | None = None,
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
    threads: int = 1,
    return_labels: bool = False,
    log: Callable[[str], None] | None = None,
    cache_bytes: int | None = None,
) -> KMeansResult:
    """Cosine k-means over rows streamed from ``blocks()``, one read of the blocks per pass.

    ``blocks()`` returns a fresh iterable of ``(n_i, D)`` real arrays (or lazy blocks with
    ``shape`` and ``dtype`` that ``np.asarray`` reads, e.g. ``store.RowBlock``), in the same
    order every call. The first blocks are kept (on NumPy as read, elsewhere as float32
    copies) while their size as float32 stays within ``cache_bytes`` (None:
    :func:`_cache_budget`); the others are read again every pass, so memory is bounded by
    the cache, ``2 * threads`` blocks and ``(n,)`` labels (with ``return_labels``).
    k-means++ runs on a seeded uniform sample of at most ``init_sample`` rows (None: all).
    Same result as :func:`kmeans` on the concatenated rows, up to float rounding of
    per-block sums; ``device`` None computes in the first block's namespace.
    """
    what = "kmeans_stream: "
    name = lambda b: what  # noqa: E731
    k, max_iter, tol, threads = _check_args(what, k, max_iter, tol, threads)
    if not callable(blocks):
        raise ValueError(f"{what}blocks must be a callable returning an iterable of blocks")
    cache_bytes = _check_int(what, "cache_bytes", cache_bytes, 0, none_ok=True)
    first = next(iter(_checked_blocks(blocks, what)), None)
    if first is None:
        raise ValueError(f"{what}blocks() yielded no rows")
    xp, D = _namespace(first, device), first.shape[1]
    dev = _device_of(first, xp)
    del first
    cache_bytes = _cache_budget(xp, cache_bytes)
    C0 = _check_init(init, (k, D), what)
    if C0 is None:
        sample = _init_sample(blocks, init_sample, seed, what)
        S, s_inv, bad = _prepare(sample, xp, dev)
        _check_finite(bad, xp, lambda b: f"{what}non-finite values in the init sample")
        scope = "" if init_sample is None else f"the init sample of init_sample={init_sample}: "
        n_valid = int(xp.sum(xp.astype(s_inv > 0, xp.int64)))
        _check_counts(lambda b: f"{what}{scope}", k, sample.shape[0], n_valid)
        C = _kmeanspp(S[None, ...], s_inv[None, ...], seeded_uniforms(seed, [0], k), xp)
        del sample, S, s_inv
    else:
        C = xp.asarray(C0[None], device=dev)
    cache: dict[int, tuple] = {}  # block -> (rows, inverse norms), within cache_bytes
    invs: dict[int, tuple] = {}  # other blocks -> inverse norms
    seen = {"n": None}  # rows of the first pass

    def chunks():
        """``(i, (X, inv))`` of every block: cached, else read here. On NumPy float16 rows
        stay as read (half the bytes a pass; :func:`_product` casts them piece by piece in
        cache); otherwise float32 copies. The first pass gives float32."""
        n, cached, first_pass = 0, 0, seen["n"] is None
        for i, b in enumerate(_checked_blocks(blocks, what)):
            n += b.shape[0]
            if not first_pass:
                if (cache[i][1] if i in cache else invs[i]).shape[1] != b.shape[0]:
                    raise ValueError(f"{what}block {i} changed size between passes")
                if i in cache:
                    yield i, cache[i]
                else:
                    raw = np.asarray(_to_host(b)) if _is_np(xp) else b
                    raw = raw if _half_np(raw, xp) else _as_float32(raw, xp, dev)
                    yield i, (raw[None, ...], invs[i])
                continue
            keep = cached + b.shape[0] * D * 4 <= cache_bytes
            cached += b.shape[0] * D * 4 if keep else 0
            raw = np.asarray(_to_host(b)) if _is_np(xp) else b  # one read of a lazy block
            X, inv, bad = _prepare(raw, xp, dev)
            _check_finite(bad, xp, lambda _, i=i: f"{what}non-finite values in block {i}")
            if keep:
                cache[i] = ((raw if _half_np(raw, xp) else X)[None, ...], inv[None, ...])
            else:
                invs[i] = inv[None, ...]
            yield i, (X[None, ...], inv[None, ...])
        if first_pass:
            seen["n"] = n
        elif n != seen["n"]:
            raise ValueError(f"{what}a pass saw {n} rows, the first pass saw {seen['n']}")

    history: list[float] = []

    def on_pass(t, J, n_empty):
        history.append(J)
        if log is not None:
            log(f"{what}pass {t} objective {J:.6f} over {seen['n']} rows, {n_empty} empty")

    with _single_threaded_kernels(xp):
        n = lambda: np.array([float(seen["n"])])  # noqa: E731
        C, labs, J, it = _lloyd(chunks, C, n, max_iter, tol, xp, name, threads, on_pass)
    labels = np.concatenate([lab[0] for lab in labs]) if return_labels else None
    return KMeansResult(C[0], labels, float(J[0]), int(it[0]), history)
