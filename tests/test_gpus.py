"""GPU slot -> CUDA_VISIBLE_DEVICES mapping for local multi-GPU runs."""

import subprocess
import sys

import pytest

from lcseg_steps.runner.gpus import claim_device, device_for_slot, visible_devices


def test_visible_devices_from_env_or_count():
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 3"}, lambda: 8) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}, lambda: 8) == []
    assert visible_devices({}, lambda: 3) == ["0", "1", "2"]


def test_device_for_slot():
    devs = ["0", "1", "2", "3"]
    assert [device_for_slot(s, devs) for s in range(5)] == ["0", "1", "2", "3", "0"]
    assert [device_for_slot(s, devs, 2) for s in range(3)] == ["0,1", "2,3", "0,1"]
    assert device_for_slot(1, ["4", "6"]) == "6"
    with pytest.raises(ValueError):
        device_for_slot(0, [])
    with pytest.raises(ValueError):
        device_for_slot(0, devs, 5)


def test_claim_gives_concurrent_jobs_distinct_devices(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    # the lock is held by this process until exit, so a second claim here takes the next slot
    assert claim_device(env=dict(env), lock_dir=tmp_path) == "0"
    assert claim_device(env=dict(env), lock_dir=tmp_path) == "1"
    code = (
        "from lcseg_steps.runner.gpus import claim_device;"
        f"print(claim_device(env={{'CUDA_VISIBLE_DEVICES': '0,1,2'}}, lock_dir={str(tmp_path)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_claim_leaves_scheduler_and_single_gpu_alone(tmp_path):
    env = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"}
    assert claim_device(env=env, lock_dir=tmp_path) is None
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {}
    assert claim_device(env=env, count=lambda: 1, lock_dir=tmp_path) is None and env == {}
    assert claim_device(env={}, count=lambda: 0, lock_dir=tmp_path) is None
