"""Resource estimates of the pipeline's jobs, for schedulers (SLURM) and ``--resources``.

Scheduling only: no stage reads them, so outputs do not depend on them. Every ``mem_mb``
here is a float, which the workflow multiplies by the attempt, so ``--retries`` resubmits
with more memory; an int stays as it is.

Imported by the Snakefile while the DAG is built: nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lcseg_steps.runner.settings import is_auto

MIB = 1024**2


def uses_cuda(device) -> int:
    return 1 if str(device).startswith("cuda") else 0


def _per_image(n, base_mb, kb_per_image, base_min, s_per_image) -> dict:
    return {
        "mem_mb": float(base_mb + kb_per_image * n / 1024),
        "runtime": int(base_min + 2 * s_per_image * n / 60 + 1),
    }


@dataclass(frozen=True)
class Sizing:
    """What the estimates scale with: the run's config and its number of images."""

    config: Mapping
    n_images: int

    @property
    def images_per_shard(self) -> int:
        return min(self.config["shard_size"], self.n_images)

    def patch_size(self) -> int:
        """The backbone's patch size (16 when its name and overrides do not tell)."""
        from lcseg_steps.perimage.backbone import patch_size_of

        bb = self.config["backbone"]
        return patch_size_of(bb["name"], bb.get("overrides")) or 16

    def patches_per_image(self) -> int:
        """ViT patches of a typical 4:3 image at extract.long_side."""
        side = (self.config["extract"]["long_side"] or 640) // self.patch_size()
        return max(1, side * (side * 3 // 4))

    def embed_dim(self) -> int:
        """Feature width of the configured backbone (overrides win, ViT-B when unknown)."""
        from lcseg_steps.perimage.backbone import embed_dim_of

        bb = self.config["backbone"]
        return embed_dim_of(bb["name"], bb.get("overrides")) or 768

    def feature_kb_per_image(self) -> float:
        """One image's clustered feature rows in float32."""
        return self.patches_per_image() * self.embed_dim() * 4 / 1024

    def shard(self, base_mb, kb_per_image, base_min, s_per_image) -> dict:
        """A per-shard job: a fixed base plus a share per image of the shard; wall time
        with a 2x margin on the per-image cost."""
        return _per_image(self.images_per_shard, base_mb, kb_per_image, base_min, s_per_image)

    def whole(self, base_mb, kb_per_image, base_min, s_per_image) -> dict:
        """A job that reads something of every image (assign, evaluate), sized as
        :meth:`shard` on all images."""
        return _per_image(self.n_images, base_mb, kb_per_image, base_min, s_per_image)

    def fit(self, level: str) -> dict:
        """Global fit: the float32 sample (clustering.init_sample rows at the dataset
        level, clustering.category_fit_sample per pseudo-category at the category level;
        every patch when null), the streamed fit's block cache, ~17 bytes of per-row state
        per patch, and 1 GiB of interpreter and libraries; a few seconds per million
        patches and iteration."""
        from lcseg_steps.clustering.backend import STREAM_CACHE_BYTES

        c = self.config["clustering"]
        n_patches = self.n_images * self.patches_per_image()
        rows = c["init_sample"] or n_patches
        if level == "category":
            per = c["category_fit_sample"]
            # auto: sized for the most categories the eigengap may choose
            n_cat = c["auto_range"][1] if is_auto(c["n_categories"]) else c["n_categories"]
            rows = per * n_cat if per else n_patches
        rows = min(rows, n_patches) if level == "dataset" else rows
        need = rows * self.embed_dim() * 4 + STREAM_CACHE_BYTES + 17 * n_patches + 1024 * MIB
        return {
            "mem_mb": float(need / MIB),
            "runtime": int(10 + c["max_iter"] * n_patches / 1e6 * 3 / 60 * 2),
        }


def extract_resources(s: Sizing) -> dict:
    """Decoded image, activations and the stored float16 features of one image."""
    cuda = uses_cuda(s.config["extract"]["device"])
    stored = len(s.config["extract"]["store_features"]) * s.embed_dim() * 2
    kb = 3 * 1024 + 4 * s.patches_per_image() * stored / 1024
    return {"gpu": cuda, **s.shard(2048, kb, 5, 0.1 if cuda else 1.0)}


def objects_resources(s: Sizing) -> dict:
    cls = s.config["objects"]["descriptor"] == "cls"
    gpu = uses_cuda(s.config["extract"]["device"]) if cls else 0
    return {"gpu": gpu, **s.shard(2048, 512, 5, 0.5)}


def assign_resources(s: Sizing) -> dict:
    """Beyond the descriptors: Ward's condensed float64 distances of the fitted regions
    (at most fit_sample, about 20 an image) and their copy; spectral's kNN search and
    embedding stay below; kmeans needs none."""
    labels = s.config["labels"]
    fit_mb = 0
    if labels["class_clusterer"] != "kmeans":
        m = min(labels["fit_sample"] or 20 * s.n_images, 20 * s.n_images)
        fit_mb = 8 * m * m / 2**20
    return s.whole(1024 + fit_mb, 20 * s.embed_dim() * 4 / 1024, 5, 0.01)
