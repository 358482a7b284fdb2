"""Cosine (spherical) k-means, written once against an array namespace, and its drivers.

The algorithm is implemented once, on batches of problems ``(B, n, D)``, against an array
namespace ``xp`` (``numpy`` on CPU, ``cupy`` on a GPU when it imports); the drivers only
decide where the rows come from:

- :func:`cosine_kmeans`: one in-memory problem (a batch of one);
- :func:`streaming_kmeans`: one problem whose rows are streamed block by block, one pass per
  Lloyd iteration, memory bounded by a block;
- :func:`batched_kmeans`: many small independent problems (the ragged layout of the feature
  stores), one after the other while each is in cache on CPU, in blocks solved together on
  a GPU;
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
- Pass ``t >= 1`` of a large problem (or of a block on a GPU) re-scores only rows whose
  label a margin bound (best minus second-best cosine, lowered by how far the centroids
  moved, with a float32 rounding slack) cannot guarantee; the others provably keep their
  label, so every pass equals a full one (which is what a cache-sized problem on CPU
  computes: there the bookkeeping costs more than the product it saves). The objective
  is computed as ``sum_j c_j . s_j / n`` from the member sums ``s_j``.
- The result is ``C_t`` with the labels and objective of pass ``t``, so labels are always
  the argmax for the returned centroids; ``n_iter = t`` is the number of centroid updates.
  ``J_t`` is non-decreasing in exact arithmetic.

Arrays returned by the drivers are NumPy (moved to the host when computed on a GPU). On
CPU, float16 -> float32 conversion goes through torch when the process has imported it
(exact, and ~10x faster than NumPy's cast; see ``import_torch_cast_if_worth``). On CPU the
drivers run every kernel single-threaded and
spread independent work (blocks of rows, blocks of problems, groups) over ``threads``
Python threads of their own: OpenBLAS's pthread pool and torch's OpenMP pool competing
for the same cores made these thin products up to 40x slower (measured on 2 cores), and
neither pool splits an ``(n, 384) @ (384,)`` product usefully anyway.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

EPS = 1e-12
# streaming_kmeans keeps float32 copies of blocks up to this many bytes (callers size
# memory and the float16 cast from it)
STREAM_CACHE_BYTES = 1 << 30
_F32 = np.float32
_F64 = np.float64


class NonFiniteError(ValueError):
    """The rows hold NaN or inf (callers that know where the rows came from can say so)."""


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
# threads


def _check_threads(threads, what: str) -> int:
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(f"{what}: threads must be a positive integer, got {threads!r}")
    return int(threads)


@contextlib.contextmanager
def _single_threaded_kernels(xp):
    """On CPU, BLAS and torch use one thread each until exit (then their settings return).

    Parallelism comes from :func:`_ordered_map` instead: see the module docstring for why.
    Worker threads started inside pick up torch's setting when they first run an op.
    """
    if xp is not np:
        yield
        return
    torch = _torch()
    before = torch.get_num_threads() if torch else None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1, user_api="blas")
    except ImportError:  # ships with scikit-learn; without it BLAS keeps its threads
        limiter = contextlib.nullcontext()
    with limiter:
        if torch:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(before)


def _ordered_map(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """``fn(item)`` for every item, results in input order, at most ``threads`` running and
    ``threads`` more waiting, so a stream of blocks is never read far ahead of the work."""
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


class _Scratch(threading.local):
    """One reusable float32 buffer per thread (a fresh one per block costs its page faults)."""

    def get(self, rows: int, D: int, xp):
        buf = getattr(self, "buf", None)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != D:
            buf = self.buf = xp.empty((rows, D), dtype=_F32)
        return buf[:rows]


# ---------------------------------------------------------------------------------------
# normalisation and random numbers


# Importing torch costs ~1.5 s; NumPy casts float16 at ~0.6 ns an element, torch ~10x
# faster. Runs casting fewer elements than this never win the import back.
TORCH_CAST_WORTH = 1 << 27


def _torch():
    """torch when this process has imported it (see :func:`import_torch_cast_if_worth`),
    else False: the drivers never import it themselves, so a small stage skips the cost.
    The cast is exact either way, so results never depend on which one ran."""
    return sys.modules.get("torch") or False


def import_torch_cast_if_worth(n_elements: int) -> bool:
    """Import torch for the float16 -> float32 cast if a run will cast ``n_elements`` or
    more (``TORCH_CAST_WORTH``) and torch is installed (the clustering rules' conda env has
    none). Returns whether the drivers will use torch's cast."""
    if "torch" not in sys.modules and n_elements >= TORCH_CAST_WORTH:
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
    return bool(_torch())


def _as_float32(a, xp, out=None):
    """A float32 copy of host or device array ``a`` in namespace ``xp`` (into ``out`` if given).

    NumPy's float16 -> float32 cast is scalar code (~1 ns/element); torch's is vectorised
    and exact, so on CPU it is used when imported (``_torch``). On a GPU the cast
    runs on the device after shipping the (smaller) storage dtype.
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


def _row_norms(X, xp):
    """Euclidean norms ``(...,)`` of the rows of ``X`` ``(..., D)``, in its float dtype.

    Always the same reduction (never torch's, whose rounding differs), so a row gets the
    same norm whichever driver, block size or process reads it. NumPy's ``vecdot`` is a
    per-row dot product (half the time of ``einsum`` here, and independent of where the
    row sits in memory); namespaces without it use ``einsum``.
    """
    vecdot = getattr(xp, "vecdot", None)
    if vecdot is not None:
        return xp.sqrt(vecdot(X, X))
    return xp.sqrt(xp.einsum("...d,...d->...", X, X))


def _prepare(raw, xp, out=None):
    """Float32 rows and their inverse norms, without writing normalised rows.

    ``raw`` ``(..., D)`` any real dtype -> ``X`` float32 (a copy, into ``out`` if given),
    ``inv`` ``(...,)`` float32 (``1 / norm``, 0 for zero rows), ``valid`` ``(...,)`` bool
    (norm > eps) and ``bad`` ``(...,)`` bool (non-finite row). The unit row is
    ``X[i] * inv[i]``; the algorithm folds ``inv`` into ``(n,)`` vectors (scores, member
    weights) instead of scaling the ``(n, D)`` rows, a broadcast multiply that costs more
    than the matrix-vector product of an assignment.
    """
    X = _as_float32(raw, xp, out)
    norm = _row_norms(X, xp)
    bad = ~xp.isfinite(norm)
    valid = norm > EPS
    inv = xp.where(valid, 1.0 / xp.where(valid, norm, 1.0), 0.0).astype(_F32)
    return X, inv, valid, bad


def l2_normalize(X, xp=np, eps: float = EPS):
    """Unit-norm float32 copy of ``X`` ``(..., D)``; rows with norm <= ``eps`` become zero.

    Any float dtype in, float32 out, in namespace ``xp``. Non-finite rows are not checked
    here (the drivers reject them).
    """
    if getattr(X, "ndim", np.ndim(X)) == 0:
        raise ValueError("l2_normalize: expected an array of rows (..., D), got a scalar")
    Xf = _as_float32(X, xp)
    norm = _row_norms(Xf, xp)
    valid = norm > eps
    Xf *= xp.where(valid, 1.0 / xp.where(valid, norm, 1.0), 0.0).astype(_F32)[..., None]
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
# the algorithm: k-means++, exact Lloyd passes that re-score only undecided rows


def _kmeanspp(X, inv, valid, u, xp):
    """k-means++ (squared chordal distance) of one problem -> ``(k, D)`` float32 unit rows.

    ``X`` ``(n, D)`` float32 rows whose unit rows are ``X * inv[:, None]`` (``inv`` ``(n,)``
    float32, 0 for zero rows), ``valid`` ``(n,)`` bool with at least ``k`` True, ``u``
    ``(k,)`` float64 host uniforms (one per centre).
    """
    n, D = X.shape
    k = len(u)
    C = xp.empty((k, D), dtype=_F32)
    chosen = xp.zeros(n, dtype=bool)
    rows = xp.flatnonzero(valid)
    idx = int(rows[int(np.floor(u[0] * rows.shape[0]))])
    d2 = None
    for j in range(k):
        if j > 0:
            cum = xp.cumsum(d2, dtype=_F64)
            total = float(cum[-1])
            if total > 0:
                # r < total strictly, so the first cum > r sits on a row with d2 > 0
                r = min(float(u[j]) * total, float(np.nextafter(total, 0.0)))
                idx = int(xp.searchsorted(cum, r, side="right"))
            else:
                # all remaining valid rows coincide with chosen centres: pick uniformly
                avail = xp.flatnonzero(valid & ~chosen)
                idx = int(avail[int(np.floor(u[j] * avail.shape[0]))])
        C[j] = X[idx] * inv[idx]
        chosen[idx] = True
        if j + 1 < k:
            cos = (X @ C[j]) * inv
            dj = xp.where(valid & ~chosen, xp.maximum(2.0 - 2.0 * cos, 0.0), 0.0).astype(_F32)
            d2 = dj if d2 is None else xp.minimum(d2, dj)
    return C


def _slack(D: int) -> float:
    """Margin below which a row's label is recomputed rather than inferred from bounds.

    A float32 dot product of a unit row with a vector of norm <= 2 errs by at most
    ``~2 D u`` (``u = 2^-24``); a margin is a difference of two such products and the
    test compares an old and a new margin, so ``8 D u`` covers rounding on both sides.
    """
    return 8.0 * D * 2.0**-24 + 2.0**-20


def _score(X, inv, C, xp):
    """Labels ``(m,)`` int64 and margins ``(m,)`` float32 of rows against one problem's ``C``.

    ``X`` ``(m, D)`` float32 with inverse norms ``inv`` ``(m,)``, ``C`` ``(k, D)`` float32.
    The label is the argmax cosine (ties to the lowest cluster); the margin is the gap
    between the best and second-best cosine (``inf`` for k = 1). For k = 2 one product
    with ``c1 - c0`` gives both (one matrix-vector product instead of two).
    """
    m, k = X.shape[0], C.shape[0]
    if k == 1:
        return xp.zeros(m, dtype=np.int64), xp.full(m, np.inf, dtype=_F32)
    if k == 2:
        s = (X @ (C[1] - C[0])) * inv
        return (s > 0).astype(np.int64), xp.abs(s)
    S = (X @ C.T) * inv[:, None]
    lab = xp.argmax(S, axis=1)
    ar = xp.arange(m)
    best = S[ar, lab]
    S[ar, lab] = -np.inf
    return lab.astype(np.int64), (best - xp.max(S, axis=1)).astype(_F32)


def _member_sums(X, inv, lab, k: int, xp):
    """Sums of the unit member rows of each cluster ``(k, D)`` float64 (zero rows: weight 0)."""
    if k == 1:
        return (inv @ X)[None].astype(_F64)
    if k == 2:
        w1 = inv * lab.astype(_F32)
        return (xp.stack([inv - w1, w1]) @ X).astype(_F64)  # one pass over X
    W = xp.zeros((k, X.shape[0]), dtype=_F32)
    W[lab, xp.arange(X.shape[0])] = inv
    return (W @ X).astype(_F64)


def _first_pass(X, inv, valid, C, xp):
    """Full assignment of one problem's rows (or a block of them) against ``C`` ``(k, D)``.

    Returns labels ``(m,)`` int64, margins ``(m,)`` float32 (``inf`` for zero rows, which
    never change label), member sums ``(k, D)`` float64 and counts ``(k,)`` int64.
    """
    k = C.shape[0]
    lab, margin = _score(X, inv, C, xp)
    margin = xp.where(valid, margin, np.inf).astype(_F32)
    counts = xp.bincount(lab[valid], minlength=k).astype(np.int64)
    return lab, margin, _member_sums(X, inv, lab, k, xp), counts


@dataclass
class _State:
    """Per-row and per-cluster state of ``B`` problems whose rows are concatenated.

    ``starts`` ``(B + 1,)`` host row offsets; ``inv`` ``(R,)`` float32 inverse norms;
    ``lab`` ``(R,)`` int64 current labels; ``margin`` ``(R,)`` float32 lower bound on the
    best-minus-second-best cosine of each row for the current centroids; ``sums``
    ``(B * k, D)`` float64 and ``counts`` ``(B * k,)`` int64 member sums and counts of the
    current labels; ``valid`` ``(R,)`` bool.
    """

    starts: np.ndarray
    inv: object
    valid: object
    lab: object
    margin: object
    sums: object
    counts: object
    _pid: object = None

    def pid(self, xp):
        """Problem index of every row ``(R,)`` int64 (built once)."""
        if self._pid is None:
            self._pid = xp.asarray(np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts)))
        return self._pid


def _rescore(st: _State, rows, Xg, C, xp, into=None) -> None:
    """Recompute labels and margins of global ``rows`` ``(m,)`` (sorted; raw rows ``Xg``).

    Rows that change cluster move their unit vector between the member sums and counts:
    ``st.sums`` and ``st.counts``, or the ``into = (sums, counts)`` accumulators of the same
    ``(B * k, D)`` / ``(B * k,)`` layout (a worker thread's share, added up afterwards).
    """
    B, k, D = C.shape
    pg = st.pid(xp)[rows]
    ig = st.inv[rows]
    if k == 2:
        # a row-wise product, the same arithmetic whatever problems the rows come from
        dif = C[:, 1] - C[:, 0]
        s = xp.einsum("ij,ij->i", Xg, dif[pg]) * ig
        new, margin = (s > 0).astype(np.int64), xp.abs(s)
    else:
        new = xp.empty(rows.shape[0], dtype=np.int64)
        margin = xp.empty(rows.shape[0], dtype=_F32)
        bounds = _to_host(xp.searchsorted(pg, xp.arange(B + 1)))
        for b in np.flatnonzero(np.diff(bounds)):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            new[lo:hi], margin[lo:hi] = _score(Xg[lo:hi], ig[lo:hi], C[b], xp)
    old = st.lab[rows]
    st.lab[rows] = new
    st.margin[rows] = margin
    ch = xp.flatnonzero(new != old)
    if ch.shape[0]:
        sums, counts = (st.sums, st.counts) if into is None else into
        _move(sums, counts, Xg[ch], ig[ch], pg[ch] * k + old[ch], pg[ch] * k + new[ch], xp)


def _move(sums, counts, Xc, w, key_old, key_new, xp) -> None:
    """Move unit rows ``Xc * w[:, None]`` ``(c, D)`` between clusters, in place.

    ``sums`` ``(nk, D)`` float64 and ``counts`` ``(nk,)`` int64 (views allowed); row ``i``
    leaves cluster ``key_old[i]`` for ``key_new[i]`` (``(c,)`` int64, never equal).
    """
    nk = sums.shape[0]
    step = max(1, (1 << 20) // nk)  # bounds the (nk, step) signed membership matrix
    for lo in range(0, Xc.shape[0], step):
        hi = min(lo + step, Xc.shape[0])
        E = xp.zeros((nk, hi - lo), dtype=_F32)
        cols = xp.arange(hi - lo)
        E[key_new[lo:hi], cols] = w[lo:hi]
        E[key_old[lo:hi], cols] = -w[lo:hi]
        sums += (E @ Xc[lo:hi]).astype(_F64)
    counts += xp.bincount(key_new, minlength=nk) - xp.bincount(key_old, minlength=nk)


def _rescore_dense(st: _State, r0: int, Xc, C, b: int, xp, into=None) -> None:
    """Recompute every row of the contiguous chunk ``Xc`` (global rows ``r0:``) of problem
    ``b`` with one matrix product: cheaper than gathering once many rows are undecided.
    ``into`` as for :func:`_rescore`."""
    k = C.shape[1]
    r1 = r0 + Xc.shape[0]
    ic, vc = st.inv[r0:r1], st.valid[r0:r1]
    new, margin = _score(Xc, ic, C[b], xp)
    old = st.lab[r0:r1]
    ch = xp.flatnonzero(new != old)  # zero rows score 0 -> label 0, never change
    if ch.shape[0]:
        sums, counts = (st.sums, st.counts) if into is None else into
        _move(
            sums[b * k : (b + 1) * k],
            counts[b * k : (b + 1) * k],
            Xc[ch],
            ic[ch],
            old[ch],
            new[ch],
            xp,
        )
    st.lab[r0:r1] = new
    st.margin[r0:r1] = xp.where(vc, margin, np.inf)


_DENSE = 1 / 6  # share of undecided rows above which a segment is re-scored whole


def _drift(C_old, C_new, lab, st: _State, xp):
    """Largest drop ``(R,)`` float32 of each row's margin when centroids move old -> new.

    A unit row's cosine to ``c`` moves by at most ``|c' - c|``; for k = 2 the margin is
    ``|x . (c1 - c0)|`` and moves by at most ``|(c1' - c0') - (c1 - c0)|``. A small
    absolute term covers the float32 rounding of the running bound.
    """
    B, k, D = C_old.shape
    pid = st.pid(xp)
    if k == 2:
        d = (C_new[:, 1].astype(_F64) - C_new[:, 0]) - (C_old[:, 1].astype(_F64) - C_old[:, 0])
        per = xp.sqrt(xp.sum(d * d, axis=1)) + 2.0**-20
        return per.astype(_F32)[pid]
    delta = xp.sqrt(xp.sum((C_new.astype(_F64) - C_old) ** 2, axis=2))  # (B, k)
    per_row = delta.reshape(-1)[pid * k + lab] + xp.max(delta, axis=1)[pid] + 2.0**-20
    return per_row.astype(_F32)


def _lowest_rows(rows_of, st: _State, b: int, C_b, m: int, xp):
    """The ``m`` worst-fitting unit rows ``(m, D)`` float32 of problem ``b`` for ``C_b``.

    Lowest cosine to the own centroid among valid rows, ties by lowest row index, over the
    chunks ``(r0, X)`` that ``rows_of(b)`` yields (global row offset, raw float32 rows).
    """
    D = C_b.shape[1]
    w_sim = np.empty(0, dtype=_F32)
    w_idx = np.empty(0, dtype=np.int64)
    w_vec = np.empty((0, D), dtype=_F32)
    for r0, Xc in rows_of(b):
        r1 = r0 + Xc.shape[0]
        ic, lc = st.inv[r0:r1], st.lab[r0:r1]
        sim = ((Xc @ C_b.T) * ic[:, None])[xp.arange(r1 - r0), lc]
        idx, vals = _lowest(_to_host(sim), _to_host(st.valid[r0:r1]), m)
        gi = xp.asarray(idx)
        w_sim = np.concatenate([w_sim, vals])
        w_idx = np.concatenate([w_idx, idx + r0])
        w_vec = np.concatenate([w_vec, _to_host(Xc[gi] * ic[gi][:, None])])
        keep = np.lexsort((w_idx, w_sim))[:m]
        w_sim, w_idx, w_vec = w_sim[keep], w_idx[keep], w_vec[keep]
    return xp.asarray(w_vec)


def _renormalize(sums64, C_old, xp, eps: float = EPS):
    """Unit centroids ``(B, k, D)`` float32 from float64 member sums; ~0 sums keep ``C_old``."""
    norm = _row_norms(sums64, xp)
    ok = norm > eps
    if bool(ok.all()):  # the usual case, in two calls (k = 2 image level: every pass)
        return (sums64 / norm[..., None]).astype(_F32)
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


def _lloyd(st: _State, C, max_iter: int, tol: float, xp, rescore, rows_of, on_pass=None):
    """The Lloyd loop of ``B`` problems whose first pass is already in ``st``.

    ``C`` ``(B, k, D)`` float32 centroids of that pass. Pass ``t >= 1`` recomputes only the
    rows whose margin bound fell below :func:`_slack` (``rescore(st, rows, C)`` with their
    sorted global indices; it may recompute more); every other row provably keeps its
    label, so labels, sums and objectives are those of a full pass. The objective is
    ``sum_j c_j . s_j / n`` (``s_j`` the member sums), equal to the mean best cosine.
    ``rows_of(b)`` yields ``(r0, X)`` chunks of problem ``b`` (empty-cluster repair only).
    ``on_pass(t, J, n_empty)`` is called for problem 0 after every pass.

    Returns centroids ``(B, k, D)`` float32, objectives ``(B,)`` float64 and pass counts
    ``(B,)`` int64 (host); the final labels are ``st.lab``.
    """
    B, k, D = C.shape
    sizes = np.diff(st.starts).astype(_F64)
    slack = _slack(D)
    live = np.ones(B, dtype=bool)
    J_prev = np.zeros(B, dtype=_F64)
    J_out = np.zeros(B, dtype=_F64)
    it_out = np.zeros(B, dtype=np.int64)
    for t in range(max_iter + 1):
        if t > 0:
            rows = xp.flatnonzero(st.margin <= slack)
            if rows.shape[0]:
                rescore(st, rows, C)
        S = st.sums.reshape(B, k, D)
        J = _to_host(xp.einsum("bkd,bkd->b", C.astype(_F64), S)) / sizes
        n_empty = _to_host(xp.sum(st.counts.reshape(B, k) == 0, axis=1))
        if on_pass is not None:
            on_pass(t, float(J[0]), int(n_empty[0]))
        stop = _stop(t, max_iter, J, J_prev, tol, n_empty) & live
        if stop.any():
            J_out[stop], it_out[stop] = J[stop], t
            for b in np.flatnonzero(stop):
                st.margin[st.starts[b] : st.starts[b + 1]] = np.inf  # never re-scored
            live &= ~stop
        if not live.any():
            break
        J_prev = J
        go = np.flatnonzero(live)
        gi = xp.asarray(go)
        C_new = C.copy()
        C_new[gi] = _renormalize(S[gi], C[gi], xp)
        for b in go[n_empty[go] > 0]:
            empty = np.flatnonzero(_to_host(st.counts[b * k : (b + 1) * k]) == 0)
            C_new[b, xp.asarray(empty)] = _lowest_rows(rows_of, st, int(b), C[b], len(empty), xp)
        st.margin -= _drift(C, C_new, st.lab, st, xp)
        C = C_new
    return _to_host(C).astype(_F32), J_out, it_out


def _lloyd_dense(X, inv, valid, C, max_iter: int, tol: float, xp):
    """The Lloyd loop of one problem whose rows stay in cache: every pass re-scores every row.

    ``X`` ``(n, D)`` float32 raw rows, ``inv``/``valid`` as :func:`_prepare`, ``C`` ``(k, D)``
    initial unit centroids. Same rules and arithmetic as :func:`_lloyd` (a full pass is what
    its margin bounds reproduce) in a handful of calls a pass: for a ~1 MB problem the
    bounds' bookkeeping costs more than the matrix-vector product it saves. After a pass
    (``t >= 1``) that moved no row and left no cluster empty, the next centroids are
    bitwise the current ones, so that last pass (which then stops) is not recomputed.
    Returns centroids ``(k, D)`` float32, labels ``(n,)`` int64, objective and ``n_iter``.
    """
    n = X.shape[0]
    k = C.shape[0]
    if k == 2:
        out = _lloyd_dense_k2(X, inv, valid, C, max_iter, tol, xp)
        if out is not None:
            return out
    lab, _ = _score(X, inv, C, xp)
    sums = _member_sums(X, inv, lab, k, xp)
    counts = xp.bincount(lab[valid], minlength=k).astype(np.int64)
    J_prev = 0.0
    quiet = moved = False
    for t in range(max_iter + 1):
        if t > 0 and not quiet:
            new, _ = _score(X, inv, C, xp)
            ch = xp.flatnonzero(new != lab)  # zero rows score 0 -> label 0, never move
            moved = ch.shape[0] > 0
            if moved:
                _move(sums, counts, X[ch], inv[ch], lab[ch], new[ch], xp)
                lab = new
        J = float(xp.vdot(C.astype(_F64), sums)) / n
        n_empty = int(xp.sum(counts == 0))
        if t >= max_iter or (t > 0 and n_empty == 0 and J - J_prev <= tol * abs(J_prev)):
            return C, lab, J, t
        quiet = t > 0 and not moved and n_empty == 0
        J_prev = J
        C_new = _renormalize(sums, C, xp)
        if n_empty:
            empty = np.flatnonzero(_to_host(counts) == 0)
            st = _State(np.array([0, n]), inv, valid, lab, None, None, counts)
            C_new[xp.asarray(empty)] = _lowest_rows(
                lambda _b: iter([(0, X)]), st, 0, C, len(empty), xp
            )
        C = C_new
    raise AssertionError("unreachable: the loop returns at t == max_iter")


def _lloyd_dense_k2(X, inv, valid, C, max_iter: int, tol: float, xp):
    """:func:`_lloyd_dense` for k = 2 (the image level), or None if a cluster empties.

    The sign of one product with ``c1 - c0`` labels every row (as :func:`_score`; zero
    rows score 0 and stay in cluster 0) and moved rows carry one signed sum between the
    two clusters. An empty cluster is left to the general loop, which repairs it.
    """
    n = X.shape[0]
    n_valid = int(xp.count_nonzero(valid))
    pos = (X @ (C[1] - C[0])) > 0
    sums = _member_sums(X, inv, pos, 2, xp)
    n1 = int(xp.count_nonzero(pos))
    J_prev = 0.0
    quiet = moved = False
    for t in range(max_iter + 1):
        if t > 0 and not quiet:
            new = (X @ (C[1] - C[0])) > 0
            ch = xp.flatnonzero(new != pos)
            moved = ch.shape[0] > 0
            if moved:
                into = new[ch]
                delta = ((inv[ch] * xp.where(into, _F32(1), _F32(-1))) @ X[ch]).astype(_F64)
                sums[1] += delta
                sums[0] -= delta
                n1 += 2 * int(xp.count_nonzero(into)) - ch.shape[0]
                pos = new
        J = float(xp.vdot(C.astype(_F64), sums)) / n
        if n1 == 0 or n1 == n_valid:
            return None
        if t >= max_iter or (t > 0 and J - J_prev <= tol * abs(J_prev)):
            return C, pos.astype(np.int64), J, t
        quiet = t > 0 and not moved
        J_prev = J
        C = _renormalize(sums, C, xp)
    raise AssertionError("unreachable: the loop returns at t == max_iter")


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
# single problem in memory


def kmeans_plusplus(X, k: int, seed: int, xp=np, *, stream: int = 0):
    """Seeded cosine k-means++ centres ``(k, D)`` float32 (unit rows, in ``xp``).

    ``X`` ``(n, D)`` any real dtype, normalised here; zero rows are never chosen. ``stream``
    selects an independent random stream for the same seed (problem ``i`` of
    :func:`batched_kmeans` uses ``stream=i``).
    """
    k = _check_k(k)
    X = _check_rows(X, "kmeans_plusplus")
    Xf, inv, valid, bad = _prepare(X, xp)
    if bool(xp.any(bad)):
        raise NonFiniteError("kmeans_plusplus: X has non-finite values")
    _check_count(k, X.shape[0], int(xp.sum(valid)), "kmeans_plusplus")
    return _kmeanspp(Xf, inv, valid, seeded_uniforms(seed, [stream], k)[0], xp)


_CHUNK = 1 << 16  # rows per chunk of gathered rows (bounds temporaries)
_STREAM_CHUNK = 2048  # rows converted and scored while in cache (3 MB float32 at D = 384)


def _in_memory(Xf, starts, xp):
    """``rescore`` and ``rows_of`` callables of :func:`_lloyd` for rows held in ``Xf``.

    Problems with many undecided rows are re-scored whole, one contiguous product each;
    the undecided rows of all other problems are gathered and re-scored together.
    """
    sizes = np.diff(starts)

    def rescore(st, rows, C):
        per = np.diff(_to_host(xp.searchsorted(rows, xp.asarray(starts))))
        dense = per > _DENSE * sizes
        for b in np.flatnonzero(dense):
            s, e = int(starts[b]), int(starts[b + 1])
            _rescore_dense(st, s, Xf[s:e], C, int(b), xp)
        if dense.any():
            rows = rows[xp.asarray(~dense)[st.pid(xp)[rows]]]
        for lo in range(0, rows.shape[0], _CHUNK):
            sub = rows[lo : lo + _CHUNK]
            _rescore(st, sub, Xf[sub], C, xp)

    def rows_of(b):
        yield int(starts[b]), Xf[starts[b] : starts[b + 1]]

    return rescore, rows_of


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
    xp = array_namespace(device)
    with _single_threaded_kernels(xp):
        return _cosine_kmeans(X, k, init, max_iter, tol, seed, xp)


def _cosine_kmeans(X, k, init, max_iter, tol, seed, xp) -> KMeansResult:
    """:func:`cosine_kmeans` in namespace ``xp``, with the caller's thread settings."""
    k = _check_k(k)
    max_iter, tol = _check_iter(max_iter, tol)
    X = _check_rows(X, "cosine_kmeans")
    kind = _init_kind(init, "cosine_kmeans")
    Xf, inv, valid, bad = _prepare(X, xp)
    if bool(xp.any(bad)):
        rows = np.flatnonzero(_to_host(bad))
        raise NonFiniteError(f"cosine_kmeans: non-finite values in rows {rows[:5].tolist()}...")
    n = X.shape[0]
    _check_count(k, n, int(xp.sum(valid)), "cosine_kmeans")
    if kind == "array":
        C = _check_init(init, k, X.shape[1], xp, "cosine_kmeans")
    else:
        C = _kmeanspp(Xf, inv, valid, seeded_uniforms(seed, [0], k)[0], xp)
    lab, margin, sums, counts = _first_pass(Xf, inv, valid, C, xp)
    starts = np.array([0, n])
    st = _State(starts, inv, valid, lab, margin, sums, counts)
    history: list[float] = []
    rescore, rows_of = _in_memory(Xf, starts, xp)
    C_out, J, it = _lloyd(
        st, C[None], max_iter, tol, xp, rescore, rows_of, lambda t, J, e: history.append(J)
    )
    return KMeansResult(
        centroids=C_out[0],
        labels=_to_host(st.lab).astype(np.int64),
        objective=float(J[0]),
        n_iter=int(it[0]),
        history=history,
    )


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
    cache_bytes: int = STREAM_CACHE_BYTES,
    threads: int = 1,
) -> KMeansResult:
    """Cosine k-means over rows streamed from ``blocks()``, one pass per Lloyd iteration.

    ``blocks()`` must return a fresh iterable of ``(n_i, D)`` float16/float32 arrays each
    call, in the same order every time. A block may also be lazy (anything with ``shape``
    and ``dtype`` that ``np.asarray`` reads, e.g. ``store.RowBlock``): it is then read only
    when its rows are not cached, by the worker thread that uses it.

    Blocks are converted to float32 one at a time, so memory is bounded by a few blocks
    plus ``(n,)`` per-row state (int64 label, float32 inverse norm, float32 margin bound,
    bool valid flag: about 17 bytes a row). After the first pass only rows whose label the
    margin bound leaves undecided are re-scored: a block with few of them has just those
    rows gathered and converted, a block with many is converted in cache-sized chunks. The
    float32 copies of the first blocks are kept while their total stays within
    ``cache_bytes`` (default 1 GiB; 0 keeps none), so those blocks are converted (and read)
    once; a dataset larger than the budget is never held whole as float32. k-means++ runs
    on a seeded uniform sample of at most ``max_points`` rows (None: all rows, gathered as
    float32 for the init only). Same result as :func:`cosine_kmeans` on the concatenated
    rows, up to float32 rounding of per-block sums.

    On CPU, ``threads`` worker threads work on consecutive blocks at once; per-block sums
    are added in block order, so the result does not depend on ``threads``.
    """
    what = "streaming_kmeans"
    k = _check_k(k)
    max_iter, tol = _check_iter(max_iter, tol)
    threads = _check_threads(threads, what)
    xp = array_namespace(device)
    with _single_threaded_kernels(xp):
        if not callable(blocks):
            raise ValueError(f"{what}: blocks must be a callable returning an iterable of blocks")
        kind = _init_kind(init, what)
        if kind == "array":
            first = next(iter(_checked_blocks(blocks, what)), None)
            if first is None:
                raise ValueError(f"{what}: blocks() yielded no rows")
            C = _check_init(init, k, first.shape[1], xp, what)
            del first
        else:
            sample = _init_sample(blocks, max_points, seed, what)
            Sf, s_inv, s_valid, bad = _prepare(sample, xp)
            if bool(xp.any(bad)):
                raise NonFiniteError(f"{what}: non-finite values in the data")
            n_valid = int(xp.sum(s_valid))
            if k > n_valid:
                scope = (
                    "" if max_points is None else f" in the init sample of max_points={max_points}"
                )
                raise ValueError(
                    f"{what}: k={k} clusters but only {n_valid} non-zero rows{scope} "
                    f"(of {sample.shape[0]} rows)"
                )
            C = _kmeanspp(Sf, s_inv, s_valid, seeded_uniforms(seed, [0], k)[0], xp)
            del sample, Sf, s_inv, s_valid

        # first pass: full assignment of every block, keeping the per-row state
        parts: dict[str, list] = {"inv": [], "valid": [], "lab": [], "margin": []}
        sums = xp.zeros((k, C.shape[1]), dtype=_F64)
        counts = xp.zeros(k, dtype=np.int64)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, numbers.Integral):
            raise ValueError(f"{what}: cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        cache: dict[int, object] = {}  # block index -> raw float32 rows, within cache_bytes
        cached = 0
        n = 0

        def first_pass(b):
            Xf, inv, valid, bad = _prepare(b, xp)
            return (Xf, inv, valid, bool(xp.any(bad)), *_first_pass(Xf, inv, valid, C, xp))

        passes = _ordered_map(first_pass, _checked_blocks(blocks, what), threads)
        for i, (Xf, inv, valid, bad, lab, margin, s, c) in enumerate(passes):
            if cached + Xf.nbytes <= cache_bytes:
                cache[i] = Xf
                cached += Xf.nbytes
            if bad:
                raise NonFiniteError(f"{what}: non-finite values in block {i}")
            sums += s
            counts += c
            for key, v in zip(parts, (inv, valid, lab, margin), strict=True):
                parts[key].append(v)
            n += Xf.shape[0]
        if n == 0:
            raise ValueError(f"{what}: blocks() yielded no rows")
        st = _State(np.array([0, n]), *(xp.concatenate(parts[key]) for key in parts), sums, counts)
        del parts
        _check_count(k, n, int(xp.sum(st.valid)), what)
        st.pid(xp)  # built once here, before worker threads read it

        def rows_seen(t, seen):
            if seen != n:
                raise ValueError(f"{what}: pass {t} saw {seen} rows, the first pass saw {n}")

        def rescore(st, rows, C):
            """Block by block: gather and convert only the undecided rows of a block, or when
            they are many convert it whole, in cache-sized chunks scored as they are made.
            Each block moves rows between clusters in its own accumulators; they are added to
            the running sums in block order."""
            rows_h = _to_host(rows)

            def located():
                r0 = 0
                for i, b in enumerate(_checked_blocks(blocks, what)):
                    yield i, b, r0
                    r0 += b.shape[0]
                rows_seen("re-scoring", r0)

            def one_block(item):
                i, b, r0 = item
                r1 = r0 + b.shape[0]
                lo, hi = np.searchsorted(rows_h, [r0, r1])
                Xc = cache.get(i)
                if Xc is not None and Xc.shape[0] != r1 - r0:
                    raise ValueError(f"{what}: block {i} changed size between passes")
                if hi == lo:
                    return None
                if Xc is None:
                    b = np.asarray(b)  # a lazy block (store.RowBlock) is read here, once
                into = (xp.zeros_like(st.sums), xp.zeros_like(st.counts))
                if Xc is not None:
                    if hi - lo > _DENSE * (r1 - r0):
                        _rescore_dense(st, r0, Xc, C, 0, xp, into)
                    else:
                        sel = xp.asarray(rows_h[lo:hi])
                        _rescore(st, sel, Xc[sel - r0], C, xp, into)
                elif hi - lo > _DENSE * (r1 - r0):
                    for c0 in range(0, r1 - r0, _STREAM_CHUNK):
                        c1 = min(c0 + _STREAM_CHUNK, r1 - r0)
                        out = scratch.get(c1 - c0, b.shape[1], xp) if xp is np else None
                        _rescore_dense(
                            st, r0 + c0, _as_float32(b[c0:c1], xp, out=out), C, 0, xp, into
                        )
                else:
                    sel = rows_h[lo:hi]
                    _rescore(
                        st, xp.asarray(sel), _as_float32(np.asarray(b[sel - r0]), xp), C, xp, into
                    )
                return into

            for into in _ordered_map(one_block, located(), threads):
                if into is not None:
                    st.sums += into[0]
                    st.counts += into[1]

        def rows_of(_b):
            r0 = 0
            for i, b in enumerate(_checked_blocks(blocks, what)):
                yield r0, cache[i] if i in cache else _as_float32(b, xp)
                r0 += b.shape[0]
            rows_seen("repairing", r0)

        def on_pass(t, J, n_empty):
            history.append(J)
            if log is not None:
                log(f"{what}: pass {t} objective {J:.6f} over {n} rows, {n_empty} empty")

        scratch = _Scratch()
        history: list[float] = []
        C_out, J, it = _lloyd(st, C[None], max_iter, tol, xp, rescore, rows_of, on_pass)
        return KMeansResult(
            centroids=C_out[0],
            labels=_to_host(st.lab).astype(np.int64) if return_labels else None,
            objective=float(J[0]),
            n_iter=int(it[0]),
            history=history,
        )


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
    threads: int = 1,
    solve: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Many independent cosine k-means problems on ragged rows.

    Problem ``i`` is rows ``offsets[i]:offsets[i + 1]`` of ``X`` ``(N, D)`` (float16/32; any
    array whose row slices give NumPy arrays, e.g. a Zarr array, is read one block at a time).
    Problems are read ``block_problems`` consecutive ones at a time (no padding), then
    ``solve``d: ``"each"`` runs one problem at a time through all its passes while its rows
    are in cache, every pass a full one (:func:`_lloyd_dense`; about 6 calls a pass for
    k = 2); ``"together"`` solves a block's problems pass by pass, later passes re-scoring,
    across all of them at once, only the rows whose label the margin bound leaves
    undecided, so launches are per block and arithmetic per undecided row. ``"auto"`` is
    ``"each"`` on CPU, ``"together"`` on a GPU. ``init`` is ``"k-means++"`` (problem ``i`` uses
    ``kmeans_plusplus(X_i, k, seed, stream=i)``) or ``(n_problems, k, D)`` centroids.
    Each problem follows exactly the rules of :func:`cosine_kmeans`, so results do not
    depend on ``block_problems`` (up to float rounding) nor on ``threads`` (on CPU, worker
    threads solving blocks at once; measured on 2 cores they are slower than one here, as
    the small calls of each pass contend for the GIL, so the image_level rule runs one
    and Snakemake runs shards side by side).

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
    threads = _check_threads(threads, what)
    if solve not in ("auto", "each", "together"):
        raise ValueError(f"{what}: solve must be 'auto', 'each' or 'together', got {solve!r}")
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
    init_arr = None
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
    bp = int(block_problems)
    # one float32 buffer per thread for all its blocks
    most = max(int(off[min(s + bp, P)] - off[s]) for s in range(0, P, bp)) if P else 0
    scratch = _Scratch()

    each = solve == "each" or (solve == "auto" and xp is np)

    def solve_block(start):
        ids = np.arange(start, min(P, start + bp))
        lo, hi = int(off[ids[0]]), int(off[ids[-1] + 1])
        if each:
            solve_each(X[lo:hi], off[ids[0] : ids[-1] + 2] - lo, ids)
            return
        buf = scratch.get(most, D, xp)
        st, C, Xf = _prepare_block(X, off, ids, k, init_arr, seed, xp, buf[: hi - lo])
        rescore, rows_of = _in_memory(Xf, st.starts, xp)
        C_out[ids], J_out[ids], it_out[ids] = _lloyd(st, C, max_iter, tol, xp, rescore, rows_of)
        labels_out[lo:hi] = _to_host(st.lab)

    def solve_each(Xs, starts, ids):
        # on CPU each problem runs all its passes while its rows are in cache: a block of
        # problems taken pass by pass streams every pass from L3 (a 900 x 384 product
        # costs ~25 us cache-warm and ~75 us once a pass cycles over 20 MB)
        buf = scratch.get(int(np.max(np.diff(starts))), D, xp)
        inits = None if init_arr is None else _unit_inits(init_arr[ids], ids, what)
        u = seeded_uniforms(seed, ids, k) if init_arr is None else None
        for b, i in enumerate(ids):
            s, e = int(starts[b]), int(starts[b + 1])
            Xb, ib, vb = _checked_problem(Xs[s:e], int(i), k, xp, buf[: e - s])
            C0 = _kmeanspp(Xb, ib, vb, u[b], xp) if inits is None else inits[b]
            C, lab, J_out[i], it_out[i] = _lloyd_dense(Xb, ib, vb, C0, max_iter, tol, xp)
            C_out[i], labels_out[off[i] : off[i + 1]] = _to_host(C), _to_host(lab)

    with _single_threaded_kernels(xp):
        for _ in _ordered_map(solve_block, range(0, P, bp), threads if xp is np else 1):
            pass
    return labels_out, C_out, J_out, it_out


def _unit_inits(init, ids, what: str) -> np.ndarray:
    """Explicit initial centroids of problems ``ids`` ``(B, k, D)`` -> unit float32 rows
    (as :func:`_check_init`, at once for a block)."""
    C = init.astype(_F64)
    norms = np.sqrt(np.sum(C * C, axis=-1))
    bad = ~np.isfinite(norms) | (norms <= EPS)
    if bad.any():
        i = int(ids[np.flatnonzero(bad.any(axis=1))[0]])
        raise ValueError(f"{what}: problem {i}: init rows must be finite and non-zero")
    return (C / norms[..., None]).astype(_F32)


def _checked_problem(raw, i: int, k: int, xp, out):
    """:func:`_prepare` of batched problem ``i`` into ``out``, checked: finite, >= k non-zero
    rows. Returns ``X``, ``inv``, ``valid``."""
    what = "batched_kmeans"
    Xb, ib, vb, bad = _prepare(raw, xp, out=out)
    if bool(xp.any(bad)):
        raise NonFiniteError(f"{what}: non-finite values in problem {i}")
    n_valid = int(xp.count_nonzero(vb))
    if n_valid < k:
        raise ValueError(
            f"{what}: problem {i} has {n_valid} non-zero rows (of {raw.shape[0]}), fewer than k={k}"
        )
    return Xb, ib, vb


def _prepare_block(X, off, ids, k, init_arr, seed, xp, Xf):
    """Convert, check, initialise and fully assign consecutive problems ``ids``.

    Returns the :class:`_State` of their first pass, centroids ``(B, k, D)`` float32 and the
    raw float32 rows ``(R, D)`` (written into ``Xf``). Each problem is done start to end
    while its rows are in cache (the block as a whole may not fit).
    """
    what = "batched_kmeans"
    lo, hi = int(off[ids[0]]), int(off[ids[-1] + 1])
    starts = off[ids[0] : ids[-1] + 2] - lo
    B, D = len(ids), X.shape[1]
    Xs = X[lo:hi]  # one read of the block (a view for NumPy, one slice for Zarr)
    inv = xp.empty(hi - lo, dtype=_F32)
    valid = xp.empty(hi - lo, dtype=bool)
    lab = xp.empty(hi - lo, dtype=np.int64)
    margin = xp.empty(hi - lo, dtype=_F32)
    sums = xp.empty((B * k, D), dtype=_F64)
    counts = xp.empty(B * k, dtype=np.int64)
    C = xp.empty((B, k, D), dtype=_F32)
    u = seeded_uniforms(seed, ids, k) if init_arr is None else None
    if init_arr is not None:
        C[...] = xp.asarray(_unit_inits(init_arr[ids], ids, what))
    for b, i in enumerate(ids):
        s, e = int(starts[b]), int(starts[b + 1])
        Xb, ib, vb = _checked_problem(Xs[s:e], int(i), k, xp, Xf[s:e])
        if init_arr is None:
            C[b] = _kmeanspp(Xb, ib, vb, u[b], xp)
        inv[s:e], valid[s:e] = ib, vb
        lab[s:e], margin[s:e], sums[b * k : (b + 1) * k], counts[b * k : (b + 1) * k] = _first_pass(
            Xb, ib, vb, C[b], xp
        )
    return _State(starts, inv, valid, lab, margin, sums, counts), C, Xf


# ---------------------------------------------------------------------------------------
# grouped driver


def grouped_kmeans(
    X,
    groups: np.ndarray,
    k: int,
    *,
    init="k-means++",
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
) -> dict[int, KMeansResult]:
    """One :func:`cosine_kmeans` per distinct value of ``groups`` ``(n,)`` int.

    ``X`` ``(n, D)``; the arguments are those of :func:`cosine_kmeans`, except that ``init``
    may also be a mapping from group value to ``(k, D)`` centroids. On CPU, ``threads``
    groups are fitted at once. Result keys are the group values (ascending); each result's
    labels index that group's rows in their original order (``X[groups == g]``).
    """
    threads = _check_threads(threads, "grouped_kmeans")
    X = _check_rows(X, "grouped_kmeans")
    g = np.asarray(groups)
    if g.shape != (X.shape[0],) or g.dtype.kind not in "iu":
        raise ValueError(
            f"grouped_kmeans: groups must be an integer array of shape ({X.shape[0]},), "
            f"got shape {g.shape} dtype {g.dtype}"
        )
    xp = array_namespace(device)
    values = [int(v) for v in np.unique(g)]

    def fit(gi):
        gin = init[gi] if isinstance(init, Mapping) else init
        try:
            return _cosine_kmeans(X[g == gi], k, gin, max_iter, tol, seed, xp)
        except ValueError as exc:
            raise ValueError(f"grouped_kmeans: group {gi}: {exc}") from exc

    with _single_threaded_kernels(xp):
        fits = list(_ordered_map(fit, values, threads if xp is np else 1))
    return dict(zip(values, fits, strict=True))
