import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lcseg_steps.stores.layout import (
    StoreWriter,
    balanced_chunk_rows,
    image_grid_array,
    image_index,
    image_rows,
    iter_row_blocks,
    offsets_from_sizes,
    open_store,
    pixel_layout,
    pixel_map,
    write_store,
)


def _ragged(tmp_path):
    sizes = [6, 4, 9]
    grids = np.array([[2, 3], [2, 2], [3, 3]], dtype=np.int32)
    x = np.arange(19 * 3, dtype=np.float32).reshape(19, 3).astype(np.float16)
    path = tmp_path / "s.zarr"
    write_store(
        path,
        {
            "x": x,
            "offsets": offsets_from_sizes(sizes),
            "grid": grids,
            "image_ids": np.array(["a", "bb", "ccc"]),
        },
        {"backbone": "tiny", "n": np.int64(3)},
        chunk_rows=4,
    )
    return path, x


def test_offsets_from_sizes():
    np.testing.assert_array_equal(offsets_from_sizes([3, 0, 2]), [0, 3, 3, 5])
    assert offsets_from_sizes([]).tolist() == [0]


def test_round_trip_ragged(tmp_path):
    path, x = _ragged(tmp_path)
    s = open_store(path)
    assert s.attrs["backbone"] == "tiny" and s.attrs["n"] == 3
    assert "lcseg_version" in s.attrs
    assert s["x"].chunks == (4, 3)
    np.testing.assert_array_equal(image_rows(s, "x", 1), x[6:10])
    np.testing.assert_array_equal(image_grid_array(s, "x", 2), x[10:19].reshape(3, 3, 3))
    assert image_index(s, "bb") == 1
    with pytest.raises(KeyError, match="zz"):
        image_index(s, "zz")
    blocks = list(iter_row_blocks(s["x"]))
    assert [b.shape[0] for b in blocks] == [4, 4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(blocks), x)


def test_failed_write_leaves_previous_store(tmp_path):
    path, x = _ragged(tmp_path)
    with pytest.raises(RuntimeError):
        with StoreWriter(path) as w:
            w.write("x", np.zeros((2, 3)))
            raise RuntimeError("killed")
    np.testing.assert_array_equal(open_store(path)["x"][:], x)
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_a_new_writer_removes_what_killed_writers_left(tmp_path):
    """Leftovers of dead writers on this host go; a live writer's, another host's and
    another output's stay (a pid from another host means nothing here)."""
    path, x = _ragged(tmp_path)
    host = socket.gethostname()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(gone.stdout)
    leftovers = {
        f"s.zarr.tmp-{host}-{dead}": False,  # its process has exited
        f"s.zarr.tmp-{host}-{os.getppid()}": True,  # alive
        f"s.zarr.tmp-elsewhere-{dead}": True,
        f"s.zarr2.tmp-{host}-{dead}": True,  # another output
    }
    for name in leftovers:
        (tmp_path / name / "x" / "c").mkdir(parents=True)
        (tmp_path / name / "x" / "c" / "0").write_bytes(b"half")
    write_store(path, {"x": x[::-1]})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["s.zarr", *(n for n, keep in leftovers.items() if keep)])
    np.testing.assert_array_equal(open_store(path)["x"][:], x[::-1])


def test_balanced_chunks_are_as_few_and_waste_less_than_one_row_each():
    for n in [0, 1, 7, 255, 256, 257, 1000, 230400, 230401, 16384 * 14 + 1]:
        for c in [1, 16, 256, 16384]:
            r = balanced_chunk_rows(n, c)
            chunks = -(-n // r)
            assert 1 <= r <= max(c, 1)
            assert chunks == -(-n // c)  # as few chunks as the limit allows
            assert chunks * r - n < max(chunks, 1)  # padding of the last chunk


def test_growing_arrays(tmp_path):
    with StoreWriter(tmp_path / "g.zarr") as w:
        w.create_growing("k", (2,), "float16", chunk_rows=3)
        w.append("k", np.ones((2, 2)))
        w.append("k", np.zeros((5, 2)))
    k = open_store(tmp_path / "g.zarr")["k"]
    assert k.shape == (7, 2) and float(k[:].sum()) == 4.0


def test_open_missing_and_not_zarr(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        open_store(tmp_path / "nope.zarr")
    os.makedirs(tmp_path / "empty.zarr")
    with pytest.raises(ValueError, match="empty.zarr"):
        open_store(tmp_path / "empty.zarr")


def test_pixel_layout_round_trips_through_a_store(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 3, s).astype(np.uint8) for s in [(3, 5), (4, 2), (1, 7)]]
    lay = pixel_layout(maps)
    assert lay["pixel_offsets"].tolist() == [0, 15, 23, 30]
    assert lay["sizes"].tolist() == [[3, 5], [4, 2], [1, 7]]
    st = open_store(write_store(tmp_path / "p.zarr", {"m": lay["flat"], **lay}))
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(pixel_map(st, "m", i), m)
