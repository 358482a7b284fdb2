import numpy as np
import pytest
import torch

from lcseg_steps.data.images import normalize, resize_for_backbone
from lcseg_steps.perimage.backbone import load_backbone
from lcseg_steps.perimage.descriptors import crop_cls_descriptors

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(
        "vit_small_patch16_224",
        "random",
        overrides={"depth": 2, "embed_dim": 48, "num_heads": 2},
    )


def _one_at_a_time(model, crop, patch, long_side):
    """Reference: the documented policy applied to a single crop, batch of one."""
    x = torch.from_numpy(normalize(resize_for_backbone(crop, patch, long_side)))[None]
    with torch.inference_mode():
        return model.forward_features(x)[0, 0].float().numpy()


def _crops():
    rng = np.random.default_rng(0)
    shapes = [(40, 60), (60, 40), (50, 50), (40, 60), (100, 30), (33, 77), (60, 40), (40, 60)]
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_batched_equals_single_passes_in_order(tiny):
    model, info = tiny
    crops = _crops()
    got = crop_cls_descriptors(model, info, crops, long_side=64, batch_size=2)
    assert got.shape == (len(crops), 48) and got.dtype == np.float32
    want = np.stack([_one_at_a_time(model, c, info.patch_size, 64) for c in crops])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # Different crops give different tokens, so the order check above is not vacuous.
    assert not np.allclose(got[0], got[1], atol=1e-3)


def test_batch_size_does_not_change_result(tiny):
    model, info = tiny
    crops = _crops()
    a = crop_cls_descriptors(model, info, crops, long_side=48, batch_size=1)
    b = crop_cls_descriptors(model, info, crops, long_side=48, batch_size=32)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_empty_list(tiny):
    model, info = tiny
    out = crop_cls_descriptors(model, info, [])
    assert out.shape == (0, 48) and out.dtype == np.float32


def test_sliver_crop_gets_one_patch(tiny):
    model, info = tiny
    sliver = np.full((3, 200, 3), 120, np.uint8)  # 3 px tall: rounds to 0 patches at 64
    out = crop_cls_descriptors(model, info, [sliver], long_side=64)
    # reference: stretched to one patch (16) tall, long side 64
    x = np.full((16, 64, 3), 120, np.uint8)
    np.testing.assert_allclose(out[0], _one_at_a_time(model, x, 16, None), atol=1e-5, rtol=0)


def test_bad_crops_name_their_index(tiny):
    model, info = tiny
    good = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="crop 1"):
        crop_cls_descriptors(model, info, [good, np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="crop 0"):
        crop_cls_descriptors(model, info, [np.zeros((20, 20, 3), np.float32)])
    with pytest.raises(ValueError, match="long_side"):
        crop_cls_descriptors(model, info, [good], long_side=8)


@pytest.mark.parametrize("long_side", [64, 70, 224])
def test_shrunk_crops_give_the_same_descriptors_byte_for_byte(tiny, long_side):
    """shrink_crop (what objects and model.segment hold in place of a photo's crops) is
    the crop at its input size: the same descriptors, and small, for large crops, slivers
    and crops already smaller than the input."""
    from lcseg_steps.perimage.descriptors import shrink_crop

    model, info = tiny
    rng = np.random.default_rng(1)
    shapes = [(400, 600), (1201, 333), (3000, 40), (40, 3000), (20, 30), (64, 64)]
    crops = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]
    small = [shrink_crop(c, info.patch_size, long_side) for c in crops]
    for c, s in zip(crops, small, strict=True):
        assert max(s.shape[:2]) <= max(long_side, max(c.shape[:2]))
    assert small[0].shape[0] * small[0].shape[1] < 400 * 600
    np.testing.assert_array_equal(
        crop_cls_descriptors(model, info, small, long_side=long_side),
        crop_cls_descriptors(model, info, crops, long_side=long_side),
    )
