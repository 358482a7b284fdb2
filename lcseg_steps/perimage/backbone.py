"""Frozen ViT backbones (DINO / DINOv2 through timm) and where their weights come from.

``load_backbone`` returns an eval-mode, gradient-free timm ``VisionTransformer`` built
with ``dynamic_img_size=True`` (any input whose sides are multiples of the patch size
works; positional embeddings are interpolated), plus a ``BackboneInfo`` that records
what weights were really loaded so every store can say so in its attrs.

Weights (``weights=``):

- ``"pretrained"``: timm's pretrained weights. The local Hugging Face / torch hub caches
  are tried first; otherwise the hub host gets one short reachability probe before a
  download, because ``huggingface_hub`` retries for about a minute when offline.
- ``"auto"``: pretrained if obtainable, else a seeded random init with a warning.
- ``"random"``: seeded random init, no warning (tests, smoke runs).
- a path: a local checkpoint (official DINO / DINOv2 ``.pth``, possibly nested under
  ``teacher``/``student``/``model``/``state_dict`` with ``module.``/``backbone.``
  prefixes, or a timm ``.pth``/``.safetensors``), loaded strictly.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # torch is imported where used: the workflow reads the tables below
    import torch

BACKBONES: dict[str, str] = {
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
}

# Feature width (embed_dim) of each timm ViT family (a timm name's first two words), so
# the width is known without building the model (the workflow's resource estimates).
VIT_WIDTHS: dict[str, int] = {
    "vit_tiny": 192,
    "vit_small": 384,
    "vit_base": 768,
    "vit_large": 1024,
    "vit_huge": 1280,
    "vit_giant": 1536,
}


def embed_dim_of(name: str, overrides: dict | None = None) -> int | None:
    """Feature width of backbone ``name`` (a key of ``BACKBONES`` or a raw timm ViT name)
    without building it: ``overrides["embed_dim"]`` when given, else the width of its ViT
    family in ``VIT_WIDTHS``; ``None`` when the family is not in the table."""
    if "embed_dim" in (overrides or {}):
        return int(overrides["embed_dim"])
    family = "_".join(BACKBONES.get(name, name).split("_")[:2])
    return VIT_WIDTHS.get(family)


def patch_size_of(name: str, overrides: dict | None = None) -> int | None:
    """Patch size of backbone ``name`` without building it: ``overrides["patch_size"]``
    when given, else the ``patch<N>`` word of its timm name (``vit_small_patch16_224``);
    ``None`` when the name has none."""
    if "patch_size" in (overrides or {}):
        return int(overrides["patch_size"])
    for word in BACKBONES.get(name, name).split(".")[0].split("_"):
        if word.startswith("patch") and word[5:].isdigit():
            return int(word[5:])
    return None


# Keys that checkpoints carry but a feature extractor has no module for: the DINO
# projection head / a classifier, DINOv2's masked-image-modelling token.
_UNUSED_KEY_PREFIXES = ("head.", "head_drop.", "mask_token")
_NESTING_KEYS = ("teacher", "student", "model", "state_dict", "module")
_KEY_PREFIXES = ("module.", "backbone.", "encoder.")
_PROBE_TIMEOUT_S = 3.0
_LOCAL_FILE_HINT = (
    "pass a local checkpoint file instead (config `backbone.weights: "
    "/path/to/dino_deitsmall16_pretrain.pth`, an official DINO/DINOv2 .pth or a timm "
    ".pth/.safetensors), or set `backbone.weights: random` for testing"
)


@dataclass(frozen=True)
class BackboneInfo:
    """What was built. ``weights`` is ``"pretrained:<timm tag>"``, ``"file:<path>"`` or
    ``"random:seed=<n>"``; ``weights_warning`` is set when ``"auto"`` fell back to random.
    ``num_prefix_tokens`` counts the CLS token plus register tokens."""

    name: str
    timm_name: str
    weights: str
    weights_warning: str | None
    patch_size: int
    embed_dim: int
    num_heads: int
    num_prefix_tokens: int
    depth: int


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; ``"cuda[:n]"`` without CUDA
    is an error rather than a silent CPU run."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "use device: cpu or device: auto"
        )
    return device


def load_backbone(
    name: str,
    weights: str = "auto",
    seed: int = 0,
    overrides: dict | None = None,
    device: str = "cpu",
) -> tuple[torch.nn.Module, BackboneInfo]:
    """Build the frozen backbone ``name`` (a key of ``BACKBONES`` or a raw timm ViT name).

    ``overrides`` are extra ``timm.create_model`` kwargs (e.g. a tiny ``depth``/``embed_dim``
    for tests). The classifier head is always removed (``num_classes=0``). A name that is
    neither a short name nor a timm model raises ``ValueError`` naming ``backbone.name``.
    """
    import timm

    timm_name = BACKBONES.get(name, name)
    if not timm.is_model(timm_name):
        raise ValueError(
            f"backbone.name: {name!r} is not a known backbone; expected one of "
            f"{sorted(BACKBONES)} or a timm ViT model name (timm.list_models('vit_*'))"
        )
    kwargs = {"num_classes": 0, **(overrides or {}), "dynamic_img_size": True}
    warning = None
    if weights in ("pretrained", "auto"):
        try:
            model, source = _pretrained(timm_name, kwargs, seed)
        except _PretrainedUnavailable as exc:
            if weights == "pretrained":
                raise RuntimeError(
                    f"pretrained weights for backbone {name!r} ({timm_name}) cannot be "
                    f"obtained: {exc}. Either make them available (network or a filled "
                    f"Hugging Face cache), or {_LOCAL_FILE_HINT}."
                ) from exc
            warning = (
                f"pretrained weights for backbone {name!r} ({timm_name}) are not available "
                f"({exc}); using RANDOM weights (seed={seed}): features are meaningless. "
                f"To fix: {_LOCAL_FILE_HINT}."
            )
            warnings.warn(warning, stacklevel=2)
            model, source = _create(timm_name, kwargs, seed), f"random:seed={seed}"
    elif weights == "random":
        model, source = _create(timm_name, kwargs, seed), f"random:seed={seed}"
    else:
        path = Path(weights).expanduser()
        model = _create(timm_name, kwargs, seed)
        load_checkpoint(model, path)
        source = f"file:{path}"

    model.eval().requires_grad_(False).to(resolve_device(device))
    return model, _info(name, timm_name, source, warning, model)


def weights_of_source(source: str) -> tuple[str, int | None]:
    """The ``weights`` argument (and seed) that reloads what a ``BackboneInfo.weights``
    string describes, so a later stage uses exactly the extract stage's weights.

    ``random:seed=3`` -> ``("random", 3)``; ``pretrained:<timm name>`` -> ``("pretrained",
    None)``; ``file:<path>`` -> ``(path, None)``.
    """
    kind, _, rest = str(source).partition(":")
    if kind == "random" and rest.startswith("seed="):
        return "random", int(rest[len("seed=") :])
    if kind == "pretrained" and rest:
        return "pretrained", None
    if kind == "file" and rest:
        return rest, None
    raise ValueError(f"unrecognised backbone weights source {source!r}")


def _info(name, timm_name, source, warning, model) -> BackboneInfo:
    if getattr(model, "cls_token", None) is None or not hasattr(model, "blocks"):
        raise ValueError(f"backbone {name!r} ({timm_name}) is not a ViT with a CLS token")
    ph, pw = model.patch_embed.patch_size
    if ph != pw:
        raise ValueError(f"backbone {name!r} has non-square patches {ph}x{pw}")
    return BackboneInfo(
        name=name,
        timm_name=timm_name,
        weights=source,
        weights_warning=warning,
        patch_size=int(ph),
        embed_dim=int(model.embed_dim),
        num_heads=int(model.blocks[0].attn.num_heads),
        num_prefix_tokens=int(model.num_prefix_tokens),
        depth=len(model.blocks),
    )


def _create(timm_name: str, kwargs: dict, seed: int, **extra) -> torch.nn.Module:
    """Seeded ``timm.create_model`` that leaves the caller's global RNG state untouched."""
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(timm_name, **kwargs, **extra)


# ---------------------------------------------------------------- pretrained weights


class _PretrainedUnavailable(Exception):
    """Pretrained weights cannot be had (offline, not cached, unknown tag)."""


def _pretrained(timm_name: str, kwargs: dict, seed: int) -> tuple[torch.nn.Module, str]:
    """Model with timm pretrained weights and its ``"pretrained:<tag>"`` source string."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise _PretrainedUnavailable(f"timm has no pretrained weights for {timm_name!r}")
    tag = f"pretrained:{timm_name}"

    cached = _cached_pretrained_file(cfg)
    if cached is not None:
        model = _create(timm_name, kwargs, seed)
        load_checkpoint(model, cached)
        return model, tag

    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        raise _PretrainedUnavailable("HF_HUB_OFFLINE is set and they are not in the local cache")
    host_url = _hub_endpoint() if cfg.hf_hub_id else cfg.url
    reason = _unreachable(host_url)
    if reason:
        raise _PretrainedUnavailable(f"not in the local cache and {reason}")
    try:
        return _create(timm_name, kwargs, seed, pretrained=True), tag
    except Exception as exc:  # hub / urllib / torch.load raise many unrelated types
        raise _PretrainedUnavailable(f"download failed ({type(exc).__name__}: {exc})") from exc


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    except ImportError:
        return "https://huggingface.co"


def _cached_pretrained_file(cfg) -> Path | None:
    """A file already in the Hugging Face or torch hub cache for this pretrained config."""
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
            names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
            for fname in names:
                hit = try_to_load_from_cache(repo, fname, revision=revision or None)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
    if cfg.url:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return path
    return None


def _unreachable(url: str) -> str | None:
    """``None`` when a TCP connection to ``url``'s host opens within a few seconds, else why.

    Runs in a daemon thread because DNS resolution ignores socket timeouts.
    """
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    if not host:
        return f"cannot parse a host from {url!r}"
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port} is unreachable ({exc})")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(_PROBE_TIMEOUT_S + 0.5)
    return result[0] if result else f"{host}:{port} did not answer within {_PROBE_TIMEOUT_S}s"


# ---------------------------------------------------------------- local checkpoints


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.bin``/``.safetensors`` checkpoint, unwrapped and de-prefixed.

    Training checkpoints nest the weights (``teacher``, ``student``, ``model``,
    ``state_dict``) and prefix them (``module.`` from DDP, ``backbone.`` from DINO's
    MultiCropWrapper); the teacher is preferred, as in DINO's own evaluation code.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: backbone checkpoint file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load / safetensors raise many types for bad files
        raise ValueError(f"{p}: cannot read backbone checkpoint ({exc})") from exc

    for _ in range(4):
        if not isinstance(sd, dict) or any(torch.is_tensor(v) for v in sd.values()):
            break
        inner = next((sd[k] for k in _NESTING_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict) or not any(torch.is_tensor(v) for v in sd.values()):
        found = sorted(sd)[:8] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{p}: no state dict of tensors found in the checkpoint (top: {found})")

    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _KEY_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix) :], True
        out[k] = v
    return out


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a local checkpoint into the timm ViT ``model`` strictly.

    timm's ``checkpoint_filter_fn`` converts official DINOv2 keys (registers, SwiGLU
    names) and resamples the positional embedding to the model's grid (DINOv2 ships a
    37x37 grid). A different patch size is refused rather than resampled: it would be a
    different backbone. Missing, unexpected or wrong-shaped keys raise ``ValueError``
    naming the file and the first few offending keys.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    p = Path(path)
    sd = read_state_dict(p)
    want = model.state_dict()
    pe = sd.get("patch_embed.proj.weight")
    pe_model = tuple(want["patch_embed.proj.weight"].shape[-2:])
    if pe is not None and pe.ndim == 4 and tuple(pe.shape[-2:]) != pe_model:
        raise ValueError(
            f"{p}: checkpoint has {tuple(pe.shape[-2:])} px patches but the backbone expects "
            f"{pe_model}: wrong checkpoint for this backbone?"
        )
    try:
        sd = checkpoint_filter_fn(sd, model)
    except Exception as exc:  # shape errors inside timm's converters
        raise ValueError(f"{p}: checkpoint does not fit this backbone ({exc})") from exc
    sd = {
        k: v
        for k, v in sd.items()
        if k in want or not any(k.startswith(u) for u in _UNUSED_KEY_PREFIXES)
    }

    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(want[k].shape)}"
        for k in want
        if k in sd and sd[k].shape != want[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape (file vs model)", wrong),
        ):
            if keys:
                parts.append(
                    f"{len(keys)} {label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                )
        raise ValueError(f"{p}: checkpoint does not fit this backbone; " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
