"""The report's pictures: class labels, patch masks and region outlines drawn over an
image, their legends, and images as PNG data URIs (``(H, W, 3)`` uint8 RGB in, uint8
out). Used by :mod:`lcseg_steps.figures.gallery` and :mod:`lcseg_steps.figures.page`."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import cv2
import numpy as np

VOID = 255
VOID_RGB = np.array([255, 255, 255], dtype=np.float64)
MASK_RGB = np.array([255, 40, 40], dtype=np.float64)
PANEL_MAX_SIDE = 256


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"{what} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return image


def _blend(base: np.ndarray, colour: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """``round((1 - weight) * base + weight * colour)`` as uint8 (rounding half up)."""
    out = (1.0 - weight) * base.astype(np.float64) + weight * colour
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    alpha: float = 0.5,
    *,
    draw_zero: bool = False,
) -> np.ndarray:
    """Class labels drawn over an image.

    image ``(H, W, 3)`` uint8 RGB, labels ``(H, W)`` integer ids in ``[0, 255]``, palette
    ``(256, 3)`` uint8 -> ``(H, W, 3)`` uint8. Label 0 (background) leaves the pixel
    unchanged, unless ``draw_zero`` (scene mode: 0 is a class like the others); label c
    in 1..254 becomes ``round((1 - alpha) * pixel + alpha * palette[c])``; 255 (void) is
    blended the same way with white.
    """
    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image {image.shape[:2]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > VOID):
        raise ValueError(f"labels must lie in [0, 255], got [{labels.min()}, {labels.max()}]")
    palette = np.asarray(palette)
    if palette.shape != (256, 3):
        raise ValueError(f"palette must be (256, 3), got {palette.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colours = palette.astype(np.float64)
    colours[VOID] = VOID_RGB
    out = image.copy()
    drawn = labels != 0 if not draw_zero else np.ones(labels.shape, dtype=bool)
    out[drawn] = _blend(image[drawn], colours[labels[drawn]], alpha)
    return out


def patch_mask_image(
    image: np.ndarray, grid_mask: np.ndarray, alpha: float = 0.55, dim: float = 0.35
) -> np.ndarray:
    """A patch-level mask stretched over the image.

    image ``(H, W, 3)`` uint8 RGB, grid_mask ``(gh, gw)`` bool or float in ``[0, 1]`` (a
    soft score; NaN counts as 0) -> ``(H, W, 3)`` uint8. Patch ``(i, j)`` covers pixels
    ``[i H/gh, (i+1) H/gh) x [j W/gw, (j+1) W/gw)`` (nearest stretch, the geometry of
    ``lcseg_steps.perimage.crf.upsample_score``). A pixel of mask value m is tinted red by
    ``alpha * m`` and darkened by ``dim * (1 - m)``, so foreground patches stand out from
    the background.
    """
    image = _check_image(image)
    m = np.asarray(grid_mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"grid_mask must be a non-empty (gh, gw) array, got shape {m.shape}")
    m = np.nan_to_num(m.astype(np.float64), nan=0.0)
    if m.min() < 0 or m.max() > 1:
        raise ValueError(f"grid_mask values must lie in [0, 1], got [{m.min()}, {m.max()}]")
    h, w = image.shape[:2]
    gh, gw = m.shape
    rows = np.arange(h) * gh // h
    cols = np.arange(w) * gw // w
    full = m[rows[:, None], cols[None, :]][..., None]  # (H, W, 1)
    darker = image.astype(np.float64) * (1.0 - dim * (1.0 - full))
    return _blend(darker, MASK_RGB, alpha * full)


def region_outlines(image: np.ndarray, region_map: np.ndarray) -> np.ndarray:
    """The outlines of object regions drawn over an image.

    image ``(H, W, 3)`` uint8 RGB, region_map ``(H, W)`` integer region ids (0
    background) -> ``(H, W, 3)`` uint8: regions tinted in the mask red at half weight,
    and every pixel with a 4-neighbour of another id (a cut between two parts of one
    component, or a region's edge) in white, so touching parts show as separate. The
    lines are widened to about one pixel of a ``PANEL_MAX_SIDE`` thumbnail."""
    image = _check_image(image)
    m = np.asarray(region_map).astype(np.int64)
    if m.shape != image.shape[:2]:
        raise ValueError(f"region_map shape {m.shape} does not match image {image.shape[:2]}")
    edge = np.zeros(m.shape, bool)
    edge[1:] |= m[1:] != m[:-1]
    edge[:-1] |= m[:-1] != m[1:]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    width = max(1, round(max(m.shape) / PANEL_MAX_SIDE))
    if width > 1:  # a 1 px line would vanish when the panel is shrunk
        edge = cv2.dilate(edge.view(np.uint8), np.ones((width, width), np.uint8)) > 0
    out = image.copy()
    inside = m > 0
    out[inside] = _blend(image[inside], MASK_RGB, 0.35)
    out[edge] = 255
    return out


def thumbnail_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side at most ``max_side`` (never upscaled), ratio kept."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def png_data_uri(image: np.ndarray, longest: int = PANEL_MAX_SIDE) -> str:
    """``(H, W, 3)`` uint8 RGB -> ``data:image/png;base64,...`` of the image downscaled
    (``INTER_AREA``) to ``thumbnail_size(H, W, longest)``."""
    image = _check_image(image)
    h, w = thumbnail_size(image.shape[0], image.shape[1], longest)
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding of a {image.shape} image failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def css_rgb(rgb: Sequence[int] | np.ndarray) -> str:
    r, g, b = (int(x) for x in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# the level masks' look (``patch_mask_image``): red tint = foreground, dimmed = background
MASK_LEGEND: tuple[tuple[str, str | None], ...] = (
    ("foreground", css_rgb(MASK_RGB)),
    ("background (dimmed)", "#595959"),
)
SCORE_LEGEND: tuple[tuple[str, str | None], ...] = (
    (
        "foreground score 0 (dim) to 1 (red)",
        f"linear-gradient(to right, #595959, {css_rgb(MASK_RGB)})",
    ),
)


def label_legend(
    labels: np.ndarray,
    palette: np.ndarray,
    name_of,
    void: str = "void",
    *,
    draw_zero: bool = False,
) -> list[tuple[str, str | None]]:
    """The legend of an ``overlay``: one ``(name_of(id), palette colour)`` per label id
    present in ``labels`` (ascending), background 0 left out (it is not drawn) unless
    ``draw_zero``, 255 as ``void`` in white; a map of background only says so."""
    legend: list[tuple[str, str | None]] = []
    labels = np.asarray(labels)
    if labels.dtype == np.uint8 and labels.size:  # a histogram: no sort, no int64 copy
        flat = np.ascontiguousarray(labels).reshape(-1, 1)
        hist = cv2.calcHist([flat], [0], None, [256], [0, 256]).ravel()
        ids = np.flatnonzero(hist > 0).tolist()
    else:
        ids = np.unique(labels).tolist()
    for i in ids:
        if i == 0 and not draw_zero:
            continue
        legend.append((void, "#ffffff") if i == VOID else (name_of(i), css_rgb(palette[i])))
    return legend or [("background only: nothing drawn", None)]


def matched_labels(pred: np.ndarray, mapping: Sequence[int]) -> np.ndarray:
    """Predicted cluster ids -> matched class ids through evaluate's ``mapping`` (cluster id
    -> class id, -1 unmatched); unmatched clusters, ids past the mapping and classes that
    do not fit a label map become ``VOID`` (255)."""
    m = np.asarray(mapping, dtype=np.int64).reshape(-1)
    lut = np.full(VOID + 1, VOID, dtype=np.uint8)
    n = min(len(m), VOID + 1)
    ok = (m[:n] >= 0) & (m[:n] < VOID)
    lut[:n][ok] = m[:n][ok]
    pred = np.asarray(pred)
    return lut[np.clip(pred, 0, VOID)]
