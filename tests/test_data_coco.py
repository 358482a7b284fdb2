import json
import os
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lcseg_steps.data import coco as coco_mod
from lcseg_steps.data import listing_cache
from lcseg_steps.data.coco import (
    coco_category_map,
    list_coco,
    read_coco_header,
    render_coco_gt,
)
from lcseg_steps.data.image_table import ImageRecord, class_names, list_images, load_ground_truth
from lcseg_steps.data.listing_cache import count_images

# pycocotools 2.0.x with numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# COCO's 80 thing category ids (1..90 with gaps)
COCO_THING_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _compressed_rle(m):
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(m):
    """COCO's crowd format: run lengths over the column-major pixels, starting with 0s."""
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def _instances():
    """A tiny instances json: 3 images, polygon + compressed RLE + crowd RLE annotations,
    overlapping instances and an equal-area tie."""
    h, w = 40, 50
    images = [
        {"id": 42, "file_name": "000000000042.jpg", "height": h, "width": w},
        {"id": 7, "file_name": "000000000007.jpg", "height": 30, "width": 30},
        {"id": 100, "file_name": "000000000100.jpg", "height": 20, "width": 25, "license": 1},
    ]
    categories = [  # deliberately not in id order
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 1, "name": "person", "supercategory": "person"},
    ]
    anns = [
        # big polygon (dog)
        {"id": 5, "image_id": 42, "category_id": 18, "iscrowd": 0,
         "segmentation": [[2.0, 2.0, 45.0, 3.0, 40.0, 35.0, 4.0, 30.0]]},
        # smaller explicit-rectangle instance (car) as compressed RLE, on top of the dog
        {"id": 9, "image_id": 42, "category_id": 3, "iscrowd": 0,
         "segmentation": _compressed_rle(_rect(h, w, 10, 20, 10, 22))},
        # two equal-area rectangles overlapping: the higher id is painted last
        {"id": 12, "image_id": 42, "category_id": 90, "iscrowd": 0,
         "segmentation": _compressed_rle(_rect(h, w, 25, 30, 30, 40))},
        {"id": 11, "image_id": 42, "category_id": 1, "iscrowd": 0,
         "segmentation": _compressed_rle(_rect(h, w, 27, 32, 33, 43))},
        # crowd over part of the dog and the background
        {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 1,
         "segmentation": _uncompressed_rle(_rect(h, w, 30, 40, 0, 50))},
        # image 100: a two-part polygon
        {"id": 20, "image_id": 100, "category_id": 1, "iscrowd": 0,
         "segmentation": [[1, 1, 8, 1, 8, 8, 1, 8], [12, 10, 22, 10, 17, 18]]},
    ]  # fmt: skip
    for a in anns:
        a["area"] = 0.0
        a["bbox"] = [0.0, 0.0, 1.0, 1.0]
    return images, anns, categories


def _write(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(members), ensure_ascii=False))
    return path


def _make_coco(root, split="val2017"):
    images, anns, cats = _instances()
    (root / split).mkdir(parents=True)
    ann = _write(
        root / "annotations" / f"instances_{split}.json",
        [
            ("info", {"description": "tiny — ünïcode test", "year": 2017}),
            ("licenses", [{"id": 1, "name": "x"}]),
            ("images", images),
            ("annotations", anns),
            ("categories", cats),
        ],
    )
    return ann


def _reference(ann_path, image_id):
    """Brute force: decode each annotation with pycocotools.mask directly, then per pixel
    the smallest covering instance wins (ties: the higher annotation id), else 255 under a
    crowd, else 0."""
    data = json.loads(ann_path.read_text())
    info = next(i for i in data["images"] if i["id"] == image_id)
    h, w = info["height"], info["width"]
    cmap = {cid: i + 1 for i, cid in enumerate(sorted(c["id"] for c in data["categories"]))}
    inst, crowd = [], []
    for a in data["annotations"]:
        if a["image_id"] != image_id:
            continue
        seg = a["segmentation"]
        if isinstance(seg, list):
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        elif isinstance(seg["counts"], list):
            m = mask_utils.decode(mask_utils.frPyObjects(seg, h, w))
        else:
            m = mask_utils.decode(seg)
        (crowd if a["iscrowd"] else inst).append((a["id"], cmap[a["category_id"]], m.astype(bool)))
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            cover = [(m.sum(), -aid, cls) for aid, cls, m in inst if m[y, x]]
            if cover:
                out[y, x] = min(cover)[2]
            elif any(m[y, x] for _, _, m in crowd):
                out[y, x] = 255
    return out


def test_category_map_ascending_ids():
    cats = [{"id": i} for i in reversed(COCO_THING_IDS)]
    cmap = coco_category_map(cats)
    assert cmap == {cid: i + 1 for i, cid in enumerate(COCO_THING_IDS)}
    assert cmap[1] == 1 and cmap[90] == 80 and cmap[13] == 12


def test_list_coco_matches_json_load(tmp_path):
    root = tmp_path / "coco"
    ann = _make_coco(root)
    recs = list_coco(root, "val2017")
    data = json.loads(ann.read_text())
    expected = sorted(data["images"], key=lambda d: d["id"])
    assert [r.image_id for r in recs] == [d["file_name"][:-4] for d in expected]
    assert [(r.height, r.width) for r in recs] == [(d["height"], d["width"]) for d in expected]
    assert [r.gt for r in recs] == [f"{ann}#{d['id']}" for d in expected]
    assert [r.path for r in recs] == [str(root / "val2017" / d["file_name"]) for d in expected]
    assert list_images({"name": "coco", "root": str(root), "split": "val2017"}) == recs


def test_list_coco_missing_paths(tmp_path):
    root = tmp_path / "coco"
    _make_coco(root)
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json.*dataset\.split"):
        list_coco(root, "train2017")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*dataset\.root"):
        list_coco(tmp_path / "nowhere", "val2017")


@pytest.mark.parametrize(
    "order",
    [
        ["info", "licenses", "images", "annotations", "categories"],
        ["annotations", "categories", "images"],
        ["categories", "annotations", "images", "info"],
        ["images", "categories", "annotations"],
    ],
)
def test_read_coco_header_equals_json_load(tmp_path, monkeypatch, order):
    images, anns, cats = _instances()
    # traps for a text search: nested keys and strings that look like top-level keys
    anns[0]["attributes"] = {"categories": [{"id": 99}], "images": []}
    anns[1]["note"] = 'say "categories": [] and "images": [] }'
    members = {
        "info": {"description": "tiny — ünïcode", "images": "none"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    path = _write(tmp_path / "x.json", [(k, members[k]) for k in order])

    def no_full_load(*a, **k):
        raise AssertionError("fell back to json.load")

    monkeypatch.setattr(json, "load", no_full_load)
    keys = tuple(k for k in ("images", "categories", "info") if k in order)
    got = read_coco_header(path, keys)
    want = json.loads(path.read_text())
    assert got == {k: want[k] for k in keys}


def test_read_coco_header_falls_back_when_key_absent(tmp_path):
    images, anns, _ = _instances()
    path = _write(tmp_path / "x.json", [("images", images), ("annotations", anns)])
    assert read_coco_header(path) == {"images": images}
    (tmp_path / "bad.json").write_text('{"images": [1, 2')
    with pytest.raises(ValueError, match="bad.json"):
        read_coco_header(tmp_path / "bad.json")


def test_render_matches_brute_force(tmp_path):
    ann = _make_coco(tmp_path / "coco")
    for image_id in (42, 7, 100):
        got = render_coco_gt(ann, image_id)
        ref = _reference(ann, image_id)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, ref)
    # spot checks of the rule against the explicit rectangles of image 42
    # (classes: person 1, car 2, dog 3, toothbrush 4)
    lab = render_coco_gt(ann, 42)
    assert (lab[10:20, 10:22] == 2).all()  # car on top of the larger dog
    assert (lab[25:30, 30:40] == 4).all()  # equal-area tie: id 12 painted after id 11
    assert (lab[27:32, 40:43] == 1).all()
    assert lab[35, 20] == 255 and lab[39, 49] == 255  # crowd, no instance there
    assert lab[31, 35] == 1  # instance wins over crowd
    assert (render_coco_gt(ann, 7) == 0).all() and render_coco_gt(ann, 7).shape == (30, 30)


def test_render_caches_coco_and_load_ground_truth(tmp_path):
    root = tmp_path / "coco"
    ann = _make_coco(root)
    coco_mod._load_coco.cache_clear()
    recs = {r.gt.rsplit("#", 1)[1]: r for r in list_coco(root, "val2017")}
    np.testing.assert_array_equal(load_ground_truth(recs["42"]), _reference(ann, 42))
    render_coco_gt(ann, 100)
    info = coco_mod._load_coco.cache_info()
    assert info.misses == 1 and info.hits >= 1
    bad = ImageRecord("x", "x.jpg", f"{ann}#42", height=41, width=50)
    with pytest.raises(ValueError, match=r"instances_val2017\.json.*41x50"):
        load_ground_truth(bad)
    with pytest.raises(ValueError, match="no image with id 5"):
        render_coco_gt(ann, 5)


def test_unknown_category_is_an_error(tmp_path):
    images, anns, cats = _instances()
    anns[0]["category_id"] = 77
    path = _write(
        tmp_path / "u.json", [("images", images), ("annotations", anns), ("categories", cats)]
    )
    with pytest.raises(ValueError, match="unknown category 77"):
        render_coco_gt(path, 42)


def test_read_coco_header_stops_before_annotations(tmp_path):
    images, _, _ = _instances()
    # everything after "annotations": [ is garbage: the listing must never parse it
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": images})[:-1] + ', "annotations": [{{{ not json')
    assert read_coco_header(path, ("images",)) == {"images": images}


def test_read_coco_header_rejects_empty_and_non_object_files(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match="empty.json.*empty"):
        read_coco_header(tmp_path / "empty.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json.*object"):
        read_coco_header(tmp_path / "list.json")


def test_coco_class_names(tmp_path):
    root = tmp_path / "coco"
    _make_coco(root)
    names = class_names({"name": "coco", "root": str(root), "split": "val2017"})
    assert names == ["background", "person", "car", "dog", "toothbrush"]


# --- the DAG-time image count and its cache (lcseg_steps/data/listing_cache.py)


def _coco_cfg(root, split="val2017"):
    return {"name": "coco", "root": str(root), "split": split, "extra_lists": []}


def _age(path, seconds=60):
    """Set a file's mtime into the past (its ctime stays now: the cache needs both old)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


@pytest.fixture
def cached_coco(tmp_path, monkeypatch):
    """A tiny COCO tree, a cache path, and a counter of real listings; files count as
    settled at once."""
    monkeypatch.setattr(listing_cache, "SETTLE_S", -1e9)
    root = tmp_path / "coco"
    ann = _make_coco(root)
    calls = []
    real = listing_cache._listing()

    def counting(ds):
        calls.append(ds["root"])
        return real(ds)

    monkeypatch.setattr(listing_cache, "_listing", lambda: counting)
    return root, ann, tmp_path / "results" / "run" / ".listing-cache.json", calls


def test_count_is_cached_and_reused(cached_coco):
    root, _, cache, calls = cached_coco
    n = len(list_coco(root, "val2017"))
    assert count_images(_coco_cfg(root), cache) == n and len(calls) == 1
    assert json.loads(cache.read_text())["n_images"] == n
    assert count_images(_coco_cfg(root), cache) == n and len(calls) == 1  # no listing
    assert not list(cache.parent.glob("*.tmp-*"))


def test_changed_json_invalidates_the_cache(cached_coco):
    root, ann, cache, calls = cached_coco
    assert count_images(_coco_cfg(root), cache) == 3
    data = json.loads(ann.read_text())
    old = os.stat(ann)
    # one more image, mtime set back to the old one: size, ctime and inode still differ
    data["images"].append({"id": 991, "file_name": "000000000991.jpg", "height": 4, "width": 5})
    time.sleep(0.02)  # past one tick of the kernel's file clock
    ann.write_text(json.dumps(data))
    os.utime(ann, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert count_images(_coco_cfg(root), cache) == 4 and len(calls) == 2
    # the same size and mtime, rewritten in place: the ctime differs
    data["images"][-1].update(id=992, file_name="000000000992.jpg")
    time.sleep(0.02)  # past one tick of the kernel's file clock
    ann.write_text(json.dumps(data))
    os.utime(ann, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert count_images(_coco_cfg(root), cache) == 4 and len(calls) == 3
    # replaced by another file of the same content (a new inode)
    time.sleep(0.02)
    other = ann.with_name("other.json")
    other.write_text(ann.read_text())
    os.replace(other, ann)
    assert count_images(_coco_cfg(root), cache) == 4 and len(calls) == 4
    assert count_images(_coco_cfg(root), cache) == 4 and len(calls) == 4


def test_other_dataset_section_is_a_miss(cached_coco):
    root, _, cache, calls = cached_coco
    count_images(_coco_cfg(root), cache)
    cfg = _coco_cfg(root)
    cfg["extra_lists"] = ["x.txt"]
    count_images(cfg, cache)
    assert len(calls) == 2


def test_a_fresh_json_is_not_cached(cached_coco, monkeypatch):
    root, ann, cache, calls = cached_coco
    monkeypatch.setattr(listing_cache, "SETTLE_S", 3600.0)
    count_images(_coco_cfg(root), cache)
    assert not cache.exists()


def test_missing_image_folder_raises_despite_the_cache(cached_coco):
    root, _, cache, _ = cached_coco
    count_images(_coco_cfg(root), cache)
    (root / "val2017").rmdir()
    with pytest.raises(FileNotFoundError, match="COCO image directory"):
        count_images(_coco_cfg(root), cache)
    (root / "val2017").mkdir()
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="COCO annotation file"):
        count_images(_coco_cfg(root), cache)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"key": {}, "n_images": 3}'])
def test_a_broken_cache_is_a_miss(cached_coco, content):
    root, _, cache, calls = cached_coco
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    assert count_images(_coco_cfg(root), cache) == 3 and len(calls) == 1
    assert count_images(_coco_cfg(root), cache) == 3 and len(calls) == 1


def test_a_listing_error_writes_no_cache(cached_coco):
    root, ann, cache, _ = cached_coco
    data = json.loads(ann.read_text())
    data["images"].append(dict(data["images"][0], id=99))  # a second image of the same stem
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="share the file stem"):
        count_images(_coco_cfg(root), cache)
    assert not cache.exists()


def test_unwritable_cache_still_counts(cached_coco):
    root, _, cache, calls = cached_coco
    cache.parent.parent.mkdir(parents=True)
    cache.parent.write_text("a file where the results folder should be")
    assert count_images(_coco_cfg(root), cache) == 3
    assert count_images(_coco_cfg(root), cache) == 3 and len(calls) == 2


def test_coco_keeps_stored_pixels_whatever_the_exif_tag(tmp_path):
    """COCO's sizes and annotations are in stored pixels: an image with EXIF orientation
    6 is indexed as stored (orientation 1, the json's size) and read so."""
    from lcseg_steps.data.image_table import build_index
    from lcseg_steps.data.images import read_record, read_rgb
    from tests.fixtures_data import asymmetric_rgb, write_exif_jpeg

    root = tmp_path / "coco"
    ann = _make_coco(root)
    for info in json.loads(ann.read_text())["images"]:
        raw = asymmetric_rgb(info["height"], info["width"])
        write_exif_jpeg(root / "val2017" / info["file_name"], raw, 6 if info["id"] == 42 else None)
    cfg = {"name": "coco", "root": str(root), "split": "val2017", "on_bad_image": None}
    recs = {r.gt.rsplit("#", 1)[1]: r for r in build_index(cfg, 8, log=lambda s: None)}
    rec = recs["42"]
    assert (rec.orientation, rec.height, rec.width) == (1, 40, 50)
    np.testing.assert_array_equal(read_record(rec), read_rgb(rec.path))
    np.testing.assert_array_equal(load_ground_truth(rec), _reference(ann, 42))
