"""The store-to-store functions of the last stages (refine, objects, assign, segment,
evaluate, summary, report; each in its stage module) on a tiny on-disk shard with
hand-made masks and stores."""

from __future__ import annotations

import numpy as np

from lcseg_steps.store import open_store, pixel_layout, pixel_map, write_store

# ---------------------------------------------------------------------------------------
# pixel_layout / pixel_map


def test_pixel_layout_round_trips_through_a_store(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 3, s).astype(np.uint8) for s in [(3, 5), (4, 2), (1, 7)]]
    lay = pixel_layout(maps)
    assert lay["pixel_offsets"].tolist() == [0, 15, 23, 30]
    assert lay["sizes"].tolist() == [[3, 5], [4, 2], [1, 7]]
    st = open_store(write_store(tmp_path / "p.zarr", {"m": lay["flat"], **lay}))
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(pixel_map(st, "m", i), m)
