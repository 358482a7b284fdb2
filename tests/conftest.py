import os
from types import SimpleNamespace

import pytest

# Tests share 2 cores with each other's subprocesses; one BLAS/torch thread each keeps
# them from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO


def stage_job(inputs: dict, output, settings: dict) -> SimpleNamespace:
    """A stand-in for ``lcseg_steps.stage.Job`` with what a stage's ``run`` reads."""
    from lcseg_steps.stage import settings_attrs

    return SimpleNamespace(
        input=SimpleNamespace(**inputs),
        output=[str(output)],
        settings=settings,
        attrs=settings_attrs(settings),
        log=lambda _msg: None,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny demo run (tests/helpers.py's TINY config), once per session and
    shared with every test that needs an uninterrupted TINY run (tests/store_hashes.py's
    reference_run): read its results, never write into them (a test that changes files
    works on a copy, see test_analysis_workflow's analysis_jobs)."""
    from tests.helpers import TINY
    from tests.store_hashes import reference_run

    return reference_run(tmp_path_factory, TINY)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where torch sees a CUDA device (``python -m
    benchmarks.gpu_check`` runs them on a GPU machine); elsewhere they skip."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)
