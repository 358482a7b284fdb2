"""The repository stays formatted and `snakemake --lint` stays clean."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

BIN = os.path.dirname(sys.executable)


def _run(*cmd, cwd=REPO):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_check():
    r = _run(os.path.join(BIN, "ruff"), "check", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format():
    r = _run(os.path.join(BIN, "ruff"), "format", "--check", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakefmt():
    r = _run(os.path.join(BIN, "snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.integration
def test_snakemake_lint_is_clean(tmp_path):
    r = _run(
        os.path.join(BIN, "snakemake"),
        "--lint",
        "--directory",
        str(tmp_path),
        "-s",
        os.path.join(REPO, "Snakefile"),
        "--configfile",
        os.path.join(REPO, "config.yaml"),
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Lints for" not in out, out
