"""The cosine (spherical) k-means algorithm, written against the array API: the k-means++
start, the assignment step and the Lloyd loop of ``B`` problems at once on arrays
``(B, m, D)`` in the namespace of their input (backends: :mod:`lcseg_steps.clustering.backend`;
row sources and public drivers: :mod:`lcseg_steps.clustering.kmeans`).

Definitions shared by every row source (our choices; the paper only says "cosine k-means"):

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

Only the stopping test (objective and empty-cluster count per problem) leaves the device
during a pass. On NumPy, after the first pass :func:`_sweep_np` moves only the rows that
changed cluster between the member sums (other namespaces recompute them), and :func:`_step`
ends a pass in one compiled call.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import array_api_compat as aac
import numpy as np

from lcseg_steps.clustering.backend import _as_float32, _is_np, _kernels, _ordered_map, _to_host

EPS = 1e-12


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
