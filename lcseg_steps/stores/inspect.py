"""Human-readable views of any lcseg Zarr store (``lcseg inspect``).

Works on every stage's store by convention rather than by stage: arrays whose first
axis has ``offsets[-1]`` rows are ragged per-patch arrays, arrays with one row per
entry of ``image_ids`` are per-image arrays, anything else is global.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from lcseg_steps.stores.layout import image_index, iter_row_blocks, open_store


def _stats(blocks) -> dict[str, float] | None:
    """min / max / mean / std over an iterable of numeric blocks, in one pass, float64 sums."""
    n, s, ss, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
    for b in blocks:
        if b.size == 0:
            continue
        b = b.astype(np.float64, copy=False)
        finite = b[np.isfinite(b)]
        n += finite.size
        s += float(finite.sum())
        ss += float((finite * finite).sum())
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if n == 0:
        return None
    mean = s / n
    return {"min": lo, "max": hi, "mean": mean, "std": max(ss / n - mean * mean, 0.0) ** 0.5}


def _fmt_stats(st: dict[str, float] | None) -> str:
    if st is None:
        return "empty"
    return " ".join(f"{k}={v:.4g}" for k, v in st.items())


def _is_numeric(arr: zarr.Array) -> bool:
    return np.dtype(arr.dtype).kind in "biuf"


def _array_kind(store: zarr.Group, arr: zarr.Array) -> str:
    n_patches = int(store["offsets"][-1]) if "offsets" in store else None
    n_images = store["image_ids"].shape[0] if "image_ids" in store else None
    if arr.ndim and n_patches is not None and arr.shape[0] == n_patches and arr.name != "/offsets":
        return "per-patch"
    if arr.ndim and n_images is not None and arr.shape[0] == n_images:
        return "per-image"
    return "global"


def describe(path: str | Path) -> str:
    """Arrays (shape, dtype, chunks, kind, summary statistics) and attrs of a store."""
    store = open_store(path)
    lines = [f"store {path}"]
    if store.attrs.get("format") == "lcseg-model":
        from lcseg_steps.apply.model_zarr import load_model

        lines = [load_model(path).summary(), *lines]
    for name in sorted(store.array_keys()):
        arr = store[name]
        kind = _array_kind(store, arr)
        head = f"  {name:<16} {str(arr.shape):<18} {str(arr.dtype):<14} chunks={arr.chunks} {kind}"
        if _is_numeric(arr):
            stats = _stats(iter_row_blocks(arr)) if arr.ndim else _stats([np.asarray(arr[...])])
            head += f"  {_fmt_stats(stats)}"
        else:
            first = [str(x) for x in np.asarray(arr[: min(3, arr.shape[0])])] if arr.ndim else []
            head += f"  first: {', '.join(first)}"
        lines.append(head)
    lines.append("attrs:")
    lines.append(json.dumps(dict(store.attrs), indent=2, sort_keys=True, default=str))
    return "\n".join(lines)


def describe_image(path: str | Path, image_id: str) -> str:
    """One image's slice of every per-patch and per-image array of a store."""
    store = open_store(path)
    if "image_ids" not in store:
        raise ValueError(f"{path}: this store has no per-image arrays (no image_ids)")
    i = image_index(store, image_id)
    lines = [f"image {image_id} (index {i}) in {path}"]
    if "grid" in store:
        gh, gw = (int(x) for x in store["grid"][i])
        lines.append(f"  patch grid {gh} x {gw}")
    off = np.asarray(store["offsets"][:]) if "offsets" in store else None
    for name in sorted(store.array_keys()):
        arr = store[name]
        kind = _array_kind(store, arr)
        if kind == "per-patch":
            rows = np.asarray(arr[int(off[i]) : int(off[i + 1])])
        elif kind == "per-image":
            rows = np.asarray(arr[i])
        else:
            continue
        if _is_numeric(arr):
            shown = rows.tolist() if rows.size <= 4 else _fmt_stats(_stats([rows]))
            lines.append(f"  {name:<16} {str(rows.shape):<14} {shown}")
        else:
            lines.append(f"  {name:<16} {rows}")
    return "\n".join(lines)


def _index_for(path: Path, index: str | Path | None) -> Path:
    """``images.tsv`` of the run a store belongs to: given, or found in a parent folder
    (stores live at results/<run>/[seed<s>/]<stage>/<shard>.zarr)."""
    if index:
        cand = Path(index)
        if not cand.is_file():
            raise FileNotFoundError(f"{cand}: image index not found")
        return cand
    for parent in list(path.resolve().parents)[:4]:
        if (parent / "images.tsv").is_file():
            return parent / "images.tsv"
    raise FileNotFoundError(f"no images.tsv above {path} (pass --index images.tsv)")


def render_image(
    path: str | Path, image_id: str, out: str | Path, index: str | Path | None = None
) -> Path:
    """Draw the image and every scalar per-patch array of the store over it, as one PNG.

    Per-patch maps (CLS attention, level masks, scores) are shown on the patch grid
    stretched over the image, so each panel lines up with the picture.
    """
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lcseg_steps.data.image_table import read_index
    from lcseg_steps.data.images import read_rgb

    path = Path(path)
    store = open_store(path)
    if "image_ids" not in store or "grid" not in store:
        raise ValueError(f"{path}: no per-image patch grids to draw")
    i = image_index(store, image_id)
    index_path = _index_for(path, index)
    records = {r.image_id: r for r in read_index(index_path)}
    if image_id not in records:
        raise KeyError(f"image {image_id!r} is not in the index")
    img_path = Path(records[image_id].path)
    if not img_path.is_absolute() and not img_path.exists():
        # the index holds paths relative to the workflow directory, results/<run>/../..
        img_path = index_path.resolve().parents[2] / img_path
    img = read_rgb(img_path, records[image_id].orientation)
    gh, gw = (int(x) for x in store["grid"][i])
    off = np.asarray(store["offsets"][:])
    panels = [("image", img, None)]
    for name in sorted(store.array_keys()):
        arr = store[name]
        if arr.ndim == 1 and _array_kind(store, arr) == "per-patch" and _is_numeric(arr):
            grid = np.asarray(arr[int(off[i]) : int(off[i + 1])], dtype=np.float32)
            grid = grid.reshape(gh, gw)
            up = cv2.resize(grid, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
            panels.append((name, up, grid))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, data, _) in zip(axes[0], panels, strict=True):
        if data.ndim == 3:
            ax.imshow(data)
        else:
            ax.imshow(img)
            ax.imshow(data, alpha=0.6, cmap="inferno")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{image_id} — {path.name}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
