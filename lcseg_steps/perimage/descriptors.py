"""CLS-token descriptors of object-region crops, for clustering regions into classes."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import cv2
import numpy as np
import torch

from lcseg_steps.data.images import ImageError, normalize, patch_grid_size, resize_for_backbone


def _policy_size(h: int, w: int, patch: int, long_side: int) -> tuple[int, int] | None:
    """``patch_grid_size``, or ``None`` where a side would round to zero patches."""
    try:
        return patch_grid_size(h, w, patch, long_side)
    except ImageError:
        return None


def _input_size(h: int, w: int, patch: int, long_side: int) -> tuple[int, int]:
    """Backbone input size ``(h, w)`` of a crop: ``patch_grid_size``, except that a sliver
    whose short side would round to zero patches gets one patch on that side."""
    size = _policy_size(h, w, patch, long_side)
    if size is not None:
        return size
    # A thin region (a pole, a railing) is still an object; stretching its short side
    # to one patch beats failing the whole shard over it.
    scale = long_side / max(h, w)
    return (
        max(patch, int(round(h * scale)) // patch * patch),
        max(patch, int(round(w * scale)) // patch * patch),
    )


def _resized(crop: np.ndarray, size: tuple[int, int], patch: int, long_side: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 crop -> ``(*size, 3)`` uint8: the crop at its backbone input size."""
    if _policy_size(crop.shape[0], crop.shape[1], patch, long_side) == size:
        return resize_for_backbone(crop, patch, long_side)
    # the sliver case of ``_input_size``
    smaller = size[0] * size[1] < crop.shape[0] * crop.shape[1]
    interp = cv2.INTER_AREA if smaller else cv2.INTER_CUBIC
    return cv2.resize(crop, (size[1], size[0]), interpolation=interp)


def _prepare(crop: np.ndarray, size: tuple[int, int], patch: int, long_side: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 crop -> ``(3, *size)`` float32 normalised backbone input."""
    return normalize(_resized(crop, size, patch, long_side))


def shrink_crop(crop: np.ndarray, patch: int, long_side: int) -> np.ndarray:
    """A crop brought to the input size :func:`crop_cls_descriptors` gives it, when that is
    smaller: its descriptor is the same, byte for byte, and a caller holding every crop of
    a shard (``objects``) or of a photo (``model.segment``) holds kilobytes per crop, not
    its full-resolution pixels. A crop that would not map onto itself is returned as is."""
    crop = np.asarray(crop)
    h, w = crop.shape[:2]
    size = _input_size(h, w, patch, long_side)
    if size[0] * size[1] >= h * w or _policy_size(*size, patch, long_side) != size:
        return crop
    return _resized(crop, size, patch, long_side)


def _check_crops(crops: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, crop in enumerate(crops):
        a = np.asarray(crop)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"crop {i}: expected (h, w, 3) uint8 RGB, got {a.shape} {a.dtype}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"crop {i}: has a zero side, shape {a.shape}")
        out.append(a)
    return out


def crop_cls_descriptors(
    model: torch.nn.Module,
    info: Any,
    crops: list[np.ndarray],
    *,
    long_side: int = 224,
    batch_size: int = 32,
    device: str = "cpu",
    bf16: bool = False,
) -> np.ndarray:
    """Final (normalised) CLS token of each crop: ``model.forward_features(x)[:, 0]``.

    ``info`` is the ``BackboneInfo`` of ``model`` (``patch_size``, ``embed_dim``); the model
    is moved to ``device``. ``crops``: list of ``(h, w, 3)`` uint8 RGB region crops (see
    ``objects.region_crop``) -> ``(n, embed_dim)`` float32 in ``crops`` order.

    Each crop gets the input policy of ``images.resize_for_backbone`` (longer side to
    ``long_side``, sides rounded down to patch multiples), except that a side that would
    round to zero patches is stretched to one patch. Crops of equal input size are run
    together in batches of ``batch_size`` (under bf16 autocast when ``bf16``). A crop with a zero
    side or of the wrong shape/dtype is a ``ValueError`` naming its index.
    """
    from lcseg_steps.perimage.backbone import resolve_device

    patch, dim = int(info.patch_size), int(info.embed_dim)
    if long_side < patch:
        raise ValueError(f"long_side {long_side} is smaller than one {patch}px patch")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    crops = _check_crops(list(crops))
    out = np.zeros((len(crops), dim), dtype=np.float32)
    if not crops:
        return out

    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(crops):
        groups.setdefault(_input_size(c.shape[0], c.shape[1], patch, long_side), []).append(i)

    dev = torch.device(resolve_device(device))
    model.to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for size, idx in groups.items():
        for lo in range(0, len(idx), batch_size):
            batch = idx[lo : lo + batch_size]
            # Inputs are built per batch so memory holds one batch, not every crop.
            x = np.stack([_prepare(crops[i], size, patch, long_side) for i in batch])
            with torch.inference_mode(), autocast:
                tokens = model.forward_features(torch.from_numpy(x).to(dev))
            cls = tokens[:, 0].float().cpu().numpy()
            if cls.shape[1] != dim:
                raise RuntimeError(f"backbone CLS width {cls.shape[1]} != info.embed_dim {dim}")
            out[batch] = cls
    return out
