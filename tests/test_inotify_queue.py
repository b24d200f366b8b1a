"""One inotify instance read without a thread (bridge/inotify_queue.py), on a real kernel instance
over tmp_path: what a write, a rename and a delete queue, what removing a watch tells, and `parse`."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.inotify_queue import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    InotifyQueue,
    parse,
    watch_limit_error,
)


@pytest.fixture
def queue() -> Iterator[InotifyQueue]:
    q = InotifyQueue()
    yield q
    q.close()


def _names(events: list[tuple[int, int, str]], flag: int) -> list[str]:
    return [name for _wd, mask, name in events if mask & flag]


def test_nothing_queued_reads_empty(queue: InotifyQueue, tmp_path: Path) -> None:
    """A watch with nothing happened drains to [] at once (the instance does not block)."""
    queue.add(str(tmp_path))
    assert queue.drain() == []


def test_write_rename_delete_are_queued(queue: InotifyQueue, tmp_path: Path) -> None:
    """A created, written, renamed and deleted file each queue their event under the folder's watch."""
    wd = queue.add(str(tmp_path))
    (tmp_path / "a").write_bytes(b"x")
    os.rename(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b").unlink()
    events = queue.drain()
    assert {w for w, _m, _n in events} == {wd}
    assert _names(events, IN_CREATE) == ["a"] and _names(events, IN_CLOSE_WRITE) == ["a"]
    assert _names(events, IN_MOVED_FROM) == ["a"] and _names(events, IN_MOVED_TO) == ["b"]
    assert _names(events, IN_DELETE) == ["b"]
    assert queue.drain() == []


def test_two_paths_to_one_folder_share_a_watch(queue: InotifyQueue, tmp_path: Path) -> None:
    """A watch belongs to the inode: a symlink to a watched folder gives the same descriptor."""
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert queue.add(str(tmp_path / "d")) == queue.add(str(tmp_path / "link"))


def test_a_file_or_missing_folder_is_refused(queue: InotifyQueue, tmp_path: Path) -> None:
    """Only a folder can be watched: a file is ENOTDIR and a missing path ENOENT, naming the path."""
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        queue.add(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError) as raised:
        queue.add(str(tmp_path / "missing"))
    assert raised.value.filename == str(tmp_path / "missing")


def test_removed_watch_tells_ignored_then_nothing(queue: InotifyQueue, tmp_path: Path) -> None:
    """Removing a watch queues its IN_IGNORED, and a later write queues nothing."""
    wd = queue.add(str(tmp_path))
    queue.remove(wd)
    assert [(w, m & IN_IGNORED) for w, m, _n in queue.drain()] == [(wd, IN_IGNORED)]
    (tmp_path / "later").write_bytes(b"x")
    assert queue.drain() == []
    queue.remove(wd)  # already gone: EINVAL, no matter


def test_a_subfolder_is_marked_isdir(queue: InotifyQueue, tmp_path: Path) -> None:
    """A folder made inside the watched one is told with IN_ISDIR."""
    queue.add(str(tmp_path))
    (tmp_path / "sub").mkdir()
    assert _names(queue.drain(), IN_CREATE | IN_ISDIR) == ["sub"]


def test_parse_overflow_ignored_and_padded_names() -> None:
    """`parse` reads the kernel's records: an overflow (wd -1, no name), a NUL-padded name, an IN_IGNORED."""
    def record(wd: int, mask: int, name: bytes, length: int) -> bytes:
        return struct.pack("iIII", wd, mask, 0, length) + name.ljust(length, b"\0")

    data = record(-1, IN_Q_OVERFLOW, b"", 0) + record(3, IN_CREATE, b"new", 16) + record(3, IN_IGNORED, b"", 0)
    assert parse(data) == [(-1, IN_Q_OVERFLOW, ""), (3, IN_CREATE, "new"), (3, IN_IGNORED, "")]
    assert parse(data[:10]) == []


def test_watch_limit_reasons() -> None:
    """ENOSPC and EMFILE are told as the watch and instance limits; anything else by its strerror."""
    assert watch_limit_error(OSError(errno.ENOSPC, "x")) == "the inotify watch limit is reached"
    assert watch_limit_error(OSError(errno.EMFILE, "x")) == "the inotify instance limit is reached"
    assert watch_limit_error(OSError(errno.EACCES, "Permission denied")) == "Permission denied"


def test_drain_reads_past_one_read(queue: InotifyQueue, tmp_path: Path) -> None:
    """More events than one 64 KiB read holds are all drained in one call."""
    queue.add(str(tmp_path))
    names = [f"{i:04d}".ljust(200, "n") for i in range(300)]  # ~130 KiB of create + close-write records
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert sorted(_names(queue.drain(), IN_CREATE)) == names
