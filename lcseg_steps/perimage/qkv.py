"""q/k/v attention features of one batch through a frozen timm ViT, and the one way an
image becomes a backbone input: the per-image work of ``extract`` (every shard) and of
``lcseg_steps.apply.model_zarr`` (one new image). Library module: imports no stage."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from lcseg_steps.data.images import normalize, resize_for_backbone

FEATURES = ("q", "k", "v")
PRECISIONS = ("auto", "float32", "bfloat16")
# bf16 autocast is used by "auto" only when every q/k/v row of the first image stays this
# close (cosine similarity) to its float32 value
BF16_MIN_COS = 0.9999


def _attn_of(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks: not a timm ViT")
    depth = len(blocks)
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} out of range for a backbone of depth {depth}")
    attn = getattr(blocks[layer], "attn", None)
    if attn is None or not isinstance(getattr(attn, "qkv", None), torch.nn.Linear):
        raise ValueError(
            f"block {layer} of {type(model).__name__} has no fused attn.qkv Linear; "
            "only timm ViT-style attention is supported"
        )
    return attn


def qkv_dim(model: torch.nn.Module, layer: int = -1) -> int:
    """Width D of the q/k/v features of block ``layer`` (heads * head_dim)."""
    attn = _attn_of(model, layer)
    return attn.qkv.out_features // 3


def qkv_features(
    model: torch.nn.Module, x: torch.Tensor, layer: int = -1, feats=FEATURES
) -> dict[str, torch.Tensor]:
    """q, k, v of block ``layer``, the final CLS token and the CLS->patch attention.

    Only the q/k/v named in ``feats`` are returned (and laid out: the others cost no
    copy); CLS and CLS attention always are.

    ``x``: ``(B, 3, h, w)`` float, ImageNet-normalised, ``h``/``w`` multiples of the patch.
    Returns float32 tensors on ``x``'s device:

    - ``q``, ``k``, ``v``: ``(B, N, D)`` with heads concatenated (D = heads * head_dim) and
      N = (h/p) * (w/p) patch tokens in row-major order; CLS and register tokens dropped.
      q and k are taken after ``attn.q_norm``/``attn.k_norm`` when those are not Identity
      (qk-norm models), i.e. exactly what the attention softmax sees. DINO and DINOv2
      have none, so for them q/k/v are the raw ``qkv`` projection.
    - ``cls``: ``(B, embed_dim)`` the final normalised CLS token, ``forward_features(x)[:, 0]``.
    - ``cls_attn``: ``(B, N)`` CLS-query attention over patches, averaged over heads: the
      softmax of ``q_cls . k^T * scale`` runs over ALL tokens (prefix included) and the
      patch entries are kept, so a row sums to less than 1. It is recomputed from q and k
      because fused attention never materialises the matrix.
    """
    attn = _attn_of(model, layer)
    heads, head_dim = attn.num_heads, attn.qkv.out_features // 3 // attn.num_heads
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))
    captured: list[torch.Tensor] = []
    handle = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            tokens = model.forward_features(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"attn.qkv of block {layer} ran {len(captured)} times in one forward")

    with torch.inference_mode():
        qkv = captured[0].float()
        b, t, _ = qkv.shape
        qkv = qkv.reshape(b, t, 3, heads, head_dim)
        q, k, v = qkv.unbind(2)  # each (B, T, heads, head_dim)
        if not isinstance(attn.q_norm, torch.nn.Identity):
            q = attn.q_norm.float()(q)
        if not isinstance(attn.k_norm, torch.nn.Identity):
            k = attn.k_norm.float()(k)
        scale = float(getattr(attn, "scale", head_dim**-0.5))
        logits = torch.einsum("bhd,bthd->bht", q[:, 0], k) * scale
        cls_attn = logits.softmax(dim=-1).mean(dim=1)[:, n_prefix:]
        parts = {"q": q, "k": k, "v": v}
        out = {
            f: parts[f][:, n_prefix:].reshape(b, t - n_prefix, heads * head_dim)
            for f in FEATURES
            if f in feats
        }
        return {**out, "cls": tokens[:, 0].float(), "cls_attn": cls_attn}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: CUDA, or a CPU whose
    AVX512-BF16/AMX instructions oneDNN uses (elsewhere bf16 autocast is emulated, slower)."""
    if device.type == "cuda":
        return True
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def bf16_fidelity(model: torch.nn.Module, x: torch.Tensor, layer: int = -1) -> float:
    """The smallest cosine similarity of a q/k/v row of ``x`` under bf16 autocast to the
    same row in float32."""
    ref = qkv_features(model, x, layer)
    with autocast(x.device, True):
        low = qkv_features(model, x, layer)
    return min(
        float(F.cosine_similarity(ref[f].flatten(0, 1), low[f].flatten(0, 1), dim=1).min())
        for f in FEATURES
    )


def equal_shape_runs(shapes: list[tuple[int, ...]], batch_size: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each batch of consecutive inputs of one shape, at most
    ``batch_size`` long, in order: what one forward pass can stack."""
    runs = []
    lo = 0
    while lo < len(shapes):
        hi = lo + 1
        while hi < len(shapes) and hi - lo < batch_size and shapes[hi] == shapes[lo]:
            hi += 1
        runs.append((lo, hi))
        lo = hi
    return runs


def backbone_input(image: np.ndarray, patch: int, long_side: int | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, h, w)`` float32: resized whole (``h``, ``w``
    multiples of ``patch``, long side ``long_side``) and ImageNet-normalised."""
    return normalize(resize_for_backbone(image, patch, long_side))


def as_stored(out: dict[str, torch.Tensor], feats) -> dict[str, np.ndarray]:
    """:func:`qkv_features`' tensors as a features store holds them: the q/k/v of
    ``feats`` in float16 (cast by torch: vectorised, where NumPy's float16 cast is scalar
    code), CLS and CLS attention in float32, as NumPy arrays; the other q/k/v dropped."""
    return {
        name: (t.to(torch.float16) if name in FEATURES else t.float()).cpu().numpy()
        for name, t in out.items()
        if name in feats or name not in FEATURES
    }
