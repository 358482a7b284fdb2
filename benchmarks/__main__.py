"""Performance benchmarks of lcseg against bare reference implementations.

    python -m benchmarks                          # full sizes (tens of minutes on 2 cores)
    python -m benchmarks --quick                  # smaller sizes, under ~3 minutes
    python -m benchmarks --only kmeans,dag --json out.json

Prints a table (name, kind, ours_s, reference_s, ratio, target, meets) and writes JSON
holding every result, the sizes used, extra measurements and the machine's load. ``--only``
takes benchmark names or prefixes (``kmeans`` selects ``kmeans_image`` and
``kmeans_dataset``). Run ``--list`` to see the names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    bench_apply,
    bench_assign,
    bench_dag,
    bench_extract,
    bench_kmeans,
    bench_photo,
    bench_pipeline,
    bench_refine,
)
from benchmarks.harness import (
    Context,
    Result,
    default_threads,
    format_table,
    limit_threads,
    machine_info,
    machine_line,
)

# name -> function(ctx) -> list[Result]; order is the run order (cheap and independent first)
BENCHMARKS: dict[str, Callable[[Context], list[Result]]] = {
    "extract": bench_extract.run,
    "extract_datapath": bench_extract.run_datapath,
    "extract_checksums": bench_extract.run_checksums,
    "kmeans_image": bench_kmeans.run_image,
    "kmeans_dataset": bench_kmeans.run_dataset,
    "refine": bench_refine.run,
    "assign": bench_assign.run,
    "pipeline": bench_pipeline.run,
    "apply": bench_apply.run,
    "segment_folder": bench_apply.run_folder,
    "photo": bench_photo.run,
    "dag": bench_dag.run,
}


def select(only: str | None) -> list[str]:
    """Benchmark names chosen by a comma-separated list of names or prefixes."""
    if not only:
        return list(BENCHMARKS)
    chosen = []
    for word in (w.strip() for w in only.split(",")):
        if not word:
            continue
        hits = [n for n in BENCHMARKS if n == word or n.startswith(word)]
        if not hits:
            raise SystemExit(f"--only: no benchmark named {word!r}; choose from {list(BENCHMARKS)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (under ~3 minutes)")
    ap.add_argument(
        "--scale",
        choices=("full", "quick", "tiny"),
        help="size scale; tiny is for smoke tests only (overrides --quick)",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", help="comma-separated benchmark names or prefixes")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS/OpenMP/torch and k-means threads (default: the cores this job may use, "
        f"{default_threads()} here)",
    )
    ap.add_argument("--tmp", type=Path, help="scratch folder (default: a new temp dir)")
    ap.add_argument("--list", action="store_true", help="list benchmark names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    scale = args.scale or ("quick" if args.quick else "full")
    args.threads = args.threads or default_threads()
    machine = machine_info()
    names = select(args.only)
    limit_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: list[Result] = []
    errors: dict[str, str] = {}
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lcseg-bench-", dir=args.tmp) as tmp:
        for name in names:
            ctx = Context(
                scale=scale,
                tmp=Path(tmp) / name,
                repeats=args.repeats,
                threads=args.threads,
                log=log,
            )
            ctx.tmp.mkdir(parents=True)
            log(f"== {name} ({scale}), load {os.getloadavg()[0]:.2f}")
            t0 = time.perf_counter()
            try:
                for r in BENCHMARKS[name](ctx):
                    r.extra.setdefault("loadavg_after", os.getloadavg())
                    results.append(r)
            except Exception as exc:  # one broken benchmark must not hide the others
                errors[name] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
            log(f"== {name} done in {time.perf_counter() - t0:.1f}s")
    total = time.perf_counter() - t_all

    print(format_table(results))
    print(machine_line(machine) + f"; {args.threads} threads")
    for name, err in errors.items():
        print(f"{name}: FAILED {err}")
    print(f"total {total:.1f}s ({scale}), load average {os.getloadavg()[0]:.2f}")
    if args.json:
        doc = {
            "scale": scale,
            "repeats": args.repeats,
            "threads": args.threads,
            "total_s": total,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "machine": machine,
            "results": [r.to_json() for r in results],
            "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
