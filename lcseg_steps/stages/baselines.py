"""Baseline foreground masks on the patch grid, one per image of a feature store.

All masks are ragged like the store (``lcseg_steps.stores.layout``): ``(N,)`` uint8 over the
``N`` patches of a shard, image ``i`` owning rows ``offsets[i]:offsets[i + 1]`` laid out
row-major on ``grid[i]`` ``(rows, cols)``.

- ``all_background``: no patch is foreground (the floor of any foreground metric).
- ``centre_prior``: a centred ellipse (or box) of area ``fraction`` of the grid (the
  config's ``analysis.centre_fraction``), in patch
  units; a patch is foreground when its centre lies inside (boundary included), so the
  realised share approaches ``fraction`` on large grids. The ellipse has the grid's aspect
  ratio (semi-axes ``s * gh / 2`` and ``s * gw / 2``, ``s = sqrt(4 fraction / pi)``, so
  ``fraction <= pi / 4``); the box has sides ``sqrt(fraction) * gh`` and
  ``sqrt(fraction) * gw``.
- ``cls_attention_mask``: DINO's attention mask (Caron et al. 2021): the patches that hold
  ``mass`` (``analysis.attention_mass``) of the CLS attention. Per image the attention
  is normalised to sum 1, sorted in descending order, and a patch is kept while the mass
  *before* it is below ``mass`` (the smallest top set reaching ``mass``, up to 1e-9 of
  rounding; equal values keep patch order). DINO's code does the same with an ascending
  sort (keep where the ascending cumulative sum exceeds ``1 - mass``). The store's
  ``cls_attn`` is the mean over heads, so this is the mask of the head-averaged
  attention, where DINO draws one mask per head.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.stores.layout import open_store, patch_layout, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

BASELINES = ("all_background", "centre_prior", "cls_attention")
_MASS_TOL = 1e-9  # mass reached up to rounding counts as reached (0.4 + 0.3 + 0.2 vs 0.9)


def _sizes(offsets: np.ndarray) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be a non-decreasing 1-D array starting at 0")
    return np.diff(offsets)


def all_background(offsets: np.ndarray) -> np.ndarray:
    """``offsets`` ``(n + 1,)`` -> ``(N,)`` uint8 zeros."""
    return np.zeros(int(np.asarray(offsets)[-1]), dtype=np.uint8)


def centre_mask(grid: tuple[int, int], fraction: float, shape: str = "ellipse") -> np.ndarray:
    """One image's centre prior: ``(gh * gw,)`` bool, row-major (see the module docstring)."""
    gh, gw = (int(x) for x in grid)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    r = (np.arange(gh) + 0.5 - gh / 2)[:, None]  # patch-centre offsets from the grid centre
    c = (np.arange(gw) + 0.5 - gw / 2)[None, :]
    if shape == "ellipse":
        if fraction > math.pi / 4:
            raise ValueError(
                f"a centred ellipse covers at most pi/4 = {math.pi / 4:.4f} of the grid, "
                f"got fraction {fraction}"
            )
        s = math.sqrt(4 * fraction / math.pi)
        inside = (r / (s * gh / 2)) ** 2 + (c / (s * gw / 2)) ** 2 <= 1
    elif shape == "box":
        s = math.sqrt(fraction)
        inside = (np.abs(r) <= s * gh / 2) & (np.abs(c) <= s * gw / 2)
    else:
        raise ValueError(f"centre prior shape must be 'ellipse' or 'box', got {shape!r}")
    return inside.ravel()


def centre_prior(grids: np.ndarray, fraction: float, shape: str) -> np.ndarray:
    """``grids`` ``(n, 2)`` -> ``(N,)`` uint8: :func:`centre_mask` of every image."""
    parts = [centre_mask(tuple(g), fraction, shape) for g in np.asarray(grids)]
    return np.concatenate(parts).astype(np.uint8) if parts else np.zeros(0, np.uint8)


def top_mass_mask(attn: np.ndarray, mass: float) -> np.ndarray:
    """One image's ``(P,)`` non-negative attention -> ``(P,)`` bool: the smallest set of
    highest values holding ``mass`` of the total (all False when the total is 0)."""
    a = np.asarray(attn, dtype=np.float64)
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    total = a.sum()
    keep = np.zeros(a.shape, dtype=bool)
    if a.size == 0 or total <= 0:
        return keep
    order = np.argsort(-a, kind="stable")
    shares = a[order] / total
    before = np.concatenate([[0.0], np.cumsum(shares)[:-1]])  # mass above each patch
    keep[order] = before < mass - _MASS_TOL
    return keep


def cls_attention_mask(cls_attn: np.ndarray, offsets: np.ndarray, mass: float) -> np.ndarray:
    """``cls_attn`` ``(N,)``, ``offsets`` ``(n + 1,)`` -> ``(N,)`` uint8: per image, the
    patches holding ``mass`` of its CLS attention (:func:`top_mass_mask`)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    _sizes(offsets)
    out = np.zeros(int(offsets[-1]), dtype=np.uint8)
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        out[lo:hi] = top_mass_mask(cls_attn[lo:hi], mass)
    return out


def baseline_masks(
    features: str | os.PathLike,
    baseline: str,
    *,
    centre_fraction: float,
    attention_mass: float,
    shape: str = "ellipse",
) -> dict[str, np.ndarray]:
    """A feature store -> ``{"fg": (N,) uint8, "offsets", "grid", "image_ids"}`` for one
    baseline of :data:`BASELINES` (``centre_fraction`` and ``shape``: the centre prior;
    ``attention_mass``: the CLS-attention mask)."""
    fs = open_store(features)
    layout = patch_layout(fs)
    if baseline == "all_background":
        fg = all_background(layout["offsets"])
    elif baseline == "centre_prior":
        fg = centre_prior(layout["grid"], centre_fraction, shape)
    elif baseline == "cls_attention":
        fg = cls_attention_mask(np.asarray(fs["cls_attn"][:]), layout["offsets"], attention_mass)
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if len(fg) != int(layout["offsets"][-1]):
        raise ValueError(f"{features}: grid and offsets disagree on the number of patches")
    return {"fg": fg, **layout}


def run_baseline(
    features: str | os.PathLike,
    out: str | os.PathLike,
    baseline: str,
    *,
    centre_fraction: float,
    attention_mass: float,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """One shard's baseline mask as a ``patch_masks`` store in the layout ``merge`` writes
    (``merged`` ``(N,)`` uint8, ``score`` ``(N,)`` float32, ``offsets``, ``grid``,
    ``image_ids``), so refine and the later stages run on it unchanged. The score is the
    mask itself: refine thresholds (or CRF-refines) a hard 0/1 score."""
    masks = baseline_masks(
        features, baseline, centre_fraction=centre_fraction, attention_mass=attention_mass
    )
    fg = masks.pop("fg")
    sizes = np.diff(masks["offsets"])
    fg_per_image = np.add.reduceat(fg, masks["offsets"][:-1]) if len(fg) else sizes * 0
    log(
        f"baseline {baseline}: foreground share {fg.mean() if len(fg) else 0.0:.3f}; "
        f"{int((fg_per_image == 0).sum())} of {len(sizes)} image(s) with empty foreground"
    )
    return write_store(
        out,
        {"merged": fg, "score": fg.astype(np.float32), **masks},
        {**attrs, "baseline": baseline},
    )


def run(job: Job) -> Path:
    """The analysis rule of a baseline: ``job.input.features`` (one shard's feature store)
    -> ``job.output[0]`` (its ``patch_masks`` store). Settings: ``baseline`` (one of
    :data:`BASELINES`), ``centre_fraction``, ``attention_mass`` (no baseline draws
    anything at random)."""
    return run_baseline(
        job.input.features, job.output[0], **job.settings, attrs=job.attrs, log=job.log
    )
