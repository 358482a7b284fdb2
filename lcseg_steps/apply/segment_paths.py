"""``lcseg segment`` on files and folders: which images, under which output names, and the
loop that segments them with one loaded model, batching the forward passes.

Inputs (``plan``): each argument is an image file or a folder searched recursively as
``dataset: folder`` searches ``dataset.root`` (``data.folder.scan_folder``: the same
extensions, hidden files and folders left out, every file not used listed with its
reason). A path that does not exist is listed too.

Output names (``plan``): a prediction is ``<out>/<name>.png`` where ``<name>`` keeps the
input's extension, so ``a.jpg`` and ``a.png`` never meet: an image found under a folder
argument keeps its path relative to that folder (``photos/2024/a.jpg`` given as
``photos`` -> ``<out>/2024/a.jpg.png``), an image given as a file keeps its file name
(``<out>/a.jpg.png``). Two arguments that still give one name (``x/a.jpg`` and
``y/a.jpg``) get ``~2``, ``~3`` ... in argument order (``a.jpg~2.png``); one file given
twice is segmented once.

Bad inputs never stop the batch (``segment_all``): an image that cannot be decoded, is
too small for one patch or fails later is skipped with its reason, and the caller lists
every skipped path in ``<out>/skipped.tsv``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcseg_steps.data.folder import IMAGE_EXTENSIONS, scan_folder
from lcseg_steps.data.image_table import write_cleaned_tsv
from lcseg_steps.data.images import ImageError, patch_grid_size

SKIPPED_COLUMNS = ("path", "reason")


@dataclass(frozen=True)
class Planned:
    """One image to segment: its ``path`` and its output ``name`` (relative, ``/``-separated,
    without the ``.png`` the output adds)."""

    path: str
    name: str


def plan(args: Sequence[str]) -> tuple[list[Planned], list[tuple[str, str]]]:
    """Command-line paths -> the images to segment, in argument order (a folder's in
    sorted order), and ``(path, reason)`` of every path or file not used (the rules in
    the module docstring)."""
    items: list[Planned] = []
    left: list[tuple[str, str]] = []
    seen: set[str] = set()
    taken: set[str] = set()

    def add(path: str, name: str) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}~{n}", n + 1
        taken.add(unique)
        items.append(Planned(path, unique))

    for arg in args:
        if os.path.isdir(arg):
            scan = scan_folder(arg, IMAGE_EXTENSIONS)
            for rel in scan.images:
                add(os.path.join(arg, rel), rel)
            left += [(os.path.join(arg, rel), reason) for rel, reason in scan.left_out]
            if not scan.images:
                left.append((arg, "folder holds no image file"))
        elif os.path.exists(arg):
            add(arg, os.path.basename(arg))
        else:
            left.append((arg, "no such file or folder"))
    return items, left


def _decoded(
    items: Sequence[Planned], read: Callable[[str], np.ndarray], ahead: int
) -> Iterator[tuple[Planned, np.ndarray | None, str]]:
    """``(item, image or None, reason)`` in order, decoding up to ``ahead`` images ahead
    on a worker thread (the decoders release the GIL) while the caller computes."""

    def one(item: Planned) -> tuple[Planned, np.ndarray | None, str]:
        try:
            return item, read(item.path), ""
        except ImageError as exc:
            return item, None, _reason(item.path, exc)

    with ThreadPoolExecutor(1) as pool:
        pending = [pool.submit(one, it) for it in items[:ahead]]
        for i in range(len(items)):
            done = pending.pop(0)
            if i + ahead < len(items):
                pending.append(pool.submit(one, items[i + ahead]))
            yield done.result()


def _reason(path: str, exc: Exception) -> str:
    text = str(exc)
    for prefix in (f"{path}: ", f"{Path(path)}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def default_jobs() -> int:
    """``lcseg segment``'s default ``--jobs``: the cores this process may use (at most 8),
    the number of worker processes that refine (dense CRF) beside the forward passes; 1
    on one core (everything in this process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class _Refiner:
    """Step 5 of ``Model.segment`` (``model.refine_foreground``) of the images in flight:
    inline when ``jobs`` is 1, else in a pool of ``jobs`` worker processes (the dense CRF
    is single-threaded C++ that holds the GIL) while this process runs the forward
    passes. A pool that breaks (a worker killed) leaves the rest to this process."""

    def __init__(self, jobs: int):
        self.pool = None
        if jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # forkserver: workers forked from a clean process, not from this one with
            # torch's thread pools and the decoding thread
            self.pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("forkserver"))

    def submit(self, args: tuple) -> Callable[[], np.ndarray]:
        """Start ``refine_foreground(*args)`` (``Model.refine_job``); returns what waits for
        the ``(H, W)`` foreground."""
        from lcseg_steps.perimage.crf import refine_foreground

        if self.pool is None:
            return lambda: refine_foreground(*args)
        fut = self.pool.submit(refine_foreground, *args)

        def result() -> np.ndarray:
            from concurrent.futures.process import BrokenProcessPool

            try:
                return fut.result()
            except BrokenProcessPool:
                self.close()
                return refine_foreground(*args)

        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def segment_all(
    model,
    items: Sequence[Planned],
    write: Callable[[Planned, object], None],
    *,
    batch_size: int = 8,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> list[tuple[str, str]]:
    """Segment every item with ``model`` (a loaded :class:`lcseg_steps.apply.model_zarr.Model`) and
    hand each :class:`~lcseg_steps.apply.model_zarr.Segmentation` to ``write``, in order; returns
    ``(path, reason)`` of the items skipped.

    Images are decoded ahead on a thread; up to ``batch_size`` of them go through the
    backbone together (``Model.features_batch``: one forward pass per run of equal input
    sizes), then each is segmented from its features by the parts of ``Model.segment``
    (``score``, ``refine_foreground``, ``finish``). With ``jobs`` > 1 the refinement runs
    in ``jobs`` worker processes: a batch's images are refined there while this process
    finishes the previous batch (regions, the crops' forward passes, ``write``) and runs
    the next batch's forward passes. The results are those of ``jobs`` 1, byte for byte
    (the same functions on the same arrays).
    """
    from lcseg_steps.apply.model_zarr import _as_image

    skipped: list[tuple[str, str]] = []
    batch: list[tuple[Planned, np.ndarray]] = []
    # scored images whose refinement runs: (item, image, scored, wait for the foreground)
    pending: list[tuple[Planned, np.ndarray, object, Callable[[], np.ndarray]]] = []
    refiner = _Refiner(jobs if model.attrs["refine"]["crf"] and len(items) > 1 else 1)

    def skip(item: Planned, reason: str) -> None:
        skipped.append((item.path, reason))
        log(f"skipped {item.path}: {reason}")

    def failed(item: Planned, exc: Exception) -> None:
        skip(item, f"{type(exc).__name__}: {exc}")

    def finish(upto: int) -> None:
        """Finish the pending images until ``upto`` are left, oldest first."""
        while len(pending) > upto:
            item, img, scored, fg = pending.pop(0)
            try:
                write(item, model.finish(img, scored, fg()))
            except (ImageError, ValueError, RuntimeError) as exc:
                failed(item, exc)

    def flush() -> None:
        a = model.attrs
        fits = []
        for item, img in batch:
            try:  # too small for one patch: skip it before the batch's forward pass
                patch_grid_size(*img.shape[:2], a["patch_size"], a["long_side"])
                fits.append((item, img))
            except ImageError as exc:
                skip(item, _reason(item.path, exc))
        feats = model.features_batch([img for _, img in fits], batch_size=batch_size)
        n_before = len(pending)
        for (item, img), f in zip(fits, feats, strict=True):
            try:
                scored = model.score(img, f)
                pending.append(
                    (item, img, scored, refiner.submit(model.refine_job(img, scored, item.path)))
                )
            except (ImageError, ValueError, RuntimeError) as exc:
                failed(item, exc)
        batch.clear()
        finish(len(pending) - n_before if refiner.pool is not None else 0)

    try:
        for item, img, reason in _decoded(items, _as_image, ahead=max(2, batch_size)):
            if img is None:
                skip(item, reason)
                continue
            batch.append((item, img))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        finish(0)
    finally:
        refiner.close()
    return skipped


def write_skipped(rows: Sequence[tuple[str, str]], path: str | os.PathLike) -> Path:
    """``<out>/skipped.tsv``: header ``path reason``, one row per path not segmented
    (header only when none)."""
    return write_cleaned_tsv(path, SKIPPED_COLUMNS, rows)
