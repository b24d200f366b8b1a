"""The bridge's own metadata files beside the secrets (the state file, the lease store): replaced
atomically, created with their final mode, read through a directory descriptor, never through a
symlink, never whole past MAX_STATE_BYTES. Never a secret's file: those are the generation's.
"""

from __future__ import annotations

import os
import stat
import time
from typing import BinaryIO

from bridge.errors import WriteError
from bridge.writer.generation import unlink

#: a metadata file beside the secrets (state file, lease store) larger than this is not one the
#: bridge wrote (100,000 files make a 30 MB state file): refused, never read whole
MAX_STATE_BYTES = 64 * 2**20


def write_beside(dfd: int, name: str, data: bytes, mode: int, where: str) -> None:
    """Atomically replace `name` in `dfd`, created with `mode` from the start."""
    tmp = f"..state_{time.time_ns()}"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode & 0o777, dir_fd=dfd)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, mode)  # undoes the umask
            out.write(data)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as exc:
        unlink(dfd, tmp)
        raise WriteError(f"cannot write {name} in {where}: {exc.strerror}") from None


def read_beside(dfd: int, name: str, where: str) -> bytes | None:
    """`name` in `dfd` (None when there is none); a regular file only, never a symlink."""
    try:
        # O_NONBLOCK: a FIFO planted under the name must not hang the bridge in open()
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteError(f"read {name} in {where}: not a regular file")
        return read_bounded(f, f"{name} in {where}")


def read_bounded(file: BinaryIO, what: str) -> bytes:
    """All of `file`, or WriteError once it is past MAX_STATE_BYTES (a sparse file of gigabytes
    costs nothing on disk and everything in memory)."""
    data = file.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise WriteError(f"{what} is larger than {MAX_STATE_BYTES // 2**20} MiB: not the bridge's; remove it")
    return data
