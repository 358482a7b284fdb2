"""dataset.image_list: the listing of every dataset restricted to the images a file names."""

from __future__ import annotations

import json
import re

import pytest

from lcseg_steps.data.image_list import filter_by_image_list, read_image_list
from lcseg_steps.data.image_table import build_index, list_images
from tests.fixtures_data import VOC_EXTRA, VOC_VAL, make_voc


def _demo_cfg(root, image_list=None, n=6):
    return {
        "name": "demo",
        "root": str(root),
        "split": "val",
        "extra_lists": [],
        "image_list": image_list,
        "demo": {"n_images": n, "seed": 0, "min_size": 40, "max_size": 70},
    }


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_demo_listing_restricted_in_listing_order(tmp_path):
    whole = list_images(_demo_cfg(tmp_path / "demo"))
    # out of order, a repeat, a comment, blank lines and surrounding blanks
    lst = _write(tmp_path / "l.txt", "demo_0004\n# a comment\n\n  demo_0001 \ndemo_0004\n")
    got = list_images(_demo_cfg(tmp_path / "demo", lst))
    assert [r.image_id for r in got] == ["demo_0001", "demo_0004"]
    assert got == [r for r in whole if r.image_id in {"demo_0001", "demo_0004"}]
    assert list_images(_demo_cfg(tmp_path / "demo", None)) == whole
    assert read_image_list(lst) == ["demo_0004", "demo_0001"]


def test_voc_listing_restricted_including_extra_lists(tmp_path):
    root = make_voc(tmp_path / "voc")
    cfg = {"name": "voc12", "root": str(root), "split": "val", "extra_lists": ["extra.txt"]}
    # a file name, a stem, an id of the extra list
    cfg["image_list"] = _write(
        tmp_path / "l.txt", f"{VOC_VAL[1]}.jpg\n{VOC_VAL[0]}\n{VOC_EXTRA[0]}\n"
    )
    got = list_images(cfg)
    assert [r.image_id for r in got] == [VOC_VAL[0], VOC_VAL[1], VOC_EXTRA[0]]
    assert got[2].gt == ""  # the extra image stays unlabelled
    records = build_index(cfg, shard_size=2, log=lambda _: None)
    assert [r.image_id for r in records] == [r.image_id for r in got]
    assert [r.shard for r in records] == ["s0000", "s0000", "s0001"]


def test_coco_listing_by_stem_or_file_name(tmp_path):
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    ids = [397133, 139, 785]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 10, "width": 12} for i in ids]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": []})
    )
    cfg = {"name": "coco", "root": str(root), "split": "val2017", "extra_lists": []}
    cfg["image_list"] = _write(tmp_path / "l.txt", "000000397133.jpg\n000000000139\n")
    got = list_images(cfg)
    assert [r.image_id for r in got] == ["000000000139", "000000397133"]  # COCO id order
    assert got[0].gt.endswith("#139")


def test_names_not_found_are_an_error_naming_file_and_ids(tmp_path):
    names = ["demo_0002", "demo_0100", "nope.jpg", "x1", "x2", "x3", "x4"]
    lst = _write(tmp_path / "subset.txt", "\n".join(names) + "\n")
    with pytest.raises(ValueError) as err:
        list_images(_demo_cfg(tmp_path / "demo", lst))
    msg = str(err.value)
    assert lst in msg and "6 of 7" in msg and "dataset.image_list" in msg
    # the first five missing names, in list order
    assert re.search(r"first not found: demo_0100, nope.jpg, x1, x2, x3$", msg)


def test_missing_or_empty_list_file(tmp_path):
    cfg = _demo_cfg(tmp_path / "demo", str(tmp_path / "absent.txt"))
    with pytest.raises(FileNotFoundError, match=r"absent\.txt.*dataset\.image_list"):
        list_images(cfg)
    empty = _write(tmp_path / "empty.txt", "# only a comment\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt: image list names no image"):
        list_images(_demo_cfg(tmp_path / "demo", empty))


def test_filter_is_generic_over_records(tmp_path):
    from lcseg_steps.data.records import ImageRecord

    recs = [ImageRecord("a", "/x/a.png", ""), ImageRecord("b", "C:\\d\\b.tif", "")]
    lst = _write(tmp_path / "l.txt", "b.tif\n")
    assert filter_by_image_list(recs, lst) == recs[1:]
    assert filter_by_image_list(recs, "") == recs


@pytest.mark.integration
def test_index_rule_depends_on_the_list_and_shards_follow_it(tmp_path):
    from tests.helpers import TINY, scheduled, snakemake

    (tmp_path / "subset.txt").write_text("demo_0001\ndemo_0004\ndemo_0005\n")
    cfg = {**TINY, "dataset": {**TINY["dataset"], "image_list": "subset.txt"}}
    r = snakemake(tmp_path, cfg, "-n")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    index_job = out[out.index("rule index:") :].split("\n\n")[0]
    assert "subset.txt" in index_job.split("output:")[0]
    assert scheduled(r)["extract"] == 1  # 3 images, shard_size 4: one shard, not two

    (tmp_path / "subset.txt").write_text("demo_0001\ndemo_0042\n")
    r = snakemake(tmp_path, cfg, "-n")
    assert r.returncode != 0
    assert "subset.txt: 1 of 2 listed images" in r.stdout + r.stderr
    assert "first not found: demo_0042" in r.stdout + r.stderr
