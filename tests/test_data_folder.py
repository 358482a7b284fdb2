"""dataset: folder — the user's own images, listed recursively, with optional masks."""

import os
import re

import cv2
import numpy as np
import pytest

from lcseg_steps.data.folder import folder_class_names, folder_inputs, image_ids
from lcseg_steps.data.image_table import build_index, class_names, list_images, load_ground_truth
from lcseg_steps.data.palette import write_label_png
from lcseg_steps.data.registry import get_dataset


def _img(path, h=20, w=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(len(str(path))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_WEBP_QUALITY, 100] if ext == ".webp" else []
    ok, buf = cv2.imencode(".jpg" if ext == ".jpeg" else ext, arr, params)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _cfg(root, **kw):
    return {"name": "folder", "root": str(root), "on_bad_image": None, "masks": None, **kw}


def test_every_format_any_case_recursive_sorted_hidden_left_out(tmp_path):
    root = tmp_path / "photos"
    names = ["a.jpg", "B.JPEG", "sub/c.PNG", "sub/deep/d.bmp", "e.WebP", "f.TIF", "g.tiff"]
    for n in names:
        _img(root / n)
    (root / "notes.txt").write_text("not an image")
    _img(root / "._a.jpg")  # macOS resource fork
    _img(root / ".hidden" / "x.jpg")
    recs = list_images(_cfg(root))
    rel = sorted(names)
    assert [r.path for r in recs] == [os.path.join(str(root), p) for p in rel]
    assert [r.image_id for r in recs] == [
        "B",
        "a",
        "e",
        "f",
        "g",
        "sub__c",
        "sub__deep__d",
    ]
    assert all(r.gt == "" for r in recs)
    # every format decodes; ids survive the index
    out = build_index(_cfg(root), shard_size=4, log=lambda s: None)
    assert [(r.height, r.width) for r in out] == [(20, 30)] * 7
    assert [r.shard for r in out] == ["s0000"] * 4 + ["s0001"] * 3
    assert get_dataset("folder").on_bad_image == "skip"


def test_ids_are_unique_when_stems_collide():
    rel = ["a/b.jpg", "a/b.png", "a__b.jpg", "c.jpg", "x.jpg", "x.jpg.bmp", "x.png"]
    ids = image_ids(rel)
    assert ids == ["a__b.jpg", "a__b.png", "a__b.jpg~2", "c", "x.jpg", "x.jpg~2", "x.png"]
    assert len(set(ids)) == len(ids) and all("/" not in i for i in ids)


def test_masks_by_relative_path_unlabelled_images_and_class_names(tmp_path):
    root, masks = tmp_path / "img", tmp_path / "img" / "gt"  # masks inside root: not images
    _img(root / "one.jpg")
    _img(root / "sub" / "two.PNG")
    _img(root / "three.bmp")
    write_label_png(masks / "one.png", np.ones((20, 30), np.uint8))
    lab = np.full((20, 30), 2, np.uint8)
    lab[0] = 255
    write_label_png(masks / "sub" / "two.png", lab)
    cfg = _cfg(root, masks=str(masks), n_classes=2)
    with pytest.warns(UserWarning, match="1 of 3 images have no mask"):
        recs = list_images(cfg)
    assert [r.image_id for r in recs] == ["one", "sub__two", "three"]
    assert recs[0].gt == os.path.join(str(masks), "one.png") and recs[2].gt == ""
    assert load_ground_truth(recs[1]).max() == 255
    assert class_names(cfg) == ["background", "class_1", "class_2"]
    assert folder_class_names({**cfg, "class_names": ["cat", "dog"]})[1:] == ["cat", "dog"]
    assert folder_class_names({**cfg, "class_names": ["bg", "cat", "dog"]})[0] == "bg"
    with pytest.raises(ValueError, match="class_names lists 1"):
        folder_class_names({**cfg, "class_names": ["cat"]})
    with pytest.warns(UserWarning):
        assert sorted(folder_inputs(cfg)) == sorted(
            [r.path for r in recs] + [r.gt for r in recs if r.gt]
        )


def test_folder_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*dataset\.root"):
        list_images(_cfg(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no image files"):
        list_images(_cfg(tmp_path / "empty"))
    _img(tmp_path / "r" / "a.jpg")
    with pytest.raises(FileNotFoundError, match=r"nomasks.*dataset\.masks"):
        list_images(_cfg(tmp_path / "r", masks=str(tmp_path / "nomasks"), n_classes=1))
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match=r"dataset\.n_classes"):
        list_images(_cfg(tmp_path / "r", masks=str(tmp_path / "m")))
    with pytest.raises(ValueError, match=re.escape("no mask matches")):
        list_images(_cfg(tmp_path / "r", masks=str(tmp_path / "m"), n_classes=1))


def _animation(path, frames, fmt):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pics = [Image.new("RGB", (24, 20), (40 * i, 200 - 40 * i, 90)) for i in range(frames)]
    pics[0].save(path, format=fmt, save_all=True, append_images=pics[1:], duration=100)
    return path


def test_every_file_not_used_is_listed_with_its_reason(tmp_path):
    """Nothing under the folder is left out silently: the index's skipped.tsv lists every
    file that is not an image, hidden, a GIF, or an animation, each with its reason, and
    the still images (a one-frame WebP among them) are used."""
    from lcseg_steps.data.folder import scan_folder
    from lcseg_steps.data.image_table import index_dataset

    root = tmp_path / "photos"
    _img(root / "a.jpg")
    _img(root / "sub" / "b.png")
    (root / "notes.txt").write_text("not an image")
    (root / "README").write_text("no extension")
    _animation(root / "sub" / "clip.gif", 3, "GIF")
    _animation(root / "moving.webp", 3, "WEBP")
    _animation(root / "moving.png", 2, "PNG")  # APNG
    _animation(root / "still.webp", 1, "WEBP")
    _img(root / "._a.jpg")
    _img(root / ".cache" / "x.jpg")
    scan = scan_folder(root)
    # an independent listing: every file os.walk sees, hidden folders counted once
    every = sorted(
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, files in os.walk(root)
        for f in files
        if ".cache" not in d
    )
    assert sorted(scan.images + [p for p, _ in scan.left_out if p != ".cache/"]) == every
    reasons = dict(scan.left_out)
    assert reasons[".cache/"] == "hidden folder (not searched)"
    assert reasons["._a.jpg"].startswith("hidden file")
    assert reasons["notes.txt"].startswith("not an image (extension '.txt'")
    assert reasons["README"].startswith("not an image (no extension")
    assert reasons["sub/clip.gif"].startswith("GIF is not read")

    recs, skipped = index_dataset(_cfg(root), shard_size=8, log=lambda s: None)
    assert [r.image_id for r in recs] == ["a", "still", "sub__b"]
    by_path = {os.path.relpath(s.path, root): s for s in skipped}
    assert by_path["moving.webp"].image_id == "moving.webp"  # its stem is shared
    assert by_path["moving.webp"].reason.startswith("an animation of 3 frames")
    assert by_path["moving.png"].reason.startswith("an animation of 2 frames")
    for rel in ("notes.txt", "README", "sub/clip.gif", "._a.jpg"):
        assert by_path[rel].image_id == "" and by_path[rel].reason == reasons[rel]
    assert len(skipped) == 2 + len(scan.left_out)


def test_a_masks_folder_inside_the_root_is_not_listed_as_left_out(tmp_path):
    from lcseg_steps.data.folder import folder_left_out

    root = tmp_path / "photos"
    _img(root / "a.jpg")
    write_label_png(root / "masks" / "a.png", np.zeros((20, 30), np.uint8))
    cfg = _cfg(root, masks=str(root / "masks"), n_classes=1)
    assert folder_left_out(cfg) == []
    (root / "x.txt").write_text("")
    assert folder_left_out(cfg) == [(os.path.join(str(root), "x.txt"), folder_left_out(cfg)[0][1])]


def test_exif_orientation_is_indexed_and_turns_masks(tmp_path):
    """A portrait phone shot (EXIF orientation 6) is indexed as viewers show it: its
    turned size and the tag in images.tsv; its mask is in that convention, and a mask of
    the stored pixels' size (the only other size that fits) is turned by the tag."""
    from lcseg_steps.data.image_table import read_index, write_index
    from lcseg_steps.data.images import read_record, read_rgb
    from tests.fixtures_data import asymmetric_rgb, write_exif_jpeg

    root, masks = tmp_path / "photos", tmp_path / "masks"
    raw = asymmetric_rgb(24, 40)  # stored landscape, shown portrait
    for name in ("raw_mask", "shown_mask", "bad_mask", "plain"):
        write_exif_jpeg(root / f"{name}.jpg", raw, 6 if name != "plain" else None)
    raw_labels = np.zeros((24, 40), np.uint8)
    raw_labels[:6, :10] = 1  # the stored top-left corner ...
    shown_labels = np.rot90(raw_labels, -1)  # ... is the top-right corner as shown
    masks.mkdir()
    write_label_png(masks / "raw_mask.png", raw_labels)
    write_label_png(masks / "shown_mask.png", np.ascontiguousarray(shown_labels))
    write_label_png(masks / "bad_mask.png", np.zeros((24, 24), np.uint8))
    write_label_png(masks / "plain.png", raw_labels)
    cfg = _cfg(root, masks=str(masks), n_classes=1)
    recs = {r.image_id: r for r in build_index(cfg, shard_size=4, log=lambda s: None)}
    write_index(recs.values(), tmp_path / "images.tsv")
    recs = {r.image_id: r for r in read_index(tmp_path / "images.tsv")}
    for name in ("raw_mask", "shown_mask", "bad_mask"):
        r = recs[name]
        assert (r.orientation, r.height, r.width) == (6, 40, 24)
        np.testing.assert_array_equal(read_record(r), np.rot90(read_rgb(r.path), -1))
    assert (recs["plain"].orientation, recs["plain"].height, recs["plain"].width) == (1, 24, 40)
    np.testing.assert_array_equal(load_ground_truth(recs["shown_mask"]), shown_labels)
    np.testing.assert_array_equal(load_ground_truth(recs["raw_mask"]), shown_labels)
    np.testing.assert_array_equal(load_ground_truth(recs["plain"]), raw_labels)
    with pytest.raises(ValueError, match=r"bad_mask.png.*24x24 but the image is 40x24"):
        load_ground_truth(recs["bad_mask"])
