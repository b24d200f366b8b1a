"""What `Writer.check_drift` compares: the current generation on disk against what the writer
recorded when it committed (a stamp per file, the generation directory's inode and mtime). Only
lstat and fstat, one per name: no content is read, no link followed, nothing is written here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable, Mapping

from bridge.writer.generation import (
    DIR_FLAGS,
    Stamp,
    by_folder,
    changed_files,
    opened,
    stamp_of,
    stat_names,
    without_ctime,
)


def tampered(dfd: int, gen: str, generation_id: tuple[int, int], own_names: Collection[str],
             folders: Iterable[tuple[str, list[str]]], stamps: Mapping[str, Stamp]) -> list[str] | None:
    """Names of the generation `gen` whose stamp differs from the one recorded; None when the
    generation directory itself is missing, replaced, chmod'ed, or has a name added (one not in
    `own_names`): then it is rewritten whole rather than carrying along what the writer did not write."""
    try:
        gfd = os.open(gen, DIR_FLAGS, dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(gfd)
        if st.st_ino != generation_id[0] or stat.S_IMODE(st.st_mode) != 0o755:
            return None
        if st.st_mtime_ns != generation_id[1] and not set(os.listdir(gfd)) <= set(own_names):
            return None
        return changed_files(gfd, folders, stamps)
    finally:
        os.close(gfd)


def restamped(dfd: int, gen: str, names: Collection[str], stamps: Mapping[str, Stamp]) -> dict[str, Stamp]:
    """New stamps for `names` whose ctime alone moved (the writer linked or unlinked them itself);
    a name with anything else changed keeps its old stamp, so it is still seen as drift."""
    fresh: dict[str, Stamp] = {}
    with opened(dfd, gen) as gfd:
        for name, st in stat_names(gfd, by_folder(names).items()):
            if st is not None and without_ctime(stamp := stamp_of(st)) == without_ctime(stamps[name]):
                fresh[name] = stamp
    return fresh


def where_path_leads(path: os.PathLike[str] | str, held: int) -> tuple[int, int] | None:
    """None while `path` still leads to the directory `held`; else where it leads now ((-1, -1):
    nowhere)."""
    st_held = os.fstat(held)
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    now = (st.st_dev, st.st_ino)
    return None if now == (st_held.st_dev, st_held.st_ino) else now
