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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where torch sees a CUDA device (``python -m
    benchmarks.gpu_check`` runs them on a GPU machine); elsewhere they skip."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)
