import os

import pytest

from tests.helpers import REPO, cuda_available

# Tests share 2 cores with each other's subprocesses; one BLAS/torch thread each keeps
# them from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny demo run (tests/helpers.py's TINY config), once per session and
    shared with every test that needs an uninterrupted TINY run (tests/store_hashes.py's
    reference_run): read its results, never write into them (a test that changes files
    works on a copy, see test_analysis_workflow's analysis_jobs)."""
    from tests.helpers import TINY
    from tests.store_hashes import reference_run

    return reference_run(tmp_path_factory, TINY)


@pytest.fixture(scope="session")
def shard(tmp_path_factory):
    """tests/hand_shard.py's tiny shard with hand-made masks (images, gt PNGs, records, a
    patch_masks, a features and a pixel_masks store, and the per-image score / feature
    grids), once per session for the refine, objects, segment and report tests: read it,
    never write into it."""
    from tests.hand_shard import make_shard

    return make_shard(tmp_path_factory.mktemp("stages"))


@pytest.fixture(scope="session")
def objects_store(shard):
    """run_objects (masked_keys) on the hand-made pixel masks of ``shard``."""
    from tests.hand_shard import make_objects_store

    return make_objects_store(shard)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Two shards of 6 images through image_level, fit_dataset, fit_category and merge
    (tests/planted_shards.py), once per session for those stages' tests: read it, never
    write into it."""
    from tests.planted_shards import make_pipeline

    return make_pipeline(tmp_path_factory.mktemp("levels"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where torch sees a CUDA device (``python -m
    benchmarks.gpu_check`` runs them on a GPU machine); elsewhere they skip."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture
def plot_png(tmp_path):
    """A 300 x 400 PNG plot, its left half blue (RGB), for the report page tests."""
    import cv2
    import numpy as np

    path = tmp_path / "plot.png"
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :200] = (0, 0, 255)
    cv2.imwrite(str(path), img)
    return path
