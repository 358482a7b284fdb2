"""A run's fitted state as one versioned artifact, and segmenting new images with it.

``results/<run>/seed<s>/model.zarr`` (written by the ``model`` stage,
``lcseg_steps.stages.model``) holds everything a new image needs to be segmented the way
the run segments its own images: the backbone (name, weights, layer, feature, patch size,
long side, precision), the dataset- and category-level centroids with their foreground
flags, the category prototypes (the unit mean CLS token of each pseudo-category), the
class prototypes and the settings of every per-image step (image-level clustering and fg
rule, merge, refine/CRF, objects). ``load_model(path).segment(image)`` runs the same
library functions the stages run, image by image:

1. ``qkv.backbone_input`` + ``qkv.qkv_features``, rounded as a features store holds them
   (``qkv.as_stored``);
2. ``levels.image_level`` (image-level k-means and fg rule);
3. ``levels.centroid_mask`` against the dataset centroids, and against the centroids of
   the image's pseudo-category (its nearest category prototype, ``kmeans.nearest_centroid``);
4. ``levels.merge_masks``; 5. ``crf.refine_mask``; 6. ``regions.object_regions`` and a
   descriptor per region (``descriptors.crop_cls_descriptors`` or
   ``regions.masked_key_descriptor``); 7. the nearest class prototype
   (``kmeans.nearest_centroid``); 8. ``regions.semantic_map``.

Applied to a run's own images, steps 1 and 3 give the run's dataset- and category-level
masks (the fits label patches by nearest centroid). The final classes may differ from the
run's ``semantic/`` maps: the run labels its regions by the clustering itself (spectral by
default), a new image by the nearest class prototype; and the image level's k-means of one
image is not the batched fit of its shard (docs/own_images.md).

Library module: imports no stage; torch is imported only to segment.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lcseg_steps.perimage.crf import refine_foreground, refine_max_side
from lcseg_steps.runner.settings import call_with_settings

FORMAT = "lcseg-model"
# 2: each per-image stage's settings exactly as its rule gets them (pipeline.PER_IMAGE);
# a version-1 model lacks only the clustered feature in two of them (_upgrade)
FORMAT_VERSION = 2
# what a model is fitted to: a features store, a config or a caller giving other values
# for any of these cannot use it
FITTED_TO = ("backbone", "layer", "feature", "patch_size", "long_side")


class ModelError(ValueError):
    """A model file that cannot be used (missing, truncated, a newer format); the message
    names the file."""


class ModelMismatchError(ValueError):
    """A model used with another backbone, layer, feature, patch size or long side; the
    message names both values."""


def _digest(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.dtype.kind in "OUT":
        blob = "\x00".join(str(x) for x in a.ravel()).encode("utf-8")
    else:
        blob = np.ascontiguousarray(a).tobytes()
    return hashlib.sha256(blob).hexdigest()


def write_model(out: str | os.PathLike, arrays: Mapping[str, np.ndarray], attrs: dict) -> Path:
    """Write a model store: ``arrays`` and ``attrs`` plus the format, its version and a
    sha256 of every array (so that :func:`load_model` can tell a truncated file)."""
    from lcseg_steps.stores.layout import write_store

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    return write_store(
        out,
        arrays,
        {
            **attrs,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "array_sha256": {k: _digest(v) for k, v in arrays.items()},
        },
    )


@dataclass
class Segmentation:
    """What :meth:`Model.segment` returns for one ``(H, W)`` image.

    ``classes`` ``(H, W)`` uint8: 0 background, class + 1 inside each object region (the
    ids of ``semantic/`` and the ``pred/`` PNGs); ``foreground`` ``(H, W)`` uint8 {0, 1}:
    the refined mask. The intermediate steps: ``grid`` (patch rows, cols), per-patch
    ``level_masks`` (level -> ``(gh * gw,)`` uint8), ``merged`` and ``score``, the image's
    pseudo-category (``-1`` without the category level), ``region_map`` and the class of
    each region.
    """

    classes: np.ndarray
    foreground: np.ndarray
    grid: tuple[int, int]
    level_masks: dict[str, np.ndarray]
    level_labels: dict[str, np.ndarray]
    merged: np.ndarray
    score: np.ndarray
    category: int
    region_map: np.ndarray
    region_classes: np.ndarray


@dataclass
class Scored:
    """An image scored by :meth:`Model.score`, before its refinement: its patch features
    ``X`` ``(gh * gw, D)`` on the ``grid``, the level masks and labels, the merged mask,
    the patch score and the pseudo-category."""

    X: np.ndarray
    grid: tuple[int, int]
    level_masks: dict[str, np.ndarray]
    level_labels: dict[str, np.ndarray]
    merged: np.ndarray
    score: np.ndarray
    category: int


@dataclass
class Model:
    """A loaded ``model.zarr`` (see :func:`load_model`)."""

    path: Path
    attrs: dict
    arrays: dict[str, np.ndarray]
    device: str = "cpu"
    _backbone: Any = field(default=None, repr=False)

    # --- what it was fitted with -------------------------------------------------------

    @property
    def backbone(self) -> dict:
        return self.attrs["backbone"]

    @property
    def fitted_to(self) -> dict:
        """backbone name, layer, feature, patch size and long side."""
        a = self.attrs
        return {
            "backbone": a["backbone"]["name"],
            "layer": a["layer"],
            "feature": a["feature"],
            "patch_size": a["patch_size"],
            "long_side": a["long_side"],
        }

    def check(self, **given: Any) -> None:
        """Stop at once when ``given`` (any of ``backbone``, ``layer``, ``feature``,
        ``patch_size``, ``long_side``) differs from what the model was fitted with, naming
        both values."""
        fitted = self.fitted_to
        unknown = set(given) - set(FITTED_TO)
        if unknown:
            raise TypeError(f"check() takes {list(FITTED_TO)}, not {sorted(unknown)}")
        bad = [
            f"{key} {given[key]!r} but the model was fitted with {key} {fitted[key]!r}"
            for key in FITTED_TO
            if key in given and given[key] is not None and given[key] != fitted[key]
        ]
        if bad:
            raise ModelMismatchError(f"{self.path}: used with " + "; ".join(bad))

    def check_features(self, attrs: Mapping, feature: str | None = None) -> None:
        """The same check against a features store's attrs (what an apply rule
        extracted with) and the feature it clusters."""
        self.check(
            backbone=attrs.get("backbone"),
            layer=attrs.get("layer"),
            patch_size=attrs.get("patch_size"),
            long_side=attrs.get("long_side"),
            feature=feature,
        )

    # --- the backbone --------------------------------------------------------------

    def load_backbone(self):
        """The frozen backbone with the weights the run extracted with (built once)."""
        if self._backbone is None:
            from lcseg_steps.perimage.backbone import load_backbone, weights_of_source
            from lcseg_steps.perimage.qkv import qkv_dim

            bb = self.backbone
            weights, seed = weights_of_source(bb["weights"])
            model, info = load_backbone(
                bb["name"],
                weights,
                seed=bb["seed"] if seed is None else seed,
                overrides=bb.get("overrides") or {},
                device=self.device,
            )
            model.eval()
            for key, got in (
                ("patch_size", int(info.patch_size)),
                ("qkv_dim", qkv_dim(model, self.attrs["layer"])),
            ):
                if got != self.attrs[key]:
                    raise ModelMismatchError(
                        f"{self.path}: backbone {bb['name']!r} now builds with {key} {got} "
                        f"but the model was fitted with {key} {self.attrs[key]}"
                    )
            self._backbone = (model, info)
        return self._backbone

    # --- segmenting ----------------------------------------------------------------

    def categories(self, cls: np.ndarray) -> np.ndarray:
        """CLS tokens ``(n, D)`` -> ``(n,)`` int64 pseudo-category of each image: the
        nearest category prototype by cosine (``segment`` and ``apply_merge``)."""
        from lcseg_steps.clustering.kmeans import l2_normalize, nearest_centroid

        cls = l2_normalize(np.asarray(cls, dtype=np.float32))
        return np.asarray(nearest_centroid(cls, self.arrays["category_prototypes"]), np.int64)

    def region_classes(self, descriptors: np.ndarray) -> np.ndarray:
        """Region descriptors ``(r, D)`` -> ``(r,)`` int64 class of each region: the nearest
        class prototype by cosine (``segment`` and ``apply_segment``)."""
        from lcseg_steps.clustering.kmeans import l2_normalize, nearest_centroid

        D = np.asarray(descriptors, dtype=np.float32)
        if not len(D):
            return np.zeros(0, dtype=np.int64)
        return np.asarray(
            nearest_centroid(l2_normalize(D), self.arrays["class_prototypes"]), np.int64
        )

    def features(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One image's q/k/v (float16, as stored), CLS token (float16), CLS attention and
        patch grid, exactly as ``extract`` computes them."""
        return self.features_batch([image])[0]

    def features_batch(
        self, images: list[np.ndarray], batch_size: int = 8
    ) -> list[dict[str, np.ndarray]]:
        """:meth:`features` of many ``(H_i, W_i, 3)`` uint8 images, with one forward pass per
        run of up to ``batch_size`` consecutive images of equal input size (``extract``
        batches the same way)."""
        import torch

        from lcseg_steps.perimage.qkv import (
            as_stored,
            autocast,
            backbone_input,
            equal_shape_runs,
            qkv_features,
        )

        a = self.attrs
        p = a["patch_size"]
        model, _info = self.load_backbone()
        dev = torch.device(self.device)
        xs = [backbone_input(img, p, a["long_side"]) for img in images]
        out: list[dict[str, np.ndarray]] = []
        for i, j in equal_shape_runs([x.shape for x in xs], batch_size):
            x = torch.from_numpy(np.stack(xs[i:j])).to(dev)
            with autocast(dev, a["precision"] == "bfloat16"):
                st = as_stored(qkv_features(model, x, a["layer"]), (a["feature"],))
            grid = (xs[i].shape[1] // p, xs[i].shape[2] // p)
            out += [
                {
                    "X": st[a["feature"]][b],
                    "cls": st["cls"][b].astype(np.float16),  # extract stores CLS in float16
                    "cls_attn": st["cls_attn"][b],
                    "grid": grid,
                }
                for b in range(j - i)
            ]
        return out

    def segment(
        self, image: np.ndarray | str | os.PathLike, features: Mapping | None = None
    ) -> Segmentation:
        """Segment one image: ``(H, W, 3)`` uint8 RGB or a path to an image file.

        A file is turned by its EXIF orientation first (``images.read_rgb(path,
        "exif")``), as photo viewers and the ``folder`` dataset show it: the result is
        that of the turned array. An array is taken as given. ``features``: the image's
        :meth:`features` (or :meth:`features_batch` item) when already computed.

        The three parts, which ``lcseg segment`` also runs apart (the refinement of
        several images in other processes, ``segment_paths.segment_all``):
        :meth:`score` (steps 1-4), :func:`refine_foreground` (5) and :meth:`finish`
        (6-8)."""
        from lcseg_steps.data.images import ImageError

        img = _as_image(image)
        try:
            scored = self.score(img, features)
        except ImageError as exc:  # too small for one patch: name the file when there is one
            where = image if isinstance(image, (str, os.PathLike)) else "image"
            raise ImageError(f"{where}: {exc}") from exc
        source = image if isinstance(image, (str, os.PathLike)) else None
        return self.finish(img, scored, refine_foreground(*self.refine_job(img, scored, source)))

    def score(self, img: np.ndarray, features: Mapping | None = None) -> Scored:
        """Steps 1-4 of :meth:`segment` for an ``(H, W, 3)`` uint8 image: its features
        (``features`` when given), the level masks and their merged patch score."""
        from lcseg_steps.clustering import levels as lv

        a, arr = self.attrs, self.arrays
        f = self.features(img) if features is None else features
        X, grid = f["X"], f["grid"]
        n = X.shape[0]
        il = a["image_level"]
        levels = lv.check_levels(a["merge"]["levels"])
        masks: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        category = -1
        if "dataset" in levels:
            labels["dataset"], masks["dataset"] = lv.centroid_mask(
                X, arr["dataset_centroids"], arr["dataset_fg"]
            )
        if "category" in levels:
            category = int(self.categories(f["cls"][None])[0])
            labels["category"], masks["category"] = lv.centroid_mask(
                X,
                arr["category_centroids"],
                arr["category_fg"],
                groups=np.full(n, category, dtype=np.int64),
            )
        if "image" in levels:
            res = call_with_settings(
                lv.image_level,
                X,
                np.array([0, n]),
                np.array([grid]),
                f["cls_attn"],
                settings=il,
            )
            labels["image"], masks["image"] = res["labels"], res["fg"]
        merged, score = call_with_settings(lv.merge_masks, masks, settings=a["merge"])
        return Scored(X, grid, masks, labels, merged, score, category)

    def refine_job(self, img: np.ndarray, scored: Scored, source=None) -> tuple:
        """The arguments of :func:`refine_foreground` for ``img`` (picklable, for a worker
        process): the image to refine from, the score grid, the model's refine settings
        and the full size. Given the file the image was read from (``source``), a JPEG of
        at least twice ``refine.max_side`` is refined from a reduced decode
        (``crf.refine_input``), as the ``refine`` stage refines it; otherwise from
        ``img``."""
        from lcseg_steps.data.images import decodes_reduced

        refine = dict(self.attrs["refine"])
        grid = scored.score.reshape(scored.grid)
        max_side = refine_max_side(refine)
        if (
            source is not None
            and max_side is not None
            and max(img.shape[:2]) >= 2 * max_side
            and decodes_reduced(source, max_side)
        ):
            from lcseg_steps.perimage.crf import refine_input

            work, size = refine_input(source, "exif", max_side)
            if size == img.shape[:2]:
                return work, grid, refine, size
        return img, grid, refine, None

    def finish(self, img: np.ndarray, scored: Scored, fg: np.ndarray) -> Segmentation:
        """Steps 6-8 of :meth:`segment`: the regions of the refined foreground ``fg``,
        their classes and the class map."""
        from lcseg_steps.perimage.regions import semantic_map

        feature_grid = scored.X.reshape(*scored.grid, -1)
        regs, region_map = self._regions(fg, feature_grid)
        if regs:
            region_classes = self.region_classes(self._descriptors(img, regs, feature_grid))
        else:
            region_classes = np.zeros(0, dtype=np.int64)
        return Segmentation(
            classes=semantic_map(region_map, region_classes),
            foreground=fg,
            grid=scored.grid,
            level_masks=scored.level_masks,
            level_labels=scored.level_labels,
            merged=scored.merged,
            score=scored.score,
            category=scored.category,
            region_map=region_map,
            region_classes=np.asarray(region_classes, dtype=np.int64),
        )

    def _regions(self, fg: np.ndarray, feature_grid: np.ndarray) -> tuple[list, np.ndarray]:
        """Regions of the ``(H, W)`` foreground (``split`` ones cut by the ``(gh, gw, D)``
        patch features, as the ``objects`` stage cuts them) and their ``(H, W)`` map."""
        from lcseg_steps.perimage.regions import object_regions, region_map

        o = self.attrs["objects"]
        split = o["regions"] == "split"
        regs = call_with_settings(
            object_regions,
            fg,
            settings=o,
            features_grid=feature_grid.astype(np.float32) if split else None,
        )
        return regs, region_map(regs, fg.shape)

    def _descriptors(self, img, regs, feature_grid) -> np.ndarray:
        from lcseg_steps.perimage.regions import masked_key_descriptor, mean_colour, region_crop

        o = self.attrs["objects"]
        if o["descriptor"] == "cls":
            from lcseg_steps.perimage.descriptors import crop_cls_descriptors, shrink_crop

            model, info = self.load_backbone()
            fill = mean_colour(img)
            patch, side = int(info.patch_size), o["long_side"]
            crops = [shrink_crop(region_crop(img, r, o["margin"], fill), patch, side) for r in regs]
            return crop_cls_descriptors(
                model,
                info,
                crops,
                long_side=o["long_side"],
                batch_size=o["batch_size"],
                device=self.device,
                bf16=self.attrs["precision"] == "bfloat16",
            )
        grid = feature_grid.astype(np.float32)
        return np.stack([masked_key_descriptor(grid, reg) for reg in regs]).astype(np.float32)

    # --- a summary -----------------------------------------------------------------

    def summary(self) -> str:
        a, arr = self.attrs, self.arrays
        bb = a["backbone"]
        lines = [
            f"lcseg model {self.path} (format {a['format']} v{a['format_version']}, "
            f"lcseg {a.get('lcseg_version')})",
            f"  backbone   {bb['name']} weights {bb['weights']} layer {a['layer']} "
            f"feature {a['feature']} patch {a['patch_size']} long side {a['long_side']} "
            f"precision {a['precision']}",
            f"  fitted     run {a.get('run')!r} seed {a['seed']} on {a['n_images']} images; "
            f"settings digest {a.get('settings_digest')}",
        ]
        if a.get("weights_warning"):
            lines.append(f"  WARNING    {a['weights_warning']}")
        m, il, r, o = a["merge"], a["image_level"], a["refine"], a["objects"]
        lines.append(
            f"  levels     {', '.join(m['levels'])}; {m['consistency']} "
            f"(min_levels {m['min_levels']})"
        )
        lines.append(
            f"  image      {il['image_clusterer']} k={il['k_image']} fg_rule {il['fg_rule']}"
        )
        if "dataset_centroids" in arr:
            fg = np.flatnonzero(arr["dataset_fg"]).tolist()
            lines.append(f"  dataset    {len(arr['dataset_centroids'])} centroids, foreground {fg}")
        if "category_centroids" in arr:
            c, k, _ = arr["category_centroids"].shape
            fg = [np.flatnonzero(row).tolist() for row in arr["category_fg"]]
            lines.append(f"  category   {c} pseudo-categories x {k} centroids, foreground {fg}")
        names = a.get("class_names")
        lines.append(
            f"  classes    {len(arr['class_prototypes'])} prototypes of dim "
            f"{arr['class_prototypes'].shape[1]}; names {names if names else 'unknown'}"
        )
        lines.append(
            f"  refine     crf {r['crf']} ({r['iterations']} iterations); objects "
            f"{o['regions']} min area {o['min_region_area']}, {o['descriptor']} descriptors"
            + (f" (split {o['split']})" if o["regions"] == "split" else "")
        )
        return "\n".join(lines)


class SceneModel(Model):
    """A loaded scene model (``labels.scope: scene``, attrs ``scope: scene``): the class
    centroids and per-image settings of ``lcseg_steps.apply.scene_model``, whose
    ``segment(image)`` labels every pixel (``scene_model.SceneSegmentation``)."""

    @property
    def n_classes(self) -> int:
        from lcseg_steps.apply.scene_model import n_classes

        return n_classes(self)

    def segment(self, image, features: Mapping | None = None):
        from lcseg_steps.apply.scene_model import scene_segment

        return scene_segment(self, image, features)

    def summary(self) -> str:
        from lcseg_steps.apply.scene_model import scene_summary

        return scene_summary(self)


def _as_image(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from lcseg_steps.data.images import read_rgb

        return read_rgb(image, "exif")
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8 RGB or a path, got {img.shape} {img.dtype}"
        )
    return img


REQUIRED_ATTRS = (
    "backbone",
    "layer",
    "feature",
    "patch_size",
    "long_side",
    "precision",
    "qkv_dim",
    "image_level",
    "merge",
    "refine",
    "objects",
    "array_sha256",
)


def load_model(
    path: str | os.PathLike, *, device: str | None = None, expect: Mapping | None = None
) -> Model:
    """Open ``model.zarr``: every array read and checked against its recorded sha256.

    A missing, truncated or damaged file, or one of a newer format version, is a
    :class:`ModelError` naming the file. ``device`` (default: the run's
    ``extract.device``) runs the backbone; ``expect`` (any of ``FITTED_TO``) is checked at
    once (:meth:`Model.check`).
    """
    from lcseg_steps.stores.layout import open_store

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model")
    try:
        group = open_store(p)
        attrs = dict(group.attrs)
    except Exception as exc:
        raise ModelError(f"{p}: not a readable model store, truncated or damaged ({exc})") from exc
    if attrs.get("format") != FORMAT:
        raise ModelError(f"{p}: not an lcseg model (format {attrs.get('format')!r})")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{p}: model format version {version} is newer than this lcseg reads "
            f"(up to {FORMAT_VERSION}); update lcseg"
        )
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise ModelError(f"{p}: model attrs lack {missing}: truncated or damaged")
    arrays = {}
    for name, digest in attrs["array_sha256"].items():
        try:
            a = np.asarray(group[name][...])
        except Exception as exc:
            raise ModelError(
                f"{p}: array {name!r} cannot be read: truncated or damaged ({exc})"
            ) from exc
        if a.dtype.kind in "OT":
            a = np.array([str(x) for x in a.ravel()], dtype=object).reshape(a.shape)
        if _digest(a) != digest:
            raise ModelError(
                f"{p}: array {name!r} does not match its checksum: truncated or damaged"
            )
        arrays[name] = a
    if device is None:
        from lcseg_steps.perimage.backbone import resolve_device

        device = resolve_device(attrs.get("device") or "cpu")
    attrs = _upgrade(attrs)
    # labels.scope scene: a SceneModel (lcseg_steps.apply.scene_model)
    cls = SceneModel if attrs.get("scope") == "scene" else Model
    model = cls(p, attrs, arrays, device=device)
    if expect:
        model.check(**expect)
    return model


def _upgrade(attrs: dict) -> dict:
    """A version-1 model's attrs as version 2 records them: its image level's and merge's
    settings lacked the clustered feature, which the model records beside them."""
    if attrs.get("format_version") != 1 or attrs.get("scope") == "scene":
        return attrs
    out = dict(attrs)
    for stage in ("image_level", "merge"):
        out[stage] = {"feature": attrs["feature"], **attrs[stage]}
    return out
