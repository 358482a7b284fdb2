"""Plotting helpers shared by the stages that draw figures (``evaluate``, the analysis
table, the report's eigengap curves)."""

from __future__ import annotations


def figure(width: float, height: float):
    """A bare matplotlib ``Figure`` of ``width`` x ``height`` inches at 100 dpi, constrained
    layout.

    A bare Figure renders through Agg without touching pyplot's global backend state, so
    it works headless and in worker processes.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def eigengap_figure(eigenvalues, chosen: int, k_range, what: str):
    """The eigengap curve of ``n_classes`` / ``n_categories: auto``: the smallest
    eigenvalues ``λ1 <= λ2 <= ...`` of the normalised Laplacian (``(m,)``) against their
    index, the range ``[kmin, kmax]`` shaded and the chosen ``k`` marked between
    ``λ_k`` and ``λ_{k+1}`` (the largest gap). ``what``: the key, for the title.
    A small ``Figure`` (5 x 2.6 inches)."""
    import numpy as np

    lam = np.asarray(eigenvalues, dtype=np.float64)
    idx = np.arange(1, len(lam) + 1)
    fig = figure(5.0, 2.6)
    ax = fig.add_subplot()
    kmin, kmax = (int(k) for k in k_range)
    ax.axvspan(kmin, min(kmax, len(lam) - 1) + 1, color="#e8f0fa", label="range")
    ax.plot(idx, lam, "o-", ms=3, lw=1, color="#1f77b4", label="λ_i")
    if 1 <= chosen < len(lam):
        ax.plot([chosen, chosen + 1], lam[[chosen - 1, chosen]], "-", lw=3, color="#d62728")
        ax.axvline(chosen + 0.5, color="#d62728", ls="--", lw=1, label=f"chosen: {chosen}")
    ax.set_xlabel("i")
    ax.set_ylabel("eigenvalue λ_i of L_sym")
    ax.set_title(f"{what}: auto, largest eigengap λ_(k+1) - λ_k at k = {chosen}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def figure_rgb(fig):
    """A ``Figure`` rendered by Agg -> ``(H, W, 3)`` uint8 RGB."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
