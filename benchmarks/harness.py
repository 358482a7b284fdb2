"""Timing, interleaving, result records and the results table of the lcseg benchmarks.

Every benchmark compares *ours* (lcseg code) with a *reference* (a bare library call,
sklearn, ...) and reports one :class:`Result`. The timing rule lives here once
(:func:`interleaved`): one untimed warm-up of each side, then ``repeats`` rounds of
``ours, reference`` in turn, and the median of each side. Interleaving spreads the
load of other work on a shared machine over both sides alike.

Measurements that need their own process (peak RSS) go through :func:`run_child`, which
runs ``module:function(**kwargs)`` in a fresh interpreter and returns its dict plus the
process' peak resident memory.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("speedup", "overhead", "absolute")
_CHILD_MARK = "@@BENCH_CHILD@@ "


@dataclass
class Context:
    """What every benchmark gets: the size scale, a scratch folder and the timing policy.

    ``scale`` is ``"full"``, ``"quick"`` or ``"tiny"`` (smoke tests only); ``threads`` is the
    thread budget given to BLAS / OpenMP / torch on both sides of a comparison.
    """

    scale: str
    tmp: Path
    repeats: int = 3
    threads: int = 2
    log: Callable[[str], None] = print

    def pick(self, full, quick, tiny=None):
        """The size of the current scale (``tiny`` defaults to ``quick``)."""
        if self.scale == "full":
            return full
        if self.scale == "quick" or tiny is None:
            return quick
        return tiny


@dataclass
class Result:
    """One line of the results table and one object of the JSON output.

    ``kind``: ``"speedup"`` (``ratio = reference_s / ours_s``, meets when ``>= target``),
    ``"overhead"`` (``ratio = ours_s / reference_s``, meets when ``<= target``) or
    ``"absolute"`` (``reference_s`` is the time budget, ``ratio = budget / ours_s``, meets
    when ``>= target``, which is 1).
    """

    name: str
    kind: str
    ours_s: float
    reference_s: float
    target: float
    sizes: dict[str, Any]
    runs: int
    extra: dict[str, Any] = field(default_factory=dict)
    ratio: float = 0.0
    meets: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        ours, ref = float(self.ours_s), float(self.reference_s)
        if self.kind == "overhead":
            self.ratio = ours / ref if ref > 0 else float("inf")
            self.meets = bool(self.ratio <= self.target)
        else:
            self.ratio = ref / ours if ours > 0 else float("inf")
            self.meets = bool(self.ratio >= self.target)

    def to_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def schema_defaults(section: str) -> dict[str, Any]:
    """``{key: default}`` of one config block, read from the config schema (their one home)."""
    import yaml

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    with open(schema) as fh:
        props = yaml.safe_load(fh)["properties"][section]["properties"]
    return {key: sub["default"] for key, sub in props.items()}


def default_crf_params():
    """The schema's default ``lcseg_steps.stages.refine.CRFParams``."""
    from dataclasses import fields

    from lcseg_steps.perimage.crf import CRFParams

    refine = schema_defaults("refine")
    return CRFParams(**{f.name: refine[f.name] for f in fields(CRFParams)})


def _jsonable(v: Any) -> Any:
    """Plain JSON types (numpy scalars/arrays, paths, tuples) for ``json.dump``."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, float) and v != v:
        return None
    return v


# ---------------------------------------------------------------------------------------
# timing


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call of ``fn()`` and its return value."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@dataclass
class Timings:
    """Per-side wall times of :func:`interleaved` (``last`` holds each side's last return)."""

    ours: list[float]
    reference: list[float]
    last: dict[str, Any]

    @property
    def ours_s(self) -> float:
        return statistics.median(self.ours)

    @property
    def reference_s(self) -> float:
        return statistics.median(self.reference)

    def summary(self) -> dict[str, list[float]]:
        return {
            "ours_runs_s": [round(t, 4) for t in self.ours],
            "reference_runs_s": [round(t, 4) for t in self.reference],
        }


def interleaved(
    ours: Callable[[], Any],
    reference: Callable[[], Any],
    repeats: int = 3,
    warmup: bool = True,
    log: Callable[[str], None] | None = None,
) -> Timings:
    """Warm each side up once (untimed), then time ``repeats`` rounds of (ours, reference).

    Returns all run times; the benchmark reports the medians. Each side's last return value
    is kept in ``last`` so callers can check the answers agree.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    last: dict[str, Any] = {}
    if warmup:
        last["ours"] = ours()
        last["reference"] = reference()
    t_ours, t_ref = [], []
    for r in range(repeats):
        t, last["ours"] = time_call(ours)
        t_ours.append(t)
        t, last["reference"] = time_call(reference)
        t_ref.append(t)
        if log is not None:
            log(f"  round {r + 1}/{repeats}: ours {t_ours[-1]:.3f}s, reference {t_ref[-1]:.3f}s")
    return Timings(t_ours, t_ref, last)


def default_threads() -> int:
    """The cores this job may use: SLURM's ``SLURM_CPUS_PER_TASK`` when set, else the
    process' CPU affinity (what a container or ``taskset`` grants), else every core."""
    given = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def limit_threads(n: int) -> None:
    """Give BLAS, OpenMP (sklearn) and torch ``n`` threads in this process."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(n))
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(int(n))
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------
# child processes (peak memory)


def _status_kb(key: str) -> int:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/self/status``; 0 if unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset this process' peak RSS (Linux ``clear_refs``); False when not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """Current resident memory of this process in MiB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since start or the last :func:`reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if not kb:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def run_child(target: str, kwargs: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``module:function(**kwargs)`` in a fresh interpreter and return its result dict.

    The function's dict gets ``vmhwm_end_mb`` added: the child's peak RSS (``VmHWM``) since
    its start or its last :func:`reset_peak_rss`. (``ru_maxrss`` is not used: across
    fork + exec it keeps the parent's larger peak.) Stdout of the
    child other than the result line is ignored; a failure raises ``RuntimeError`` with the
    tail of its stderr.
    """
    cmd = [sys.executable, "-m", "benchmarks.harness", target, json.dumps(_jsonable(kwargs))]
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(_CHILD_MARK)]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"child {target} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len(_CHILD_MARK) :])


def _child_main(target: str, kwargs_json: str) -> None:
    module, _, func = target.partition(":")
    out = dict(getattr(importlib.import_module(module), func)(**json.loads(kwargs_json)))
    out["vmhwm_end_mb"] = peak_rss_mb()
    print(_CHILD_MARK + json.dumps(_jsonable(out)), flush=True)


# ---------------------------------------------------------------------------------------
# reporting


def machine_info() -> dict[str, Any]:
    """Facts that bound the numbers: cores, load, CPU vector extensions, library versions."""
    flags: set[str] = set()
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "torch", "timm", "sklearn", "zarr", "snakemake"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception:  # a missing optional package is reported, not fatal
            versions[mod] = None
    return {
        "cpu_count": os.cpu_count(),
        "cores_available": default_threads(),
        "cpu_model": model,
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg": os.getloadavg(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line saying where the figures were measured: CPU model, cores, vector flags."""
    m = info or machine_info()
    flags = " ".join(m["cpu_flags"]) or "none read"
    return (
        f"measured on: {m['cpu_model'] or 'unknown CPU'}, {m['cores_available']} of "
        f"{m['cpu_count']} cores available; flags: {flags}"
    )


def _fmt(x: float) -> str:
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:.0f}"


def format_table(results: list[Result]) -> str:
    """A fixed-width table: name, kind, ours_s, reference_s, ratio, target, meets."""
    head = ("name", "kind", "ours_s", "reference_s", "ratio", "target", "meets")
    rows = [
        (
            r.name,
            r.kind,
            _fmt(r.ours_s),
            _fmt(r.reference_s),
            _fmt(r.ratio),
            ("<= " if r.kind == "overhead" else ">= ") + f"{r.target:g}",
            "yes" if r.meets else "NO",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
