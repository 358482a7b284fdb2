"""``lcseg segment`` on files and folders (issue 27): output names that cannot collide,
every readable image segmented even when some inputs are bad, the skipped ones listed with
their reasons (stderr, ``<out>/skipped.tsv``, exit 1), and the batched forward passes
equal to one image at a time."""

import shutil

import cv2
import numpy as np
import pytest

from lcseg_steps.apply.model_zarr import load_model
from lcseg_steps.apply.segment_paths import plan
from lcseg_steps.cli import main as lcseg
from lcseg_steps.data.images import read_rgb
from lcseg_steps.data.palette import read_label_png


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_output_names_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rel in ("photos/a.jpg", "photos/a.png", "photos/2024/a.jpg", "x/a.jpg", "y/a.jpg"):
        _touch(tmp_path / rel)
    _touch(tmp_path / "photos" / "notes.txt")
    _touch(tmp_path / "photos" / ".DS_Store")
    items, left = plan(["photos", "x/a.jpg", "y/a.jpg", "photos/a.jpg", "missing.jpg"])
    assert [(i.path, i.name) for i in items] == [
        ("photos/2024/a.jpg", "2024/a.jpg"),
        ("photos/a.jpg", "a.jpg"),
        ("photos/a.png", "a.png"),
        ("x/a.jpg", "a.jpg~2"),
        ("y/a.jpg", "a.jpg~3"),
    ]  # photos/a.jpg given again as a file: segmented once
    assert len({i.name for i in items}) == len(items)
    reasons = dict(left)
    assert reasons["missing.jpg"] == "no such file or folder"
    assert reasons["photos/notes.txt"].startswith("not an image")
    assert reasons["photos/.DS_Store"].startswith("hidden file")


def test_an_empty_folder_is_listed(tmp_path):
    (tmp_path / "empty").mkdir()
    items, left = plan([str(tmp_path / "empty")])
    assert items == [] and left == [(str(tmp_path / "empty"), "folder holds no image file")]


@pytest.fixture(scope="module")
def fitted_model(tiny_run):
    return tiny_run / "results" / "tiny" / "seed0" / "model.zarr"


@pytest.mark.integration
def test_the_batched_features_are_those_of_one_image_at_a_time(tiny_run, fitted_model):
    folder = tiny_run / "results" / "tiny" / "demo" / "JPEGImages"
    images = [read_rgb(p) for p in sorted(folder.glob("*.jpg"))]
    # two of equal size, so that a batch of two really runs
    images.insert(1, images[0][::-1].copy())
    model = load_model(fitted_model)
    batched = model.features_batch(images, batch_size=4)
    for img, got in zip(images, batched, strict=True):
        one = model.features(img)
        assert got["grid"] == one["grid"]
        for key in ("X", "cls", "cls_attn"):
            a, b = got[key].astype(np.float32), one[key].astype(np.float32)
            np.testing.assert_allclose(a, b, atol=1e-2 * float(np.abs(b).max()))


@pytest.mark.integration
def test_a_folder_with_bad_files_is_segmented_all_the_same(
    tiny_run, fitted_model, tmp_path, capsys
):
    demo = tiny_run / "results" / "tiny" / "demo" / "JPEGImages"
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(demo / "demo_0001.jpg", photos / "a.jpg")
    cv2.imwrite(str(photos / "a.png"), cv2.imread(str(demo / "demo_0002.jpg")))
    shutil.copy(demo / "demo_0003.jpg", photos / "sub" / "b.jpg")
    _touch(photos / "fake.jpg", b"this is not a JPEG")
    cv2.imwrite(str(photos / "tiny.png"), np.zeros((6, 200, 3), np.uint8))  # under one patch
    _touch(photos / "notes.txt", b"shot list")
    single = tmp_path / "c.jpg"
    shutil.copy(demo / "demo_0004.jpg", single)
    out = tmp_path / "out"
    args = ["segment", "--model", str(fitted_model), str(photos), str(single)]
    code = lcseg([*args, str(tmp_path / "gone.jpg"), "-o", str(out), "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 1
    model = load_model(fitted_model)
    for src, name in (
        (photos / "a.jpg", "a.jpg"),
        (photos / "a.png", "a.png"),
        (photos / "sub" / "b.jpg", "sub/b.jpg"),
        (single, "c.jpg"),
    ):
        png = read_label_png(out / f"{name}.png")
        # the one-image path, with features computed alone, is the reference
        np.testing.assert_array_equal(png, model.segment(src).classes, err_msg=name)
    lines = (out / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "path\treason"
    skipped = dict(line.split("\t") for line in lines[1:])
    assert set(skipped) == {
        str(photos / "fake.jpg"),
        str(photos / "tiny.png"),
        str(photos / "notes.txt"),
        str(tmp_path / "gone.jpg"),
    }
    assert skipped[str(photos / "fake.jpg")].startswith("not a decodable image")
    assert "smaller than one 16px patch" in skipped[str(photos / "tiny.png")]
    assert skipped[str(tmp_path / "gone.jpg")] == "no such file or folder"
    for path in skipped:
        assert f"skipped {path}: " in err


@pytest.mark.integration
def test_all_good_exits_0_with_an_empty_skipped_list(tiny_run, fitted_model, tmp_path):
    demo = tiny_run / "results" / "tiny" / "demo" / "JPEGImages"
    out = tmp_path / "out"
    assert lcseg(["segment", "--model", str(fitted_model), str(demo), "-o", str(out)]) == 0
    assert (out / "skipped.tsv").read_text() == "path\treason\n"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{p.name}.png" for p in demo.glob("*.jpg")
    )


@pytest.mark.integration
def test_the_model_may_be_a_runs_folder_or_name(tiny_run, fitted_model, tmp_path, monkeypatch):
    demo = tiny_run / "results" / "tiny" / "demo" / "JPEGImages" / "demo_0001.jpg"
    monkeypatch.chdir(tiny_run)
    for model in ("results/tiny", "tiny", str(fitted_model)):
        out = tmp_path / model.replace("/", "_")
        assert lcseg(["segment", "--model", model, str(demo), "-o", str(out)]) == 0, model
        assert (out / "demo_0001.jpg.png").is_file()
    assert lcseg(["segment", "--model", "results", str(demo), "-o", str(tmp_path / "x")]) == 2


@pytest.mark.integration
def test_refining_in_worker_processes_gives_the_sequential_results(
    tiny_run, fitted_model, tmp_path
):
    """``--jobs 2`` (the CRF of a batch in worker processes while this process finishes the
    previous batch and runs the next forward passes) writes the PNGs of ``--jobs 1``
    byte for byte, and each equals ``model.segment`` of the image alone."""
    from lcseg_steps.apply.segment_paths import segment_all

    demo = tiny_run / "results" / "tiny" / "demo" / "JPEGImages"
    paths = sorted(demo.glob("*.jpg"))[:5]
    model = load_model(fitted_model)
    assert model.attrs["refine"]["crf"]
    items, _ = plan([str(p) for p in paths])
    got = {}
    skipped = segment_all(
        model, items, lambda it, seg: got.setdefault(it.path, seg), batch_size=2, jobs=2
    )
    assert skipped == [] and list(got) == [str(p) for p in paths]  # in order
    for p in paths:
        ref = model.segment(p)
        np.testing.assert_array_equal(got[str(p)].foreground, ref.foreground)
        np.testing.assert_array_equal(got[str(p)].classes, ref.classes)
    outs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        args = ["segment", "--model", str(fitted_model), *map(str, paths), "-o", str(out)]
        assert lcseg([*args, "--batch-size", "2", "--jobs", jobs]) == 0
        outs[jobs] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    assert len(outs["1"]) == len(paths) and outs["1"] == outs["2"]
