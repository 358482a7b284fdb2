"""What 2 processes can gain over 1 on this machine for the refine stage's CRF work:
``refine_parallel``'s ceiling, measured without the pool.

    python -m benchmarks.refine_ceiling [--images 8] [--repeats 3] [--json OUT]

Writes ``--images`` synthetic scenes (those of ``bench_refine``), then runs one fresh
process per core, each pinned to its core (``sched_setaffinity``) and holding half of
the images: ``refine_images(processes=1)`` on its half, first alone (one process at a
time, the other core idle of ours), then both at once, started together. Medians of
``--repeats``. ``ceiling = (alone_0 + alone_1) / max(together_0, together_1)``: what a
perfect pool of 2 would reach against 1 process doing both halves, with no pool
overhead; the gap to 2 is what the two cores slow each other (shared caches, memory,
SMT siblings, other work on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def child(cpu: int, items_json: str) -> None:
    """Pinned to ``cpu``: warm up on one image, say ready, wait for a line on stdin, time
    the CRF of all items, print the seconds; repeat until stdin closes."""
    from benchmarks.harness import default_crf_params, limit_threads
    from lcseg_steps.stages.refine import refine_images

    os.sched_setaffinity(0, {cpu})
    limit_threads(1)
    work = [(p, np.asarray(g, dtype=np.float32)) for p, g in json.loads(items_json)]
    kw = dict(processes=1, crf=True, threshold=0.5, params=default_crf_params(), log=lambda _m: 0)
    refine_images(work[:1], **kw)
    print("ready", flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        refine_images(work, **kw)
        print(f"{time.perf_counter() - t0:.6f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.refine_ceiling")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("CPU", "ITEMS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(int(args.child[0]), args.child[1])
        return 0
    from benchmarks.bench_refine import write_scenes

    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        raise SystemExit("refine_ceiling needs 2 cores")
    with tempfile.TemporaryDirectory(prefix="lcseg-ceiling-") as tmp:
        scenes = write_scenes(Path(tmp), args.images, 360, 480)
        items = [(str(p), g.tolist()) for p, _, g in scenes]
        halves = [items[: len(items) // 2], items[len(items) // 2 :]]
        root = Path(__file__).resolve().parent.parent
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.refine_ceiling",
                    "--child",
                    str(c),
                    json.dumps(h),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=root,
                env=env,
            )
            for c, h in zip(cpus, halves, strict=True)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"

        def go(which: list[int]) -> list[float]:
            for i in which:
                procs[i].stdin.write("go\n")
                procs[i].stdin.flush()
            return [float(procs[i].stdout.readline()) for i in which]

        alone: list[list[float]] = [[], []]
        together: list[list[float]] = [[], []]
        for _ in range(args.repeats):
            alone[0] += go([0])
            alone[1] += go([1])
            for i, t in enumerate(go([0, 1])):
                together[i].append(t)
        for p in procs:
            p.stdin.close()
            p.wait()
    a = [statistics.median(x) for x in alone]
    t = [statistics.median(x) for x in together]
    doc = {
        "images": args.images,
        "cpus": cpus,
        "alone_s": a,
        "together_s": t,
        "alone_runs": alone,
        "together_runs": together,
        "ceiling": sum(a) / max(t),
        "slowdown_together": [tt / aa for tt, aa in zip(t, a, strict=True)],
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
