"""Logging for Snakemake ``script:`` adapters: everything a stage prints goes to its log."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def make_logger(stream) -> Callable[[str], None]:
    """A ``log(msg)`` that prefixes elapsed time and flushes, so `tail -f` shows progress."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:8.1f}s] {msg}", file=stream, flush=True)

    return log


@contextlib.contextmanager
def stage_log(path: str | Path | None) -> Iterator[Callable[[str], None]]:
    """Redirect stdout and stderr (warnings, tracebacks) into ``path`` for one stage.

    Tracebacks land in the log because the exception propagates while stderr still
    points at the file; Snakemake then reports the log path.
    """
    if path is None:
        yield make_logger(sys.stderr)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        try:
            yield make_logger(fh)
        except BaseException:
            import traceback

            traceback.print_exc(file=fh)
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def limit_threads(n: int) -> None:
    """Use the cores Snakemake gave the rule (``threads:``) for BLAS and torch, no more.

    torch is limited only when the stage has already imported it: importing it just to
    set its threads would cost a stage that never uses it ~1.5 s. A forward pass may round
    its float32 sums differently under another ``n`` (see docs/reliability.md,
    Determinism); lcseg's own computations give the same bytes whatever ``n``.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(n))
    except ImportError:  # threadpoolctl ships with scikit-learn; absent means no limit
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(n))
