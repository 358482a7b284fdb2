"""One GPU per local GPU job on a multi-GPU workstation.

Snakemake's ``--resources gpu=N`` only counts GPU jobs; it does not tell a job which device
is its own, so every local job would start on device 0. :func:`claim_device` gives the job
a free slot (an exclusive ``flock`` on one lock file per slot, released when the process
exits) and sets ``CUDA_VISIBLE_DEVICES`` to that slot's device before CUDA is initialised.
Under a scheduler that assigns devices itself (SLURM sets ``SLURM_JOB_ID`` and
``CUDA_VISIBLE_DEVICES``) nothing is changed.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


def visible_devices(env: Mapping[str, str], count: Callable[[], int]) -> list[str]:
    """The devices the whole run may use: ``CUDA_VISIBLE_DEVICES`` when set, else
    ``0..count()-1``."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(count())]


def device_for_slot(slot: int, devices: list[str], per_job: int = 1) -> str:
    """``CUDA_VISIBLE_DEVICES`` value of slot ``slot`` when every job uses ``per_job``
    devices: slot 0 -> the first ``per_job`` devices, slot 1 -> the next, wrapping around."""
    if not devices:
        raise ValueError("no CUDA devices to assign")
    if per_job < 1 or per_job > len(devices):
        raise ValueError(f"{per_job} devices per job, {len(devices)} available")
    n_slots = len(devices) // per_job
    first = (slot % n_slots) * per_job
    return ",".join(devices[first : first + per_job])


def scheduler_assigned(env: Mapping[str, str]) -> bool:
    """True inside a batch job whose scheduler already picked the devices."""
    return "SLURM_JOB_ID" in env or "PBS_JOBID" in env or "LSB_JOBID" in env


def claim_device(
    per_job: int = 1,
    env: dict[str, str] | None = None,
    count: Callable[[], int] | None = None,
    lock_dir: str | os.PathLike | None = None,
) -> str | None:
    """Pick a free slot for this process and set ``env["CUDA_VISIBLE_DEVICES"]``
    (``os.environ`` by default); returns the value set, or None when nothing was changed
    (a scheduler assigned the devices, no GPU, or only one slot)."""
    env = os.environ if env is None else env
    if per_job < 1 or scheduler_assigned(env):
        return None
    if count is None:

        def count() -> int:
            import torch  # NVML count: does not initialise CUDA

            return torch.cuda.device_count()

    devices = visible_devices(env, count)
    if len(devices) // per_job < 2:
        return None
    n_slots = len(devices) // per_job
    folder = Path(lock_dir or Path(tempfile.gettempdir()) / f"lcseg-gpu-slots-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    slot = None
    for i in range(n_slots):
        fh = open(folder / f"slot{i}.lock", "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _HELD.append(fh)
        slot = i
        break
    if slot is None:  # more GPU jobs than slots (e.g. two runs at once): share one
        slot = os.getpid() % n_slots
    value = device_for_slot(slot, devices, per_job)
    env["CUDA_VISIBLE_DEVICES"] = value
    return value


_HELD: list = []  # open lock files, released when the process exits
