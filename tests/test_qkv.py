"""The q/k/v forward pass and the backbone input (``lcseg_steps.perimage.qkv``).

``qkv_features`` is checked on a hand-made toy ViT (the attribute layout of a timm ViT:
``blocks[i].attn.qkv``, ``num_heads``, ``q_norm``/``k_norm``, ``num_prefix_tokens``,
``forward_features``) against q/k/v and the CLS attention computed in NumPy from the
block's weights and its input tokens, head by head."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from lcseg_steps.data.images import IMAGENET_MEAN, IMAGENET_STD
from lcseg_steps.perimage.qkv import (
    FEATURES,
    as_stored,
    autocast,
    backbone_input,
    bf16_fidelity,
    equal_shape_runs,
    qkv_dim,
    qkv_features,
)

D, HEADS, PATCH = 8, 2, 2


class _Attn(nn.Module):
    def __init__(self, qk_norm: bool):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.num_heads = HEADS
        self.scale = (D // HEADS) ** -0.5
        self.q_norm = nn.LayerNorm(D // HEADS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(D // HEADS) if qk_norm else nn.Identity()
        self.proj = nn.Linear(D, D)

    def forward(self, t):
        b, n, _ = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        a = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, D))


class _Block(nn.Module):
    def __init__(self, qk_norm: bool):
        super().__init__()
        self.attn = _Attn(qk_norm)

    def forward(self, t):
        return t + self.attn(t)


class _ToyViT(nn.Module):
    """Patches of PATCH x PATCH pixels embedded linearly, ``n_prefix`` learned prefix
    tokens (CLS first, then registers), ``depth`` blocks and a final LayerNorm."""

    def __init__(self, depth=2, n_prefix=1, qk_norm=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(3 * PATCH * PATCH, D)
        self.prefix = nn.Parameter(torch.randn(1, n_prefix, D))
        self.blocks = nn.ModuleList(_Block(qk_norm) for _ in range(depth))
        self.norm = nn.LayerNorm(D)
        self.num_prefix_tokens = n_prefix
        if qk_norm:  # non-trivial norm parameters, so that skipping them would show
            with torch.no_grad():
                for blk in self.blocks:
                    blk.attn.q_norm.weight.uniform_(0.5, 2.0)
                    blk.attn.k_norm.bias.uniform_(-1.0, 1.0)
        self.eval()

    def block_input(self, x, layer):
        b = x.shape[0]
        p = nn.functional.unfold(x, PATCH, stride=PATCH).transpose(1, 2)  # row-major patches
        t = torch.cat([self.prefix.expand(b, -1, -1), self.embed(p)], 1)
        for blk in self.blocks[: layer % len(self.blocks)]:
            t = blk(t)
        return t

    def forward_features(self, x):
        t = self.block_input(x, 0)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)


def _layer_norm(a, weight, bias, eps=1e-5):
    mu = a.mean(-1, keepdims=True)
    var = a.var(-1, keepdims=True)
    return (a - mu) / np.sqrt(var + eps) * weight + bias


def _reference(model, x, layer):
    """q, k, v of the patch tokens and the CLS attention, in float64 NumPy from the
    block's qkv weights, head by head."""
    attn = model.blocks[layer].attn
    with torch.no_grad():
        t = model.block_input(x, layer).double().numpy()
    w = attn.qkv.weight.detach().double().numpy()
    bias = attn.qkv.bias.detach().double().numpy()
    qkv = t @ w.T + bias  # (B, T, 3D): q, k, v blocks of D, heads of D/HEADS within each
    hd = D // HEADS
    q, k, v = qkv[..., :D].copy(), qkv[..., D : 2 * D].copy(), qkv[..., 2 * D :].copy()
    for norm, a in ((attn.q_norm, q), (attn.k_norm, k)):
        if isinstance(norm, nn.LayerNorm):
            nw, nb = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
            for h in range(HEADS):
                a[..., h * hd : (h + 1) * hd] = _layer_norm(a[..., h * hd : (h + 1) * hd], nw, nb)
    n_prefix = model.num_prefix_tokens
    b, n_tokens, _ = t.shape
    cls_attn = np.zeros((b, n_tokens - n_prefix))
    for i in range(b):
        for h in range(HEADS):
            s = slice(h * hd, (h + 1) * hd)
            logits = np.array([q[i, 0, s] @ k[i, j, s] for j in range(n_tokens)]) / np.sqrt(hd)
            e = np.exp(logits - logits.max())
            cls_attn[i] += (e / e.sum())[n_prefix:] / HEADS
    return q[:, n_prefix:], k[:, n_prefix:], v[:, n_prefix:], cls_attn


@pytest.mark.parametrize(
    ("layer", "n_prefix", "qk_norm"), [(0, 1, False), (-1, 1, False), (1, 3, False), (-1, 1, True)]
)
def test_qkv_features_equal_a_recomputation_from_the_block_weights(layer, n_prefix, qk_norm):
    model = _ToyViT(n_prefix=n_prefix, qk_norm=qk_norm)
    x = torch.randn(2, 3, 6, 10, generator=torch.Generator().manual_seed(1))
    out = qkv_features(model, x, layer)
    q, k, v, cls_attn = _reference(model, x, layer)
    n = (6 // PATCH) * (10 // PATCH)
    assert set(out) == {*FEATURES, "cls", "cls_attn"}
    assert out["q"].shape == (2, n, D) and out["cls_attn"].shape == (2, n)
    assert all(t.dtype == torch.float32 for t in out.values())
    for name, ref in (("q", q), ("k", k), ("v", v), ("cls_attn", cls_attn)):
        np.testing.assert_allclose(out[name].numpy(), ref, rtol=1e-5, atol=1e-5, err_msg=name)
    with torch.no_grad():
        np.testing.assert_array_equal(out["cls"].numpy(), model.forward_features(x)[:, 0].numpy())
    # prefix tokens take part of the softmax mass
    assert (out["cls_attn"].sum(1) < 1).all()
    assert not model.blocks[layer].attn.qkv._forward_hooks  # hook removed


def test_qkv_dim_and_the_checks_of_the_model():
    model = _ToyViT(depth=3)
    assert qkv_dim(model) == qkv_dim(model, 0) == D
    with pytest.raises(ValueError, match="layer 3 out of range .* depth 3"):
        qkv_dim(model, 3)
    with pytest.raises(ValueError, match="no .blocks: not a timm ViT"):
        qkv_dim(nn.Linear(2, 2))
    model.blocks[0].attn.qkv = nn.Identity()
    with pytest.raises(ValueError, match="block 0 .* no fused attn.qkv Linear"):
        qkv_features(model, torch.zeros(1, 3, 4, 4), 0)


def test_bf16_fidelity_is_a_cosine_close_to_one():
    model = _ToyViT()
    x = torch.randn(1, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    fid = bf16_fidelity(model, x)
    assert 0.99 < fid <= 1.0 + 1e-6
    assert isinstance(autocast(x.device, False), contextlib.nullcontext)
    assert isinstance(autocast(x.device, True), torch.autocast)


def test_equal_shape_runs():
    a, b = (3, 4, 4), (3, 8, 4)
    assert equal_shape_runs([], 4) == []
    assert equal_shape_runs([a, a, a, b, b, a], 2) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert equal_shape_runs([a] * 5, 8) == [(0, 5)]
    assert equal_shape_runs([a, b, a], 8) == [(0, 1), (1, 2), (2, 3)]


def test_backbone_input_normalises_and_fits_the_patch():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    x = backbone_input(img, 16, None)  # already multiples of the patch: not resized
    ref = (img.astype(np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert x.shape == (3, 32, 48) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    y = backbone_input(rng.integers(0, 256, size=(50, 75, 3), dtype=np.uint8), 8, 64)
    assert y.shape[0] == 3 and y.shape[1] % 8 == 0 and y.shape[2] % 8 == 0
    assert max(y.shape[1:]) == 64


def test_as_stored_keeps_the_chosen_features_in_float16():
    out = {
        "q": torch.randn(1, 4, D),
        "k": torch.randn(1, 4, D),
        "v": torch.randn(1, 4, D),
        "cls": torch.randn(1, D, dtype=torch.float64),
        "cls_attn": torch.rand(1, 4),
    }
    got = as_stored(out, ["k"])
    assert set(got) == {"k", "cls", "cls_attn"}
    assert got["k"].dtype == np.float16 and got["cls"].dtype == got["cls_attn"].dtype == np.float32
    np.testing.assert_array_equal(got["k"], out["k"].numpy().astype(np.float16))
    assert all(isinstance(a, np.ndarray) for a in got.values())
