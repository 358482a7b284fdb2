import dataclasses
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lcseg_steps.data import image_table as index_mod
from lcseg_steps.data.demo import generate_demo
from lcseg_steps.data.image_table import (
    ImageRecord,
    assign_shards,
    build_index,
    list_images,
    load_ground_truth,
    read_index,
    shard_names,
    write_index,
)
from lcseg_steps.data.images import ImageError, read_rgb
from lcseg_steps.data.palette import read_label_png, write_label_png
from tests.fixtures_data import VOC_IMAGES, VOC_VAL, make_voc


def _demo_cfg(root, n=3):
    return {
        "name": "demo",
        "root": str(root),
        "split": "val",
        "extra_lists": [],
        "demo": {"n_images": n, "seed": 0, "min_size": 40, "max_size": 70},
    }


def _voc_cfg(root, extra=("extra.txt",)):
    return {"name": "voc12", "root": str(root), "split": "val", "extra_lists": list(extra)}


def test_shard_names_and_assignment_brute_force():
    assert shard_names(0, 4) == []
    assert shard_names(4, 4) == ["s0000"]
    assert shard_names(9, 4) == ["s0000", "s0001", "s0002"]
    with pytest.raises(ValueError, match="shard size"):
        shard_names(3, 0)
    for n, size in [(1, 1), (7, 3), (10, 5), (11, 100)]:
        recs = [ImageRecord(f"i{k}", f"p{k}", "") for k in range(n)]
        out = assign_shards(recs, size)
        assert [r.image_id for r in out] == [r.image_id for r in recs]
        counts = {}
        for k, r in enumerate(out):
            counts[r.shard] = counts.get(r.shard, 0) + 1
            assert r.shard == f"s{k // size:04d}"
        assert list(counts) == shard_names(n, size)
        assert all(c == size for c in list(counts.values())[:-1])
        assert 1 <= list(counts.values())[-1] <= size


def test_list_images_demo_before_data_exist(tmp_path):
    recs = list_images(_demo_cfg(tmp_path / "nothing_here", n=3))
    assert [r.image_id for r in recs] == ["demo_0000", "demo_0001", "demo_0002"]
    assert recs[1].path == str(tmp_path / "nothing_here" / "JPEGImages" / "demo_0001.jpg")
    assert recs[1].gt == str(tmp_path / "nothing_here" / "SegmentationClass" / "demo_0001.png")
    assert all((r.height, r.width) == (0, 0) for r in recs)


def test_build_index_demo_sizes_and_gt(tmp_path):
    cfg = _demo_cfg(tmp_path / "demo", n=5)
    d = cfg["demo"]
    generate_demo(
        cfg["root"], d["n_images"], d["seed"], d["min_size"], d["max_size"], log=lambda s: None
    )
    lines = []
    recs = build_index(cfg, shard_size=2, log=lines.append)
    assert lines and [r.shard for r in recs] == ["s0000", "s0000", "s0001", "s0001", "s0002"]
    for r in recs:
        img = read_rgb(r.path)
        assert (r.height, r.width) == img.shape[:2]
        gt = load_ground_truth(r)
        np.testing.assert_array_equal(gt, read_label_png(r.gt))
        assert gt.shape == img.shape[:2]


def test_build_index_voc_grayscale_and_unlabelled(tmp_path):
    root = make_voc(tmp_path / "voc")
    with Image.open(root / "JPEGImages" / "2007_000039.jpg") as im:
        assert im.mode == "L"
    recs = build_index(_voc_cfg(root), shard_size=100, log=lambda s: None)
    for r in recs:
        h, w, _ = VOC_IMAGES[r.image_id]
        assert (r.height, r.width, r.shard) == (h, w, "s0000")
        assert read_rgb(r.path).shape == (h, w, 3)  # the grayscale JPEG decodes to RGB too
    unlabelled = [r for r in recs if r.image_id not in VOC_VAL]
    assert unlabelled and all(load_ground_truth(r) is None for r in unlabelled)


def test_build_index_progress_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "PROGRESS_EVERY", 2)
    lines = []
    build_index(_voc_cfg(make_voc(tmp_path / "voc")), shard_size=2, log=lines.append)
    assert sum("2/5" in s or "4/5" in s for s in lines) == 2


def test_build_index_corrupt_and_missing_images(tmp_path):
    root = make_voc(tmp_path / "voc")
    bad = root / "JPEGImages" / "2008_000123.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(ImageError, match="2008_000123.jpg: not a decodable image"):
        build_index(_voc_cfg(root), shard_size=10, log=lambda s: None)
    bad.unlink()
    with pytest.raises(ImageError, match="2008_000123.jpg: image file not found"):
        build_index(_voc_cfg(root), shard_size=10, log=lambda s: None)


def test_build_index_missing_gt(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000039.png"):
        build_index(_voc_cfg(root, extra=()), shard_size=10, log=lambda s: None)


def test_load_ground_truth_errors(tmp_path):
    root = make_voc(tmp_path / "voc")
    rec = list_images(_voc_cfg(root))[0]
    h, w, _ = VOC_IMAGES[rec.image_id]
    # size known from the record, and from the image header when not known
    assert load_ground_truth(rec).shape == (h, w)
    assert load_ground_truth(dataclasses.replace(rec, height=h, width=w)).shape == (h, w)
    with pytest.raises(ValueError, match=rf"{rec.image_id}\.png.*{h}x{w}.*{h + 1}x{w}"):
        load_ground_truth(dataclasses.replace(rec, height=h + 1, width=w))
    write_label_png(rec.gt, np.zeros((h, w + 2), np.uint8))
    with pytest.raises(ValueError, match=rf"{rec.image_id}\.png"):
        load_ground_truth(rec)
    missing = dataclasses.replace(rec, gt=str(tmp_path / "gone.png"))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_ground_truth(missing)


def test_index_tsv_round_trip(tmp_path):
    recs = [
        ImageRecord("a", "/x y/a.jpg", "/x y/a.png", 10, 20, "s0000"),
        ImageRecord("b", "rel/b.jpg", "", 7, 3, "s0000"),
        ImageRecord("c", "c.jpg", "/ann/instances_val2017.json#139", 480, 640, "s0001"),
        ImageRecord("d", "d.jpg", "", 600, 512, "s0001", orientation=6),
    ]
    path = tmp_path / "out" / "images.tsv"
    path.parent.mkdir()
    # what a writer killed on this host left: the pid of a process that has exited
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (path.parent / f"images.tsv.tmp-{socket.gethostname()}-{dead}").write_text("id\tpa")
    write_index(recs, path)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == [
        "id",
        "path",
        "gt",
        "height",
        "width",
        "shard",
        "orientation",
    ]
    assert lines[2] == "b\trel/b.jpg\t\t7\t3\ts0000\t1"
    assert lines[4] == "d\td.jpg\t\t600\t512\ts0001\t6"
    assert read_index(path) == recs
    assert not list(path.parent.glob("*.tmp-*"))


def test_index_tsv_before_the_orientation_column(tmp_path):
    """An images.tsv written before the orientation column reads as orientation 1 (the
    stored pixels, as it was used then)."""
    path = tmp_path / "images.tsv"
    path.write_text("id\tpath\tgt\theight\twidth\tshard\na\ta.jpg\t\t5\t7\ts0000\n")
    assert read_index(path) == [ImageRecord("a", "a.jpg", "", 5, 7, "s0000", 1)]
    path.write_text("id\tpath\tgt\theight\twidth\tshard\torientation\na\ta.jpg\t\t5\t7\ts0000\t9\n")
    with pytest.raises(ValueError, match="images.tsv:2.*orientation must be 1..8"):
        read_index(path)


def test_index_tsv_errors(tmp_path):
    with pytest.raises(ValueError, match="tab"):
        write_index([ImageRecord("a\tb", "p", "")], tmp_path / "x.tsv")
    (tmp_path / "h.tsv").write_text("id\tpath\n")
    with pytest.raises(ValueError, match="h.tsv.*header"):
        read_index(tmp_path / "h.tsv")
    (tmp_path / "r.tsv").write_text("id\tpath\tgt\theight\twidth\tshard\na\tp\t\tx\t3\ts0000\n")
    with pytest.raises(ValueError, match=r"r.tsv:2"):
        read_index(tmp_path / "r.tsv")
    with pytest.raises(FileNotFoundError, match="none.tsv"):
        read_index(tmp_path / "none.tsv")
