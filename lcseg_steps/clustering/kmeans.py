"""Cosine (spherical) k-means: the public drivers, one per row source, each with one result
shape. The algorithm (one Lloyd loop of ``B`` problems, its rules) is
:mod:`lcseg_steps.clustering.lloyd`; the backends :mod:`lcseg_steps.clustering.backend`.

- :func:`kmeans` ``(X, k)``: one problem held in memory -> :class:`KMeansResult`;
- :func:`kmeans_ranges` ``(X, k, offsets=)``: problem ``i`` is rows
  ``offsets[i]:offsets[i + 1]`` (the image level), solved in blocks of consecutive problems
  zero-padded to ``(B, m_max, D)``: on NumPy a few, which stay in cache through all their
  passes, elsewhere (a GPU) as many as fill the device -> :class:`GroupedKMeansResult`;
- :func:`kmeans_groups` ``(X, k, groups=)``: one problem per distinct group value (rows
  reordered, then as ``offsets``) -> :class:`GroupedKMeansResult`;
- :func:`kmeans_stream`: one problem streamed block by block, one read per pass, the first
  blocks kept up to a budget (float16 as read on NumPy, otherwise float32 copies) ->
  :class:`KMeansResult`.

Returned arrays are NumPy. On NumPy, ``threads`` Python threads work on independent
problems or blocks (BLAS's own pool splits these thin products badly and competes for the
cores). The defaults of ``max_iter`` and ``tol`` are the schema's (``clustering.max_iter``,
``clustering.tol``); the stages pass the configured values.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import array_api_compat as aac
import numpy as np

from lcseg_steps.clustering.backend import (
    _as_float32,
    _cache_budget,
    _device_of,
    _half_np,
    _is_np,
    _namespace,
    _ordered_map,
    _single_threaded_kernels,
    _to_host,
)
from lcseg_steps.clustering.lloyd import (
    EPS,
    _check_counts,
    _kmeanspp,
    _lloyd,
    _prepare,
    seeded_uniforms,
)

# padded rows per block of problems solved together: on NumPy a block stays in cache
# through all its passes, elsewhere (a GPU) it fills the device
_CPU_PAD_ROWS, _PAD_ROWS = 4096, 1 << 21
_SAMPLE_DOMAIN = 1  # random domain of the streamed init sample (k-means++ uses 0)


class NonFiniteError(ValueError):
    """The rows hold NaN or inf (callers that know where the rows came from can say so)."""


@dataclass
class KMeansResult:
    """One clustering (:func:`kmeans`, :func:`kmeans_stream`): ``centroids`` ``(k, D)``
    float32 unit rows; ``labels`` ``(n,)`` int64 in row order; ``objective`` the mean cosine
    similarity; ``n_iter`` the centroid updates; ``history`` the objective of every pass."""

    centroids: np.ndarray
    labels: np.ndarray
    objective: float
    n_iter: int
    history: list[float]


@dataclass
class GroupedKMeansResult:
    """One clustering per group of rows (:func:`kmeans_ranges`, :func:`kmeans_groups`):
    ``centroids`` ``(P, k, D)`` float32 unit rows; ``labels`` ``(N,)`` int64 in row order,
    each in ``[0, k)`` of its own group; ``objective`` ``(P,)`` float64; ``n_iter`` ``(P,)``
    int64; ``group_values`` ``(P,)`` int64, the group of each clustering (ascending group
    values for :func:`kmeans_groups`, ``0 .. P - 1`` for the ranges of
    :func:`kmeans_ranges`)."""

    centroids: np.ndarray
    labels: np.ndarray
    objective: np.ndarray
    n_iter: np.ndarray
    group_values: np.ndarray


# ---------------------------------------------------------------------------------------
# unit rows and the nearest-centroid rule


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


def _setup(what: str, X, k, max_iter, tol, seed, device, threads):
    """The checked rows, ``(N, D)``, namespace and :func:`_solve`'s trailing arguments."""
    k, max_iter, tol, threads = _check_args(what, k, max_iter, tol, threads)
    X = _check_rows(X, what)
    return X, k, X.shape, (max_iter, tol, seed, _namespace(X, device), threads)


def kmeans(
    X,
    k: int,
    *,
    init="k-means++",
    max_iter: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
) -> KMeansResult:
    """Cosine k-means of the rows of ``X`` ``(N, D)`` (any real dtype; any array-API array,
    or a host array whose row slices read as NumPy, e.g. Zarr): one clustering.

    ``init``: ``"k-means++"`` (random stream 0) or unit-normalisable centroids ``(k, D)``.
    ``device``: None computes in ``X``'s namespace, else see
    :func:`~lcseg_steps.clustering.backend.array_namespace`.
    """
    what = "kmeans: "
    X, k, (N, D), args = _setup(what, X, k, max_iter, tol, seed, device, 1)
    C0 = _check_init(init, (k, D), what)
    C0 = None if C0 is None else C0[None]
    hist: list[float] = []
    lab, C, J, it = _solve(X, np.array([0, N]), np.array([0]), k, C0, *args, what, hist)
    return KMeansResult(C[0], lab, float(J[0]), int(it[0]), hist)


def kmeans_ranges(
    X,
    k: int,
    *,
    offsets,
    init="k-means++",
    max_iter: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
    threads: int = 1,
    streams=None,
) -> GroupedKMeansResult:
    """Cosine k-means of every range of rows ``offsets[i]:offsets[i + 1]`` of ``X`` (as
    :func:`kmeans`), ``offsets`` ``(P + 1,)`` int: ``P`` clusterings.

    ``init``: ``"k-means++"`` or centroids ``(P, k, D)``. ``threads``: problems solved at
    once (NumPy). Results do not depend on ``threads`` nor on blocking. ``streams``
    ``(P,)``: the random stream of each problem's k-means++ start, default ``i`` for problem
    ``i``; all 0 solves each as if it were alone.
    """
    what = "kmeans_ranges: "
    X, k, (N, D), args = _setup(what, X, k, max_iter, tol, seed, device, threads)
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
    return GroupedKMeansResult(C, lab, J, it, np.arange(P, dtype=np.int64))


def kmeans_groups(
    X,
    k: int,
    *,
    groups,
    init="k-means++",
    max_iter: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
    threads: int = 1,
) -> GroupedKMeansResult:
    """Cosine k-means of the rows of ``X`` (as :func:`kmeans`) of every distinct value of
    ``groups`` ``(N,)`` int, in ascending order: one clustering per group value ``g``, from
    random stream ``-1 - g``.

    ``init``: ``"k-means++"``, centroids ``(P, k, D)`` in ascending group order, or a
    mapping group value -> ``(k, D)``. ``threads``: groups solved at once (NumPy).
    """
    what = "kmeans_groups: "
    X, k, (N, D), args = _setup(what, X, k, max_iter, tol, seed, device, threads)
    xp = args[3]
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
    return GroupedKMeansResult(C, labels, J, it, values)


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
    init_sample: int | None = 200_000,
    max_iter: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    cache_bytes: int | None = None,
) -> KMeansResult:
    """Cosine k-means over rows streamed from ``blocks()``, one read of the blocks per pass.

    ``blocks()`` returns a fresh iterable of ``(n_i, D)`` real arrays (or lazy blocks with
    ``shape`` and ``dtype`` that ``np.asarray`` reads, e.g. ``store.RowBlock``), in the same
    order every call. The first blocks are kept (on NumPy as read, elsewhere as float32
    copies) while their size as float32 stays within ``cache_bytes`` (None:
    ``backend._cache_budget``); the others are read again every pass, so memory is bounded
    by the cache, ``2 * threads`` blocks and the ``(n,)`` labels (the loop keeps them anyway).
    k-means++ runs on a seeded uniform sample of at most ``init_sample`` rows (None: all;
    the default is the schema's ``clustering.init_sample``).
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
    labels = np.concatenate([lab[0] for lab in labs])
    return KMeansResult(C[0], labels, float(J[0]), int(it[0]), history)
