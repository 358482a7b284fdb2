"""The array backends of the cosine k-means (:mod:`lcseg_steps.clustering.lloyd`): which
namespace runs it, moving rows to and from it, the float16 cast, threads, and NumPy's own
compiled kernels.

Any array-API namespace runs the loop (NumPy, CuPy, torch, ``array_api_strict``). NumPy
(the namespace itself, which implements the standard from 2.1 on) has two backend functions
of its own, compiled with numba (:func:`_kernels`): the sweep that moves only the rows that
changed cluster between the member sums, and the end of a pass in one call. On NumPy,
kernels run single-threaded (:func:`_single_threaded_kernels`) and Python threads work on
independent problems or blocks (:func:`_ordered_map`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import array_api_compat as aac
import numpy as np

STREAM_CACHE_BYTES = 1 << 30  # float32 copies of streamed blocks kept (callers size memory)
TORCH_CAST_WORTH = 1 << 27  # float16 elements cast above which importing torch pays off

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
    """Bytes of streamed rows ``kmeans.kmeans_stream`` keeps: ``requested`` when given; on
    NumPy ``STREAM_CACHE_BYTES``; on a device half its free memory, at least that."""
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


def _half_np(a, xp) -> bool:
    """Whether ``a`` is kept as read: float16 rows on NumPy (the kernels read them)."""
    return _is_np(xp) and a.dtype == np.float16


# ---------------------------------------------------------------------------------------
# NumPy's compiled kernels


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
