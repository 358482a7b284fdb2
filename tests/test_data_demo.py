import cv2
import numpy as np
import pytest
from scipy import ndimage

from lcseg_steps.data.demo import (
    DEMO_CLASSES,
    VOID_BAND,
    demo_ids,
    generate_demo,
    render_demo_image,
    void_band,
)
from lcseg_steps.data.images import read_rgb
from lcseg_steps.data.palette import read_label_png

SMALL = {"min_size": 60, "max_size": 110}


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_ids():
    assert demo_ids(3) == ["demo_0000", "demo_0001", "demo_0002"]
    with pytest.raises(ValueError, match="n_images"):
        demo_ids(0)


def test_generate_demo_layout_and_determinism(tmp_path):
    ids = generate_demo(tmp_path / "a", n_images=4, seed=3, log=lambda s: None, **SMALL)
    generate_demo(tmp_path / "b", n_images=4, seed=3, log=lambda s: None, **SMALL)
    generate_demo(tmp_path / "c", n_images=4, seed=4, log=lambda s: None, **SMALL)
    generate_demo(tmp_path / "d", n_images=2, seed=3, log=lambda s: None, **SMALL)
    a, b, c, d = (_files(tmp_path / x) for x in "abcd")
    assert ids == demo_ids(4)
    expected = {f"JPEGImages/{i}.jpg" for i in ids} | {f"SegmentationClass/{i}.png" for i in ids}
    expected.add("ImageSets/Segmentation/val.txt")
    assert {str(p) for p in a} == expected
    assert (tmp_path / "a/ImageSets/Segmentation/val.txt").read_text().split() == ids
    assert a == b  # byte-identical for the same seed
    images = [p for p in a if p.suffix in (".jpg", ".png")]
    assert all(a[p] != c[p] for p in images)  # another seed changes every image
    # an image does not depend on how many images are generated
    assert all(d[p] == a[p] for p in d if "ImageSets" not in str(p))
    for i in ids:
        img = read_rgb(tmp_path / "a" / "JPEGImages" / f"{i}.jpg")
        lab = read_label_png(tmp_path / "a" / "SegmentationClass" / f"{i}.png")
        assert img.shape[:2] == lab.shape


def _renders(n, **sizes):
    return [render_demo_image(np.random.default_rng([7, i]), **sizes) for i in range(n)]


def test_sizes_objects_and_classes():
    # 112, 126 and 128 are multiples of 14 or 16 inside the range and must be avoided
    renders = _renders(40, min_size=110, max_size=130)
    all_classes = set()
    for rgb, labels, classes in renders:
        h, w = labels.shape
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and labels.dtype == np.uint8
        for s in (h, w):
            assert 110 <= s <= 130 and s % 14 and s % 16
        assert 1 <= len(classes) <= 3
        assert all(1 <= c <= len(DEMO_CLASSES) for c in classes)
        present = set(np.unique(labels).tolist()) - {0, 255}
        assert present == set(classes)
        all_classes |= set(classes)
    assert len(DEMO_CLASSES) >= 4
    assert all_classes == set(range(1, len(DEMO_CLASSES) + 1))
    assert len({r[1].shape for r in renders}) > 5  # sizes vary


def test_no_size_possible_is_an_error():
    with pytest.raises(ValueError, match="multiples of 14 and 16"):
        render_demo_image(np.random.default_rng(0), min_size=112, max_size=112)


def test_void_band_separates_regions_and_hugs_objects():
    for _, labels, _ in _renders(12, min_size=200, max_size=260):
        void = labels == 255
        assert void.any()
        # no two 4-neighbours carry different non-void labels: the band covers every outline
        for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
            both = (a != 255) & (b != 255)
            assert not np.any(both & (a != b))
        # void lies only along object outlines: each void blob touches an object pixel
        obj = (labels >= 1) & (labels <= len(DEMO_CLASSES))
        blobs, n = ndimage.label(void, structure=np.ones((3, 3)))
        touching = np.unique(blobs[ndimage.binary_dilation(obj) & void])
        assert set(touching.tolist()) == set(range(1, n + 1))
        # the band is thin: most object area stays labelled
        assert void.sum() < obj.sum()


def test_void_band_matches_brute_force():
    rng = np.random.default_rng(0)
    inst = np.zeros((30, 40), np.uint8)
    inst[5:20, 3:15] = 1
    inst[10:28, 12:30] = 2
    inst[2:8, 30:38] = 3
    inst[rng.random(inst.shape) < 0.01] = 4
    r = VOID_BAND // 2
    ref = np.zeros(inst.shape, bool)
    for y in range(inst.shape[0]):
        for x in range(inst.shape[1]):
            win = inst[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            ref[y, x] = win.min() != win.max()
    np.testing.assert_array_equal(void_band(inst), ref)


def test_classes_differ_in_colour():
    means = {c: [] for c in range(1, len(DEMO_CLASSES) + 1)}
    for rgb, labels, _ in _renders(30, **SMALL):
        for c in means:
            if (labels == c).sum() > 50:
                means[c].append(rgb[labels == c].astype(float).mean(0))
    red, blue, green, yellow = (np.mean(means[c], 0) for c in range(1, 5))
    assert red[0] > red[1] + 40 and red[0] > red[2] + 40
    assert blue[2] > blue[0] + 40 and blue[2] > blue[1] + 40
    assert green[1] > green[0] + 40 and green[1] > green[2] + 40
    assert min(yellow[0], yellow[1]) > yellow[2] + 80


def _render_digest(**kw) -> str:
    import hashlib

    h = hashlib.sha256()
    for i in range(12):
        rgb, lab, cl = render_demo_image(np.random.default_rng([0, i]), 64, 120, **kw)
        h.update(rgb.tobytes())
        h.update(lab.tobytes())
        h.update(bytes(cl))
    return h.hexdigest()


def test_the_default_demo_draws_what_it_drew_before_touching_existed():
    # computed with the generator of before dataset.demo.touching (commit b0df229)
    want = "2342ebd7f5656ec788038e03a5c6ef51e2ab563c6f02121f1b07587cb7b969ee"
    assert _render_digest() == want
    assert _render_digest(touching=False) == want


def test_touching_pairs_are_two_classes_in_one_connected_component(tmp_path):
    """dataset.demo.touching: image ``i`` holds a touching pair when the draw of its own
    generator ``(seed, i, 1)`` is below the share; its objects are then two of two classes
    that form one 8-connected foreground, so regions components gives them one region."""
    root = tmp_path / "demo"
    ids = generate_demo(root, 24, seed=3, min_size=64, max_size=120, touching=0.5, log=print)
    chosen = [np.random.default_rng([3, i, 1]).random() < 0.5 for i in range(len(ids))]
    assert 6 <= sum(chosen) <= 18
    for image_id, touch in zip(ids, chosen, strict=True):
        if not touch:
            continue
        lab = read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        # the void band lies on the objects' outlines: it counts as foreground here
        n, _ = cv2.connectedComponents((lab > 0).astype(np.uint8), connectivity=8)
        assert n - 1 == 1, image_id
        assert len(set(np.unique(lab).tolist()) - {0, 255}) == 2, image_id
    again = tmp_path / "again"
    generate_demo(again, 24, seed=3, min_size=64, max_size=120, touching=0.5, log=print)
    assert _files(again) == _files(root)
    with pytest.raises(ValueError, match="touching"):
        generate_demo(tmp_path / "bad", 1, touching=1.5)
