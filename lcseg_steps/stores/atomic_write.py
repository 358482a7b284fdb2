"""Outputs are built under a temporary sibling name and renamed into place when complete,
so a killed job never leaves a half output that looks finished."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def tmp_sibling(path: str | os.PathLike) -> Path:
    """``<path>.tmp-<host>-<pid>``: where this process builds ``path`` before renaming it.

    Siblings that killed writers left behind are removed first: those made on this host
    whose process is gone (a live pid, or a sibling from another host of a shared file
    system, is left alone: its pid means nothing here).
    """
    path = Path(path)
    host, pid = socket.gethostname(), os.getpid()
    prefix = f"{path.name}.tmp-"
    siblings = path.parent.iterdir() if path.parent.is_dir() else ()
    for old in (p for p in siblings if p.name.startswith(prefix)):
        old_host, _, old_pid = old.name[len(prefix) :].rpartition("-")
        if old_host != host or not old_pid.isdigit():
            continue
        if int(old_pid) == pid or not _alive(int(old_pid)):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return path.with_name(f"{path.name}.tmp-{host}-{pid}")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to a :func:`tmp_sibling` of ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
