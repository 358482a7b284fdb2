import numpy as np
import pytest

from lcseg_steps.data.image_table import list_images
from lcseg_steps.data.voc import VOC_CLASSES, list_voc
from tests.fixtures_data import VOC_EXTRA, VOC_IMAGES, VOC_VAL, make_voc


def test_voc_classes():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[15] == "person"


def test_list_voc_split_then_extra_lists(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    recs = list_voc(root, "val", ["extra.txt"])
    expected_extra = [i for i in VOC_EXTRA if i not in VOC_VAL]
    assert [r.image_id for r in recs] == VOC_VAL + expected_extra
    for r in recs:
        assert r.path == str(root / "JPEGImages" / f"{r.image_id}.jpg")
        assert (r.height, r.width, r.shard) == (0, 0, "")
    for r in recs[: len(VOC_VAL)]:
        assert r.gt == str(root / "SegmentationClass" / f"{r.image_id}.png")
    assert all(r.gt == "" for r in recs[len(VOC_VAL) :])
    # absolute extra list paths work too, and the config dispatch gives the same
    assert list_voc(root, "val", [str(root / "extra.txt")]) == recs
    cfg = {"name": "voc12", "root": str(root), "split": "val", "extra_lists": ["extra.txt"]}
    assert list_images(cfg) == recs
    assert set(VOC_IMAGES) >= {r.image_id for r in recs}


def test_list_voc_missing_files_name_path_and_key(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    with pytest.raises(FileNotFoundError, match=r"train\.txt.*dataset\.split"):
        list_voc(root, "train")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*dataset\.extra_lists"):
        list_voc(root, "val", ["nope.txt"])
    with pytest.raises(FileNotFoundError, match=r"missing_root.*dataset\.root"):
        list_voc(tmp_path / "missing_root", "val")


def test_list_images_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="dataset.name"):
        list_images({"name": "imagenet", "root": str(tmp_path)})


def test_voc_keeps_stored_pixels_whatever_the_exif_tag(tmp_path):
    """VOC's annotations are in stored pixels: a JPEG with an EXIF orientation under a VOC
    layout is indexed and read as stored (orientation 1), and its label map fits it."""
    from lcseg_steps.data.image_table import build_index, load_ground_truth
    from lcseg_steps.data.images import read_record, read_rgb
    from tests.fixtures_data import asymmetric_rgb, write_exif_jpeg

    root = make_voc(tmp_path / "VOC2012")
    h, w, _ = VOC_IMAGES["2007_000032"]
    path = write_exif_jpeg(root / "JPEGImages" / "2007_000032.jpg", asymmetric_rgb(h, w), 6)
    assert read_rgb(path, "exif").shape[:2] == (w, h)  # a viewer shows it turned
    cfg = {"name": "voc12", "root": str(root), "split": "val", "on_bad_image": None}
    rec = next(r for r in build_index(cfg, 8, log=lambda s: None) if r.image_id == "2007_000032")
    assert (rec.orientation, rec.height, rec.width) == (1, h, w)
    np.testing.assert_array_equal(read_record(rec), read_rgb(path))
    assert load_ground_truth(rec).shape == (h, w)
