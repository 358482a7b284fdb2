"""End to end through Snakemake with the tiny random ViT of test_workflow: a folder of the
user's own images (mixed formats and letter cases, nested folders) with and without
masks, and a VOC-layout set holding odd images under dataset.on_bad_image."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lcseg_steps.data.demo import generate_demo
from lcseg_steps.data.image_table import read_index, read_skipped
from lcseg_steps.data.palette import read_label_png
from tests.helpers import TINY, reference_hungarian, scheduled, snakemake

pytestmark = pytest.mark.integration

# demo image i -> where it goes in the folder (relative path, its format by extension)
LAYOUT = ["a.jpg", "B.PNG", "sub/c.bmp", "sub/deep/D.WEBP", "e.TIF", "sub/f.tiff"]
IDS = ["B", "a", "e", "sub__c", "sub__deep__D", "sub__f"]  # sorted relative paths, "/" -> "__"


def _demo(root: Path, n: int = 6) -> Path:
    generate_demo(root, n_images=n, seed=1, min_size=64, max_size=100, log=lambda s: None)
    return root


@pytest.fixture(scope="module")
def own_images(tmp_path_factory):
    """A folder of the demo images in mixed formats, an empty 'broken.JPG' among them, and
    a masks folder with the demo ground truth at the same relative names."""
    base = tmp_path_factory.mktemp("own")
    demo = _demo(base / "demo")
    photos, masks = base / "photos", base / "masks"
    for i, rel in enumerate(LAYOUT):
        bgr = cv2.imread(str(demo / "JPEGImages" / f"demo_{i:04d}.jpg"))
        dst = photos / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        ext = dst.suffix.lower()
        ok, buf = cv2.imencode(ext, bgr, [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])
        assert ok
        dst.write_bytes(buf.tobytes())
        gt = masks / Path(rel).with_suffix(".png")
        gt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo / "SegmentationClass" / f"demo_{i:04d}.png", gt)
    (photos / "sub" / "broken.JPG").write_bytes(b"")
    (photos / "notes.txt").write_text("shot list")
    frames = [Image.new("RGB", (40, 30), (60 * i, 90, 200 - 60 * i)) for i in range(3)]
    frames[0].save(photos / "clip.gif", save_all=True, append_images=frames[1:])
    return base


def _folder_cfg(base, run, **dataset):
    return {
        **TINY,
        "run": run,
        "dataset": {"name": "folder", "root": str(base / "photos"), **dataset},
    }


def test_folder_without_masks_ends_with_predictions_and_report(own_images):
    r = snakemake(own_images, _folder_cfg(own_images, "own"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = own_images / "results" / "own"
    recs = read_index(res / "images.tsv")
    assert sorted(r.image_id for r in recs) == IDS
    assert [r.shard for r in recs] == ["s0000"] * 4 + ["s0001"] * 2
    # the empty file: skipped (folder's default), not an error; the text file and the
    # GIF: listed as left out (no id), not silently ignored
    skip, *others = read_skipped(res / "skipped.tsv")
    assert skip.image_id == "sub__broken" and skip.reason == "image file is empty"
    assert {(Path(o.path).name, o.image_id, o.reason.split(" ")[0]) for o in others} == {
        ("clip.gif", "", "GIF"),
        ("notes.txt", "", "not"),
    }
    for rec in recs:
        pred = cv2.imread(str(res / "seed0" / "pred" / rec.shard / f"{rec.image_id}.png"), -1)
        assert pred.shape[:2] == (rec.height, rec.width)
    assert not list(res.rglob("metrics*.json"))
    page = (res / "report.html").read_text()
    assert "No ground truth" in page and "mIoU" not in page and "sub__broken" in page
    assert "left out" in page and "notes.txt" in page
    assert page.count("<img") >= 3
    assert scheduled(snakemake(own_images, _folder_cfg(own_images, "own"), "-n")) == {}


def test_folder_with_masks_is_scored(own_images):
    cfg = _folder_cfg(own_images, "own_gt", masks=str(own_images / "masks"), n_classes=4)
    r = snakemake(own_images, cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = own_images / "results" / "own_gt"
    metrics = json.loads((res / "seed0" / "metrics.json").read_text())
    assert metrics["n_images_scored"] == 6 and metrics["n_images_skipped"] == 1
    assert metrics["dataset"] == "folder"
    assert set(metrics["per_class_iou"]) == {
        "background",
        "class_1",
        "class_2",
        "class_3",
        "class_4",
    }
    # the scores, recomputed from the written PNGs and the masks
    pairs = [
        (
            read_label_png(own_images / rec.gt),
            read_label_png(res / "seed0" / "pred" / rec.shard / f"{rec.image_id}.png"),
        )
        for rec in read_index(res / "images.tsv")
    ]
    miou, accuracy = reference_hungarian(pairs, 5, metrics["n_classes"] + 1)
    assert metrics["miou"] == pytest.approx(miou, abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert (res / "metrics_summary.json").is_file()
    assert "sub__broken" in (res / "report.html").read_text()


# the odd images of the issue, with the tiny run's long_side of 64 px
ODD = {
    "odd_empty": "image file is empty",
    "odd_truncated": "not a decodable image (corrupt, truncated or unsupported format)",
    "odd_thin": "image of 8x500 px resized to 64 on the long side is smaller than one 16px patch",
}


@pytest.fixture(scope="module")
def odd_voc(tmp_path_factory):
    """The demo set in VOC layout with an empty .jpg, a truncated JPEG and an 8x500 image
    listed among its val ids."""
    base = tmp_path_factory.mktemp("odd")
    root = _demo(base / "voc")
    rng = np.random.default_rng(0)
    jpgs = root / "JPEGImages"
    assert cv2.imwrite(str(jpgs / "odd_thin.jpg"), rng.integers(0, 256, (8, 500, 3), np.uint8))
    (jpgs / "odd_empty.jpg").write_bytes(b"")
    data = (jpgs / "demo_0000.jpg").read_bytes()
    (jpgs / "odd_truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    for image_id in ODD:
        shutil.copy(
            root / "SegmentationClass" / "demo_0000.png",
            root / "SegmentationClass" / f"{image_id}.png",
        )
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    ids = split.read_text().split()
    split.write_text("\n".join([*ids[:2], *ODD, *ids[2:]]) + "\n")
    return base


def _voc_cfg(base, run, policy):
    return {
        **TINY,
        "run": run,
        "dataset": {"name": "voc12", "root": str(base / "voc"), "on_bad_image": policy},
    }


def test_voc_odd_images_all_named_by_one_index_run(odd_voc):
    r = snakemake(odd_voc, _voc_cfg(odd_voc, "odd_error", None))  # voc12's default: error
    assert r.returncode != 0
    log = (odd_voc / "results" / "odd_error" / "logs" / "index.log").read_text()
    assert "3 of 9 images cannot be used" in log
    for image_id, reason in ODD.items():
        assert f"{odd_voc / 'voc' / 'JPEGImages' / image_id}.jpg: {reason}" in log, log
    # nothing ran after the index: no forward pass
    assert not (odd_voc / "results" / "odd_error" / "features").exists()


def test_voc_odd_images_skipped_end_to_end(odd_voc):
    r = snakemake(odd_voc, _voc_cfg(odd_voc, "odd_skip", "skip"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = odd_voc / "results" / "odd_skip"
    skipped = read_skipped(res / "skipped.tsv")
    assert {s.image_id: s.reason for s in skipped} == ODD
    assert all(s.path.endswith(f"{s.image_id}.jpg") for s in skipped)
    recs = read_index(res / "images.tsv")
    assert [r.image_id for r in recs] == [f"demo_{i:04d}" for i in range(6)]
    # 9 listed ids gave 3 shards of 4; the 6 kept images fill all three
    assert [r.shard for r in recs] == ["s0000"] * 2 + ["s0001"] * 2 + ["s0002"] * 2
    metrics = json.loads((res / "seed0" / "metrics.json").read_text())
    assert metrics["n_images_skipped"] == 3 and metrics["n_images_scored"] == 6
    page = (res / "report.html").read_text()
    assert all(image_id in page for image_id in ODD)
