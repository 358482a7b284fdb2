"""Plotting helpers shared by the stages that draw figures (``evaluate``, the analysis
table)."""

from __future__ import annotations


def figure(width: float, height: float):
    """A bare matplotlib ``Figure`` of ``width`` x ``height`` inches at 100 dpi, constrained
    layout.

    A bare Figure renders through Agg without touching pyplot's global backend state, so
    it works headless and in worker processes.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")
