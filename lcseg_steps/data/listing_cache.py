"""How many images a run covers, as the workflow needs it while Snakemake builds the DAG,
with a cache for the datasets whose listing is slow to read.

The DAG needs only the number of images: the shard list and the resource estimates follow
from it (the ``index`` job lists the images again and writes them out). Listing COCO
train2017 streams ~25 MB of its ~450 MB instances JSON and builds 118k records, about 1 s
of every ``snakemake`` start (each cluster job parses the Snakefile again). For the
datasets in ``WATCHED`` the count is kept in a small JSON file next to the results
(``results/<run>/.listing-cache.json``) and used only when everything the listing read is
unchanged:

- the validated ``dataset`` config section;
- every listing file (COCO: the instances JSON): resolved path, size, mtime, ctime and
  inode (a write or a replacement changes the ctime, which tools that restore mtimes, such
  as ``cp -p`` or ``rsync``, cannot set back);
- the source files of the listing code (path, size, mtime), the lcseg version and the
  cache format.

The folders the listing checks (COCO's root and image folder) must exist, else the listing
runs and raises its usual error. A listing that raises writes nothing. After a successful
listing the count is written only when the listing files did not change while they were
read and their last change is more than ``SETTLE_S`` seconds old (a file rewritten at the
same size within one tick of the file system's clock would otherwise look unchanged), to a
temporary sibling renamed into place, so a reader never sees half a file. An unreadable,
malformed or mismatching cache is a miss; a cache that cannot be written (read-only
results folder) is skipped.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lcseg_steps import __version__

FORMAT = 1
SETTLE_S = 2.0


def _coco_watched(dataset: dict) -> tuple[list[str], list[str]]:
    from lcseg_steps.data.coco import coco_paths

    image_dir, ann = coco_paths(dataset["root"], dataset.get("split", "val2017"))
    return [str(ann)], [str(dataset["root"]), str(image_dir)]


# dataset name -> (files its listing reads, folders it checks); the listing must depend on
# nothing else but the dataset config section
WATCHED: dict[str, Callable[[dict], tuple[list[str], list[str]]]] = {"coco": _coco_watched}


def _listing():
    from lcseg_steps.data.image_table import list_images

    return list_images


def _code_files(name: str) -> list[str]:
    """The source files of the listing: ``lcseg_steps.data.image_table`` and the dataset's
    module."""
    from lcseg_steps.data.registry import get_dataset

    fn = get_dataset(name).list_images
    return [
        sys.modules["lcseg_steps.data.image_table"].__file__,
        sys.modules[fn.__module__].__file__,
    ]


def listing_key(dataset: dict) -> dict | None:
    """What the cached count of ``dataset`` is valid for; ``None`` when the dataset is not
    cached or a watched file or folder is missing (the listing then says what is wrong)."""
    watched = WATCHED.get(dataset.get("name"))
    if watched is None:
        return None
    files, folders = watched(dataset)
    if not all(os.path.isdir(d) for d in folders):
        return None
    stats = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        stats.append(
            [os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        )
    code = []
    for path in _code_files(dataset["name"]):
        st = os.stat(path)
        code.append([os.path.realpath(path), st.st_size, st.st_mtime_ns])
    return {
        "format": FORMAT,
        "lcseg": __version__,
        # as it reads back from JSON, so that an unchanged section compares equal
        "dataset": json.loads(json.dumps(dataset, sort_keys=True, default=str)),
        "files": stats,
        "code": code,
    }


def read_cached_count(cache: str | os.PathLike, key: dict) -> int | None:
    """The count stored in ``cache`` for exactly ``key``; ``None`` otherwise."""
    try:
        with open(cache, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    n = doc.get("n_images")
    return n if type(n) is int and n >= 0 else None


def _settled(key: dict) -> bool:
    """Whether every listing file last changed more than ``SETTLE_S`` seconds ago."""
    now = time.time_ns()
    return all(now - max(mtime, ctime) > SETTLE_S * 1e9 for _, _, mtime, ctime, _ in key["files"])


def write_cached_count(cache: str | os.PathLike, key: dict, n_images: int) -> bool:
    """Store ``n_images`` for ``key`` atomically; ``False`` when it cannot be written."""
    from lcseg_steps.stores.atomic_write import tmp_sibling

    path = Path(cache)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(path)
        tmp.write_text(json.dumps({"key": key, "n_images": n_images}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return False
    return True


def count_images(dataset: dict, cache: str | os.PathLike) -> int:
    """The number of images ``list_images(dataset)`` gives, read from ``cache`` when it holds
    the count for the same dataset section, listing files and listing code, else listed
    (and cached, for the datasets in ``WATCHED``)."""
    key = listing_key(dataset)
    if key is not None:
        n = read_cached_count(cache, key)
        if n is not None:
            return n
    n = len(_listing()(dataset))
    if key is not None and _settled(key) and listing_key(dataset) == key:
        write_cached_count(cache, key, n)
    return n
