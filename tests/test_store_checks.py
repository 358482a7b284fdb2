"""Stores that check themselves (issue 27, item 5): a CRC32C per chunk, every chunk on
disk, and one clear error (store, array, chunk, the stage to rerun) for a changed byte, a
chunk cut short or a missing chunk; ``lcseg verify`` over a run; old stores still read."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from lcseg_steps.cli import main
from lcseg_steps.pipeline import STAGES
from lcseg_steps.stores.checks import STAGE_OF_STORE, is_checksummed, stage_of, verify
from lcseg_steps.stores.layout import (
    StoreDamagedError,
    StoreWriter,
    image_rows,
    iter_row_blocks,
    offsets_from_sizes,
    open_store,
)

ROWS, DIM = 100, 8


def _features(path: Path, attrs=None) -> Path:
    """A small features-like store: raw float16 ``k`` in 4 chunks of 25 rows, a
    compressed all-zero ``zeros``, ``offsets``/``grid`` of 4 images of 5x5 patches."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, attrs) as w:
        w.write("k", rng.standard_normal((ROWS, DIM)).astype(np.float16), chunk_rows=25, raw=True)
        w.write("zeros", np.zeros((ROWS, 3), np.int32), chunk_rows=25)
        w.write("offsets", offsets_from_sizes([25] * 4))
        w.write("grid", np.full((4, 2), 5, np.int32))
        w.write("image_ids", np.array(["a", "b", "c", "d"]))
    return path


def _chunk(store: Path, array: str, key: str) -> Path:
    return store / array / key


def _expect(exc: StoreDamagedError, store: Path, array: str, chunk: str, stage: str) -> None:
    msg = str(exc)
    assert str(store) in msg and repr(array) in msg and chunk in msg, msg
    assert f"snakemake --forcerun {stage}" in msg, msg
    assert (exc.store, exc.array, exc.chunk, exc.stage) == (store, array, chunk, stage)


@pytest.fixture
def store(tmp_path) -> Path:
    return _features(tmp_path / "results" / "features" / "shard000.zarr")


def test_every_array_has_a_checksum_and_every_chunk(store):
    g = open_store(store)
    for name, array in g.arrays():
        assert is_checksummed(array), name
    # the all-zero array has all 4 chunk files although each equals the fill value
    assert sorted(p.parent.name for p in (store / "zeros" / "c").glob("*/0")) == list("0123")
    np.testing.assert_array_equal(g["zeros"][:], 0)


def test_growing_and_preallocated_arrays_get_every_chunk(tmp_path):
    with StoreWriter(tmp_path / "s.zarr") as w:
        w.create_growing("g", (2,), np.int64, chunk_rows=4)
        w.append("g", np.zeros((9, 2)))  # zeros: Zarr alone would write no chunk
        a = w.create("pre", (40, 2), np.float32, chunk_rows=10)
        a[:10] = 1  # chunks 1..3 never written
    assert verify(tmp_path / "s.zarr")[0].status == "ok"
    assert len(list((tmp_path / "s.zarr" / "pre" / "c").glob("*/0"))) == 4
    assert len(list((tmp_path / "s.zarr" / "g" / "c").glob("*/0"))) == 3


def test_a_flipped_byte_is_caught(store):
    f = _chunk(store, "k", "c/1/0")
    data = bytearray(f.read_bytes())
    data[100] ^= 0x01
    f.write_bytes(bytes(data))
    g = open_store(store)
    np.asarray(g["k"][:25])  # the other chunks still read
    with pytest.raises(StoreDamagedError, match="checksum mismatch") as e:
        g["k"][:]
    _expect(e.value, store, "k", "c/1/0", "extract")


def test_the_error_survives_a_worker_process(store):
    _chunk(store, "k", "c/0/0").unlink()
    with pytest.raises(StoreDamagedError) as e:
        open_store(store)["k"]
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value) and again.chunk == "c/0/0"


def test_a_chunk_cut_short_is_caught(store):
    f = _chunk(store, "k", "c/2/0")
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(StoreDamagedError, match=r"cut short \(304 of 404 bytes\)") as e:
        np.asarray(open_store(store)["k"])
    _expect(e.value, store, "k", "c/2/0", "extract")


def test_a_compressed_chunk_cut_short_is_caught(store):
    f = _chunk(store, "zeros", "c/0/0")
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(StoreDamagedError, match="checksum mismatch") as e:
        open_store(store)["zeros"][:10]
    _expect(e.value, store, "zeros", "c/0/0", "extract")


@pytest.mark.parametrize("array", ["k", "zeros"])
def test_a_missing_chunk_is_caught(store, array):
    _chunk(store, array, "c/3/0").unlink()
    with pytest.raises(StoreDamagedError, match="missing") as e:
        open_store(store)[array]
    _expect(e.value, store, array, "c/3/0", "extract")


def test_a_stage_reading_a_damaged_store_names_it_not_a_reshape(store):
    f = _chunk(store, "k", "c/0/0")
    f.write_bytes(f.read_bytes()[:300])
    g = open_store(store)
    with pytest.raises(StoreDamagedError, match="c/0/0") as e:
        image_rows(g, "k", 0)
    assert "reshape" not in str(e.value)
    blocks = list(iter_row_blocks(g["k"], lazy=True))
    np.asarray(blocks[1])
    with pytest.raises(StoreDamagedError, match="forcerun extract"):
        np.asarray(blocks[0])


def test_the_image_level_stage_fails_with_the_store_and_chunk(tmp_path):
    from lcseg_steps.stages.image_level import run_image_level

    path = _features(tmp_path / "features" / "shard000.zarr")
    f = _chunk(path, "k", "c/1/0")
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(StoreDamagedError, match=re.escape(f"{path}: array 'k', chunk c/1/0")):
        run_image_level(
            path,
            tmp_path / "out.zarr",
            feature="k",
            image_clusterer="kmeans",
            k_image=2,
            fg_rule="attention",
            max_iter=10,
            tol=1e-4,
            seed=0,
            device="cpu",
            attrs={},
            log=lambda _: None,
        )


def test_the_rule_in_the_attrs_is_the_one_to_rerun(tmp_path):
    path = _features(tmp_path / "x" / "shard.zarr", attrs={"rule": "analysis_extract"})
    _chunk(path, "k", "c/0/0").unlink()
    with pytest.raises(StoreDamagedError, match="snakemake --forcerun analysis_extract"):
        open_store(path)["k"]


def test_the_stage_of_a_store_follows_from_its_path():
    assert stage_of("results/demo/features/shard000.zarr", {}) == "extract"
    assert stage_of("results/demo/seed0/patch_masks/shard000.zarr", None) == "merge"
    assert stage_of("results/demo/seed0/dataset_level.zarr", {}) == "fit_dataset"
    assert stage_of("results/demo/analysis/dataset_level/k2/seed0.zarr", {}) == "fit_dataset"
    assert stage_of("results/demo/seed0/model.zarr", {}) == "model"
    assert stage_of("elsewhere/thing.zarr", {}) is None


def test_the_stage_table_matches_the_pipeline():
    """Every store a stage writes is in the table, under that stage."""
    declared = {}
    for stage in STAGES:
        for template in stage.outputs.values():
            t = template.rstrip("/")
            if t.endswith(".zarr") and not stage.stands_for:
                head = t.split("/", 1)[0] if "/" in t else t.removesuffix(".zarr")
                declared[head] = stage.name
    assert declared == STAGE_OF_STORE


def _old_store(path: Path) -> Path:
    """A store as lcseg wrote it before checksums: Zarr's defaults, no crc32c."""
    g = zarr.open_group(str(path), mode="w")
    g.attrs["lcseg_version"] = "0.old"
    a = g.create_array("k", shape=(10, 2), chunks=(4, 2), dtype="float16", compressors=None)
    a[:] = np.arange(20, dtype=np.float16).reshape(10, 2)
    g.create_array("zeros", shape=(8,), chunks=(4,), dtype="int32")  # no chunk on disk
    return path


def test_an_old_store_still_reads_and_verify_says_it_has_no_checksum(tmp_path):
    path = _old_store(tmp_path / "features" / "old.zarr")
    g = open_store(path)
    np.testing.assert_array_equal(g["k"][:], np.arange(20).reshape(10, 2))
    np.testing.assert_array_equal(g["zeros"][:], 0)
    (finding,) = verify(path)
    assert finding.status == "no checksum" and "written before checksums" in finding.detail


def test_verify_lists_the_damaged_store_and_exits_1(tmp_path, capsys):
    run = tmp_path / "results" / "demo"
    good = _features(run / "features" / "shard000.zarr")
    bad = _features(run / "features" / "shard001.zarr")
    _features(run / "seed0" / "patch_masks" / "shard000.zarr")
    f = _chunk(bad, "k", "c/2/0")
    data = bytearray(f.read_bytes())
    data[7] ^= 0x80
    f.write_bytes(bytes(data))
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4, out  # three stores and a summary
    (damaged,) = [line for line in out if line.startswith("damaged")]
    assert str(bad) in damaged and "'k', chunk c/2/0" in damaged
    assert "snakemake --forcerun extract" in damaged
    assert any(line.startswith("ok") and str(good) in line for line in out)


def test_verify_of_good_stores_exits_0_and_of_nothing_2(tmp_path, capsys):
    run = tmp_path / "run"
    _features(run / "features" / "shard000.zarr")
    _old_store(run / "features" / "old.zarr")
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no checksum" in out and "ok " in out
    assert main(["verify", str(run / "features" / "shard000.zarr")]) == 0
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: a reference
    independent of the library Zarr uses."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_the_checksum_is_crc32c_of_the_payload_little_endian(store):
    assert _crc32c(b"123456789") == 0xE3069283  # the standard check value
    data = _chunk(store, "k", "c/1/0").read_bytes()
    rows = np.asarray(open_store(store)["k"][25:50])
    assert data[:-4] == rows.astype("<f2").tobytes()  # raw: the payload is the rows
    assert int.from_bytes(data[-4:], "little") == _crc32c(data[:-4])


def test_the_checksum_benchmark_runs_and_reads_the_same(tmp_path):
    from benchmarks.bench_extract import run_checksums
    from benchmarks.harness import Context

    results = run_checksums(Context("tiny", tmp_path, repeats=1, log=lambda _m: None))
    assert [r.name for r in results] == ["extract_checksums_write", "extract_checksums_read"]
    assert verify(tmp_path / "checksummed.zarr")[0].status == "ok"
    assert verify(tmp_path / "plain.zarr")[0].status == "no checksum"
