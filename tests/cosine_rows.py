"""Rows and row sources for the cosine k-means tests (tests/test_backend.py,
tests/test_lloyd.py, tests/test_kmeans.py): the namespaces every source runs in, unit rows,
blobs on the sphere, ragged problems and block streams."""

import numpy as np

CPU = {"device": "cpu"}


def as_strict(a):
    import array_api_strict

    return array_api_strict.asarray(np.asarray(a, dtype=np.float32))


def as_torch(a):
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())


NAMESPACES = {"numpy": lambda a: a, "strict": as_strict, "torch": as_torch}


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.where(n > 0, a / np.where(n > 0, n, 1), 0)


def sphere_blobs(rng, n_per, centres, noise):
    """Rows around each of ``centres`` on the unit sphere, labels in blob order."""
    rows = [unit(c + noise * rng.standard_normal((n_per, len(c)))) for c in centres]
    return np.concatenate(rows).astype(np.float32), np.repeat(np.arange(len(centres)), n_per)


def blocks_of(X, size):
    n = X.shape[0]
    return lambda: (X[i : min(i + size, n), ...] for i in range(0, n, size))


def ragged(rng, sizes, D, dtype=np.float16):
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return rng.standard_normal((off[-1], D)).astype(dtype), off


def counted_blocks(arr, rows: int):
    """Lazy blocks of ``rows`` rows of a Zarr array that count their reads: returns the
    per-block read counts (a list, updated in place) and the ``blocks()`` callable."""
    from lcseg_steps.stores.layout import RowBlock, iter_row_blocks

    reads = [0] * -(-arr.shape[0] // rows)

    class Counted(RowBlock):
        def __array__(self, dtype=None, copy=None):
            reads[self.lo // rows] += 1
            return super().__array__(dtype, copy)

    def lazy():
        return (Counted(b.array, b.lo, b.hi) for b in iter_row_blocks(arr, lazy=True))

    return reads, lazy
