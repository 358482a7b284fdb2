"""``extract`` on CUDA with bf16 autocast against the CPU in float32 (runs on a GPU only)."""

import numpy as np
import pytest

from lcseg_steps.backbone import load_backbone
from lcseg_steps.extract import FEATURES, extract_shard
from lcseg_steps.store import open_store
from tests.test_extract import _cos_rows, _write_images

pytestmark = pytest.mark.gpu


def test_cuda_bf16_features_match_cpu_float32(tmp_path):
    # a full-size ViT-S/16 (random weights): the depth over which bf16 rounding accumulates
    model, info = load_backbone("dino_vits16", "random", seed=0)
    records = _write_images(tmp_path, sizes=[(96, 128), (160, 112), (64, 64)])
    kw = {"long_side": 160, "batch_size": 2, "num_workers": 0, "log": lambda _m: None}
    cpu = open_store(
        extract_shard(
            records, model, info, tmp_path / "cpu.zarr", device="cpu", precision="float32", **kw
        )
    )
    gpu = open_store(
        extract_shard(
            records, model, info, tmp_path / "gpu.zarr", device="cuda", precision="bfloat16", **kw
        )
    )
    assert gpu.attrs["precision"] == "bfloat16"
    np.testing.assert_array_equal(cpu["offsets"][:], gpu["offsets"][:])
    for name in FEATURES:
        cos = _cos_rows(cpu[name][:], gpu[name][:])
        assert cos.min() >= 0.999, (name, float(cos.min()))
    assert _cos_rows(cpu["cls"][:], gpu["cls"][:]).min() >= 0.999
