import warnings

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from lcseg_steps.perimage.backbone import (
    BACKBONES,
    embed_dim_of,
    load_backbone,
    resolve_device,
    weights_of_source,
)

torch.set_num_threads(1)

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
VIT16 = "vit_small_patch16_224"


def _out(model, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h, w, generator=g)
    with torch.inference_mode():
        return model.forward_features(x)


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Offline, with empty Hugging Face and torch hub caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))


def test_short_names_are_timm_pretrained_tags():
    import timm

    for short, full in BACKBONES.items():
        arch, tag = full.split(".")
        assert tag in ("dino", "lvd142m"), short
        assert timm.is_model(arch), full


def test_embed_dim_of_reads_the_tables_without_building():
    assert embed_dim_of("dino_vits16") == 384
    assert embed_dim_of("dinov2_vitb14_reg") == 768
    assert embed_dim_of(VIT16, {"embed_dim": 48}) == 48  # overrides win
    assert embed_dim_of("resnet50") is None  # not a ViT family of the table
    for short in BACKBONES:
        assert embed_dim_of(short) is not None, short


def test_embed_dim_of_agrees_with_the_built_model():
    _, info = load_backbone("vit_tiny_patch16_224", "random", overrides={"depth": 1})
    assert embed_dim_of("vit_tiny_patch16_224") == info.embed_dim == 192
    _, info = load_backbone(VIT16, "random", overrides={"depth": 1})
    assert embed_dim_of(VIT16) == info.embed_dim


def test_random_init_is_seeded_frozen_and_described():
    a, info = load_backbone(VIT16, "random", seed=3, overrides=TINY)
    b, _ = load_backbone(VIT16, "random", seed=3, overrides=TINY)
    c, _ = load_backbone(VIT16, "random", seed=4, overrides=TINY)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert info.weights == "random:seed=3" and info.weights_warning is None
    assert (info.patch_size, info.embed_dim, info.num_heads, info.depth) == (16, 48, 2, 2)
    assert info.num_prefix_tokens == 1


def test_dynamic_size_on_non_square_input():
    model, _ = load_backbone(VIT16, "random", overrides=TINY)
    assert _out(model, 32, 48).shape == (2, 1 + 2 * 3, 48)
    assert _out(model, 64, 16).shape == (2, 1 + 4 * 1, 48)


def test_dino_official_checkpoint_plain_and_nested(tmp_path):
    src, _ = load_backbone(VIT16, "random", seed=1, overrides=TINY)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        assert key in sd  # DINO's official key names are timm's
    plain = tmp_path / "dino_plain.pth"
    torch.save(sd, plain)

    # a DINO training checkpoint: teacher + DDP-wrapped student, projection head included
    head = {"head.mlp.0.weight": torch.randn(8, 48), "head.last_layer.weight_g": torch.ones(8, 1)}
    teacher = {f"backbone.{k}": v for k, v in sd.items()} | head
    student = {f"module.backbone.{k}": v + 1.0 for k, v in sd.items()}
    full = tmp_path / "dino_full.pth"
    torch.save({"teacher": teacher, "student": student, "epoch": 100}, full)

    want = _out(src)
    for path in (plain, full):
        model, info = load_backbone(VIT16, str(path), seed=9, overrides=TINY)
        assert info.weights == f"file:{path}" and info.weights_warning is None
        torch.testing.assert_close(_out(model), want, rtol=0, atol=0)


def test_safetensors_checkpoint(tmp_path):
    src, _ = load_backbone(VIT16, "random", seed=1, overrides=TINY)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model, _ = load_backbone(VIT16, str(path), seed=5, overrides=TINY)
    torch.testing.assert_close(_out(model), _out(src), rtol=0, atol=0)


def test_dinov2_official_registers_checkpoint(tmp_path):
    name = "vit_small_patch14_reg4_dinov2"
    src, info = load_backbone(name, "random", seed=1, overrides=TINY)
    assert info.num_prefix_tokens == 5 and info.patch_size == 14
    sd = src.state_dict()
    assert src.patch_embed.grid_size == (37, 37)  # official DINOv2 pos_embed grid
    # undo timm's conversion: official keeps a CLS position and separate register tokens
    pos0 = torch.randn(1, 1, 48)
    official = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official["register_tokens"] = sd["reg_token"]
    official["cls_token"] = sd["cls_token"] - pos0
    official["pos_embed"] = torch.cat([pos0, sd["pos_embed"]], dim=1)
    official["mask_token"] = torch.zeros(1, 48)
    assert "blocks.1.ls1.gamma" in official
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official, path)

    model, _ = load_backbone(name, str(path), seed=7, overrides=TINY)
    torch.testing.assert_close(_out(model, 28, 42), _out(src, 28, 42), rtol=1e-4, atol=2e-4)


def test_checkpoint_that_does_not_fit_names_file_and_keys(tmp_path):
    src, _ = load_backbone(VIT16, "random", overrides=TINY)
    path = tmp_path / "small.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError, match=r"small\.pth.*does not fit.*cls_token \(1, 1, 48\)"):
        load_backbone(VIT16, str(path), overrides={**TINY, "embed_dim": 64})

    p8, _ = load_backbone("vit_small_patch8_224", "random", overrides=TINY)
    path8 = tmp_path / "patch8.pth"
    torch.save(p8.state_dict(), path8)
    with pytest.raises(ValueError, match=r"patch8\.pth.*\(8, 8\) px patches.*\(16, 16\)"):
        load_backbone(VIT16, str(path8), overrides=TINY)

    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*missing: blocks\.1\."):
        load_backbone(VIT16, str(tmp_path / "partial.pth"), overrides=TINY)

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone(VIT16, str(tmp_path / "nope.pth"), overrides=TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth.*cannot read"):
        load_backbone(VIT16, str(tmp_path / "junk.pth"), overrides=TINY)


def test_pretrained_offline_fails_with_local_file_hint(no_caches):
    with pytest.raises(RuntimeError, match=r"backbone\.weights: /path/.*weights: random"):
        load_backbone("dino_vits16", "pretrained", overrides=TINY)


def test_auto_offline_falls_back_to_random_with_warning(no_caches):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model, info = load_backbone("dino_vits16", "auto", seed=2, overrides=TINY)
    assert info.weights == "random:seed=2"
    assert "backbone.weights" in info.weights_warning
    ref, _ = load_backbone("dino_vits16", "random", seed=2, overrides=TINY)
    torch.testing.assert_close(_out(model), _out(ref), rtol=0, atol=0)


def test_pretrained_from_local_hub_cache(tmp_path, monkeypatch):
    """Weights already in the HF cache load offline and are reported as pretrained."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf"
    repo = cache / "models--timm--vit_small_patch16_224.dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    src, _ = load_backbone(VIT16, "random", seed=11, overrides=TINY)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, info = load_backbone("dino_vits16", "pretrained", overrides=TINY)
    assert info.weights == "pretrained:vit_small_patch16_224.dino"
    torch.testing.assert_close(_out(model), _out(src), rtol=0, atol=0)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")


def test_weights_of_source_reloads_the_same_weights(tmp_path, no_caches):
    """Every source string load_backbone reports maps back to arguments giving the same
    model (later stages reuse the extract stage's weights this way)."""
    path = tmp_path / "w.pth"
    torch.save(load_backbone(VIT16, "random", seed=4, overrides=TINY)[0].state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto falls back to random offline
        loaded = [
            load_backbone(VIT16, "random", seed=4, overrides=TINY),
            load_backbone(VIT16, str(path), seed=0, overrides=TINY),
            load_backbone(VIT16, "auto", seed=6, overrides=TINY),
        ]
    for model, info in loaded:
        weights, seed = weights_of_source(info.weights)
        again, info2 = load_backbone(VIT16, weights, seed=seed or 0, overrides=TINY)
        assert info2.weights == info.weights
        torch.testing.assert_close(_out(again), _out(model), rtol=0, atol=0)
    assert weights_of_source("pretrained:vit_small_patch16_224.dino") == ("pretrained", None)
    for bad in ("", "random", "random:3", "cloud:x", "file:"):
        with pytest.raises(ValueError, match="unrecognised backbone weights source"):
            weights_of_source(bad)
