"""The tiny demo pipeline on a real one-node SLURM cluster (localhost) through
``--profile workflow/profiles/slurm``: every Zarr array and the metrics equal a local run's.

The test brings up munged, slurmctld and slurmd from Debian's packages (installed when
missing, which needs root and apt), with every config, key, state and log file under a
temporary folder, and stops them by PID afterwards.

Workarounds for the SLURM executor plugin against such a cluster (stated here because a
real cluster does not need them):

* ``--slurm-status-command squeue``: accounting is off (no slurmdbd), so ``sacct`` has no
  records and the plugin's default status query would poll forever without a word.
  ``MinJobAge`` is raised so finished jobs stay visible to ``squeue`` long enough.
* ``SLURM_CONF`` in the environment of snakemake: the config is not at
  ``/etc/slurm/slurm.conf`` (the test must not touch the machine's config), and the
  variable reaches the job step's ``srun`` because ``sbatch`` exports the submitting
  environment (``--export=ALL``, the default) to the batch job.
* ``--slurm-init-seconds-before-status-checks 1`` instead of the 40 s first wait, and
  ``--slurm-no-account`` as there is no accounting database to look an account up in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY

pytestmark = pytest.mark.integration
BIN = os.path.dirname(sys.executable)
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun")
# 2.x is the line for Snakemake >= 8 (executor-plugin interface 9); 2.8.0 is tested with 9.27
PLUGIN = "snakemake-executor-plugin-slurm==2.8.0"
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", ""), *SBIN)))


def _ensure_slurm_packages() -> None:
    if all(_which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        pytest.skip(f"SLURM/munge not installed and not root: cannot apt-get install {PACKAGES}")
    if not shutil.which("apt-get"):
        pytest.skip(f"SLURM/munge not installed and no apt-get to install {PACKAGES}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not all(_which(d) for d in DAEMONS):
        pytest.skip(f"apt-get install {' '.join(PACKAGES)} failed: {r.stderr[-500:]}")


def _ensure_plugin() -> None:
    probe = [sys.executable, "-c", "import snakemake_executor_plugin_slurm"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", PLUGIN],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        pytest.skip(f"pip install {PLUGIN} failed: {r.stderr[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        kb = int(fh.readline().split()[1])
    return kb // 1024 // 2


def slurm_conf(d: Path) -> str:
    """A one-node cluster on localhost, accounting off, all state under ``d``."""
    return f"""\
ClusterName=lcsegtest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket={d}/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_pid(path: Path, timeout: float = 20) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"{path} was not written")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Starts munged, slurmctld and slurmd; yields the environment that points the Slurm
    clients at this cluster; stops the daemons by PID."""
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root (SlurmUser=root); not root")
    _ensure_slurm_packages()
    _ensure_plugin()
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o755)
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    # config and key first: a Slurm client without a config looks the cluster up in DNS
    conf = d / "slurm.conf"
    conf.write_text(slurm_conf(d))
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    # The job step's srun runs with the SLURM_* variables stripped (the jobstep plugin
    # keeps only the allocation's ids), so SLURM_CONF does not reach it: a wrapper first
    # on PATH (which sbatch exports to the job) puts it back.
    (d / "bin").mkdir()
    srun = d / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_which("srun")} "$@"\n')
    srun.chmod(0o755)
    path = f"{d / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": path}
    pids: list[int] = []
    try:
        subprocess.run(
            [
                _which("munged"),
                "--force",
                f"--socket={d}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={d}/munged.pid",
                f"--log-file={d}/munged.log",
                f"--seed-file={d}/munged.seed",
            ],
            check=True,
            timeout=30,
        )
        pids.append(_read_pid(d / "munged.pid"))
        subprocess.run([_which("slurmctld"), "-i"], env=env, check=True, timeout=30)
        pids.append(_read_pid(d / "slurmctld.pid"))
        subprocess.run([_which("slurmd"), "-N", "localhost"], env=env, check=True, timeout=30)
        pids.append(_read_pid(d / "slurmd.pid"))
        end = time.monotonic() + 60
        while True:
            r = subprocess.run(
                [_which("sinfo"), "-h", "-N", "-o", "%T"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if r.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            if time.monotonic() > end:
                logs = "".join((d / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log"))
                raise RuntimeError(f"node not idle: {r.stdout}{r.stderr}\n{logs}")
            time.sleep(0.5)
        yield {"env": env, "dir": d}
    finally:
        for pid in reversed(pids):
            _stop(pid)


def _test_profile(d: Path) -> Path:
    """workflow/profiles/slurm adapted to the test cluster: its one partition, no GPUs
    (the tiny run extracts on the CPU), memory that fits the node."""
    prof = yaml.safe_load((Path(REPO) / "workflow/profiles/slurm/config.yaml").read_text())
    prof["default-resources"] = {
        **prof.get("default-resources", {}),
        "slurm_partition": "debug",
        "mem_mb": 500,
        "runtime": 10,
    }
    for res in prof.get("set-resources", {}).values():
        for k in ("slurm_partition", "gres", "gpu", "slurm_extra", "mem_mb", "runtime"):
            res.pop(k, None)
    prof["set-resources"] = {r: v for r, v in prof.get("set-resources", {}).items() if v}
    if not prof["set-resources"]:
        del prof["set-resources"]
    prof.pop("set-threads", None)  # the node has 2 CPUs
    # one shard chain per group submission: packed shards run side by side and would ask
    # for more than the node's 2 CPUs (the group stays pending)
    prof["group-components"] = [f"{g}=1" for g in set(prof.get("groups", {}).values())]
    prof["use-conda"] = False
    prof["latency-wait"] = 5
    prof["retries"] = 0
    prof["slurm-status-command"] = "squeue"
    prof["slurm-init-seconds-before-status-checks"] = 1
    prof["slurm-no-account"] = True
    prof["seconds-between-status-checks"] = 2
    prof["slurm-keep-successful-logs"] = True
    out = d / "profile"
    out.mkdir(exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(prof))
    return out


def _zarr_digests(root: Path) -> dict[str, str]:
    """Every file inside every ``*.zarr`` folder (array chunks and metadata) -> sha256."""
    out = {}
    for z in sorted(root.rglob("*.zarr")):
        for f in sorted(p for p in z.rglob("*") if p.is_file()):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_slurm_run_equals_local_run(cluster, tiny_run, tmp_path):
    profile = _test_profile(cluster["dir"])
    # the local run: the session's uninterrupted TINY run
    local, remote = tiny_run, tmp_path / "slurm"
    remote.mkdir()

    cfg = remote / "config.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    cmd = [os.path.join(BIN, "snakemake"), "-s", os.path.join(REPO, "Snakefile")]
    cmd += ["--directory", str(remote), "--configfile", str(cfg), "--profile", str(profile)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=480, env=cluster["env"])
    took = time.monotonic() - t0
    out = r.stdout[-4000:] + r.stderr[-4000:]
    if r.returncode != 0:
        for log in sorted((remote / ".snakemake" / "slurm_logs").rglob("*.log"))[:3]:
            out += f"\n--- {log}:\n" + log.read_text()[-3000:]
    assert r.returncode == 0, out
    # the jobs really went through SLURM
    assert "sbatch" in out.lower() or "slurm" in out.lower(), out
    assert list((remote / ".snakemake" / "slurm_logs").rglob("*.log")), out

    res_l, res_r = local / "results" / "tiny", remote / "results" / "tiny"
    dl, dr = _zarr_digests(res_l), _zarr_digests(res_r)
    assert len(dl) > 50 and dl.keys() == dr.keys()
    assert {k for k in dl if dl[k] != dr[k]} == set()
    for name in ("seed0/metrics.json", "metrics_summary.json"):
        assert json.loads((res_l / name).read_text()) == json.loads((res_r / name).read_text())
    print(f"slurm run took {took:.0f} s")
