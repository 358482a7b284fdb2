"""COCO-Stuff-27 and Cityscapes-27: the label tables against the peers' code (transcribed
here by hand from STEGO's src/data.py, independently of the shipped CSVs), their
invariants, the listing of generated trees in the usual layouts, ground-truth reading and
the messages when data are missing."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcseg_steps.data.image_table import class_names, list_images, load_ground_truth
from lcseg_steps.data.label_maps import IGNORE, label_map, read_mapped_png
from lcseg_steps.data.registry import dataset_for_gt, get_dataset
from tests.scene27_trees import COCO_IDS, cityscapes_tree, cocostuff_tree

# STEGO src/data.py, class Coco, fine_to_coarse, written as coarse -> fine ids (read off
# the dict: runs of consecutive ids first, then the scattered stuff ids)
STEGO_COARSE_TO_FINE = {
    0: range(71, 77),
    1: range(77, 83),
    2: range(51, 61),
    3: range(61, 71),
    4: range(83, 91),
    5: range(43, 51),
    6: range(25, 33),
    7: range(15, 25),
    8: range(9, 15),
    9: [0],
    10: range(33, 43),
    11: range(1, 9),
    12: [101, 102],
    13: [100, 113, 114, 115, 116, 117],
    14: [120, 121, 152, 169],
    15: [97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164],
    16: [99, 131, 138, 142],
    17: [91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167],
    18: range(170, 177),
    19: [179, 180],
    20: [94, 95, 127, 150, 157, 165],
    21: [110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158],
    22: [93, 96, 118, 123, 128, 133, 141, 162, 168],
    23: [105, 156],
    24: [126, 134, 149, 159, 161, 181],
    25: [98, 112, 137, 145, 163],
    26: [119, 147, 154, 177, 178],
}
# STEGO src/train_segmentation.py get_class_labels("cocostuff27"), food/furniture split
STEGO_COCO_NAMES = [
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory",
    "animal", "outdoor", "person", "sports", "vehicle", "ceiling", "floor", "food",
    "furniture", "rawmaterial", "textile", "wall", "window", "building", "ground", "plant",
    "sky", "solid", "structural", "water",
]  # fmt: skip
# get_class_labels("cityscapes"); CityscapesSeg: first_nonvoid = 7
STEGO_CITY_NAMES = [
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail",
    "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan", "trailer",
    "train", "motorcycle", "bicycle",
]  # fmt: skip
FIRST_NONVOID = 7


def test_cocostuff_table_is_stegos():
    m = label_map("cocostuff27")
    expected = np.full(256, IGNORE, np.uint8)
    for coarse, fines in STEGO_COARSE_TO_FINE.items():
        for f in fines:
            assert expected[f] == IGNORE, f"fine id {f} transcribed twice"
            expected[f] = coarse
    assert np.array_equal(m.lut, expected)
    # the invariants: 27 classes, every fine id 0..181 to exactly one class, 255 ignored,
    # nothing else a label
    assert len(m.class_names) == 27 and len(set(m.class_names)) == 27
    assert (m.lut[:182] < 27).all() and m.lut[255] == IGNORE
    assert m.known[:182].all() and m.known[255] and not m.known[182:255].any()
    assert set(m.lut[:182].tolist()) == set(range(27))
    base = [n.replace("-things", "").replace("-stuff", "") for n in m.class_names]
    assert base == STEGO_COCO_NAMES


def test_cityscapes_table_is_stegos():
    m = label_map("cityscapes27")
    ids = np.arange(256)
    shifted = ids - FIRST_NONVOID  # STEGO: target - 7, below 0 -> -1; >= 27 masked
    expected = np.where((shifted >= 0) & (shifted < 27), shifted, IGNORE)
    assert np.array_equal(m.lut, expected.astype(np.uint8))
    assert m.known.all()
    assert list(m.class_names) == STEGO_CITY_NAMES


def test_both_are_registered_scene_datasets_without_background():
    for name in ("cocostuff27", "cityscapes27"):
        ds = get_dataset(name)
        assert ds.background is False and not ds.generated and ds.on_bad_image == "error"
        assert len(ds.class_names({"root": "x"})) == 27
    assert get_dataset("voc12").background and get_dataset("coco").background


def test_cocostuff_listing_and_ground_truth(tmp_path):
    fine = cocostuff_tree(tmp_path)
    cfg = {"name": "cocostuff27", "root": str(tmp_path), "split": "val"}
    recs = list_images(cfg)
    assert [r.image_id for r in recs] == list(COCO_IDS[:2])  # the curated ones, in order
    assert recs[0].path == str(tmp_path / "images" / "val2017" / f"{COCO_IDS[0]}.jpg")
    assert get_dataset("cocostuff27").inputs(cfg) == [
        str(tmp_path / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt")
    ]
    m = label_map("cocostuff27")
    for r in recs:
        assert dataset_for_gt(r.gt).name == "cocostuff27"
        gt = load_ground_truth(r)
        f = fine[r.image_id]
        # the peer's loop: zeros, each fine id to its coarse class, 255 -> ignore
        want = np.zeros_like(f)
        for coarse, fines in STEGO_COARSE_TO_FINE.items():
            for v in fines:
                want[f == v] = coarse
        want[f == 255] = IGNORE
        assert np.array_equal(gt, want)
    assert class_names(cfg) == list(m.class_names)
    # dataset.curated_list names the list elsewhere
    other = tmp_path / "mine.txt"
    other.write_text(f"{COCO_IDS[2]}.jpg\n\n")
    assert [r.image_id for r in list_images({**cfg, "curated_list": str(other)})] == [COCO_IDS[2]]


def test_cocostuff_without_the_curated_list_says_what_it_is(tmp_path):
    cocostuff_tree(tmp_path, curated=False)
    cfg = {"name": "cocostuff27", "root": str(tmp_path), "split": "val"}
    with pytest.raises(FileNotFoundError) as e:
        list_images(cfg)
    msg = str(e.value)
    assert str(tmp_path / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt") in msg
    assert "IIC" in msg and "COCOStuff164kCurated.tar.gz" in msg and "curated_list" in msg


@pytest.mark.parametrize(
    "missing", ["", "images/val2017", "annotations/stuffthingmaps_trainval2017/val2017"]
)
def test_cocostuff_missing_folders_are_named(tmp_path, missing):
    root = tmp_path / "cs"
    if missing:
        cocostuff_tree(root)
        for p in sorted((root / missing).iterdir()):
            p.unlink()
        (root / missing).rmdir()
    with pytest.raises(FileNotFoundError, match=str(root / missing).rstrip("/")):
        list_images({"name": "cocostuff27", "root": str(root), "split": "val"})


def test_cityscapes_listing_and_ground_truth(tmp_path):
    ids = cityscapes_tree(tmp_path)
    cfg = {"name": "cityscapes27", "root": str(tmp_path), "split": "val"}
    recs = list_images(cfg)
    assert [r.image_id for r in recs] == sorted(ids)  # by city, then name
    for r in recs:
        assert dataset_for_gt(r.gt).name == "cityscapes27"
        labels = ids[r.image_id].astype(np.int64) - FIRST_NONVOID
        labels[labels < 0] = -1
        want = np.where(labels >= 0, labels, IGNORE).astype(np.uint8)
        assert np.array_equal(load_ground_truth(r), want)
    assert get_dataset("cityscapes27").inputs(cfg) == [
        str(tmp_path / "leftImg8bit" / "val"),
        str(tmp_path / "gtFine" / "val"),
    ]


@pytest.mark.parametrize("missing", ["", "leftImg8bit/val", "gtFine/val"])
def test_cityscapes_missing_folders_are_named(tmp_path, missing):
    root = tmp_path / "city"
    if missing:
        cityscapes_tree(root)
        shutil.rmtree(root / missing)
    with pytest.raises(FileNotFoundError, match=str(root / missing).rstrip("/")):
        list_images({"name": "cityscapes27", "root": str(root), "split": "val"})


def test_a_value_outside_the_table_is_an_error(tmp_path):
    p = Path(tmp_path) / "x.png"
    Image.fromarray(np.full((2, 3), 200, np.uint8)).save(p)
    with pytest.raises(ValueError, match="value 200 is not a label of cocostuff27"):
        read_mapped_png(p, label_map("cocostuff27"))
    assert (read_mapped_png(p, label_map("cityscapes27")) == IGNORE).all()
    with pytest.raises(FileNotFoundError, match="y.png"):
        read_mapped_png(Path(tmp_path) / "y.png", label_map("cityscapes27"))
