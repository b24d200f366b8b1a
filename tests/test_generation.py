"""Operations through directory descriptors (bridge/writer/generation.py): files created with
exactly their mode whatever the umask, owners, folders readable by other uids, and the tmpfs
check of the output directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bridge.errors import WriteError
from bridge.writer.atomic import FileSpec, Writer, is_memory_backed
from bridge.writer.generation import stamp_of, without_ctime


def test_umask_does_not_narrow_or_widen(tmp_path: Path) -> None:
    """The final mode is exactly the configured one whatever the umask."""
    old = os.umask(0o077)
    try:
        w = Writer(tmp_path, require_tmpfs=False)
        w.prepare()
        w.commit({"a": FileSpec(b"1", 0o444)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o444


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_owner(tmp_path: Path) -> None:
    """Files get the configured uid/gid."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o400, 999, 998)})
    st = os.stat(tmp_path / "a")
    assert (st.st_uid, st.st_gid) == (999, 998)


def test_disk_backed_dir_refused(tmp_path: Path) -> None:
    """With require_tmpfs a disk directory is refused, saying how to fix it."""
    if is_memory_backed(tmp_path):
        pytest.skip("tmp_path is itself on tmpfs here")
    with pytest.raises(WriteError, match="tmpfs.*require_tmpfs: false"):
        Writer(tmp_path, require_tmpfs=True).prepare()


def test_tmpfs_dir_accepted(shm_dir: Path) -> None:
    """A tmpfs directory passes the check and is written."""
    w = Writer(shm_dir, require_tmpfs=True)
    w.prepare()
    assert w.commit({"a": FileSpec(b"1")})


def test_folders_readable_under_strict_umask(tmp_path: Path) -> None:
    """Folders are 0755 whatever the umask, so an app of another uid can reach its files."""
    old = os.umask(0o077)
    try:
        w = Writer(tmp_path / "out", require_tmpfs=False)
        w.prepare()
        w.commit({"tls/cert.pem": FileSpec(b"c", 0o444)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "tls").st_mode) == 0o755



def test_stamp_tells_every_field_apart_and_ctime_alone(tmp_path: Path) -> None:
    """A stamp moves with the ctime, the mtime (negative too) and the mode; `without_ctime` with all but the ctime."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.utime(path, ns=(0, -1_500_000_000))  # before 1970: packed in two's complement
    first = os.stat(path)
    os.link(path, tmp_path / "g")  # moves the ctime (unless within the same clock tick) and nothing in a stamp else
    linked = os.stat(path)
    assert without_ctime(stamp_of(linked)) == without_ctime(stamp_of(first))
    assert (stamp_of(linked) == stamp_of(first)) == (linked.st_ctime_ns == first.st_ctime_ns)
    os.utime(path, ns=(0, -1_500_000_001))
    moved = stamp_of(os.stat(path))
    assert without_ctime(moved) != without_ctime(stamp_of(linked))
    os.chmod(path, 0o400)
    assert without_ctime(stamp_of(os.stat(path))) != without_ctime(moved)
