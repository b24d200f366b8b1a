"""The one inotify reader of `run` (bridge/runtime/inotify.py): callers sharing a folder each keep
their own handle, a removed watch tells nothing more, and nothing is told after `stop`."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.inotify_queue import IN_CREATE, IN_DELETE_SELF
from bridge.runtime.inotify import Watcher
from tests.polling import wait_for


class Heard:
    """What one handler was told, with a way to wait for a name."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, folder: str, name: str, mask: int) -> None:
        with self.lock:
            self.events.append((folder, name, mask))

    def names(self) -> list[str]:
        with self.lock:
            return [name for _, name, _ in self.events]


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    w = Watcher()
    yield w
    w.stop()


def _settle(watcher: Watcher, folder: Path, tag: str) -> None:
    """Every event before now has been told: inotify tells one instance's events in order."""
    seen = threading.Event()
    handle = watcher.add(str(folder), lambda _f, name, _m: seen.set() if name == tag else None)
    (folder / tag).touch()
    assert seen.wait(10)
    watcher.remove(handle)


def test_two_callers_on_one_folder_each_keep_their_handle(watcher: Watcher, tmp_path: Path) -> None:
    """Both callers of one folder are told of a new name; once one lets go the other still is; a
    folder nobody watches tells nothing."""
    first, second = Heard(), Heard()
    h1 = watcher.add(str(tmp_path), first)
    watcher.add(str(tmp_path), second)
    (tmp_path / "one").touch()
    _settle(watcher, tmp_path, "barrier-1")
    assert "one" in first.names() and "one" in second.names()
    watcher.remove(h1)
    (tmp_path / "two").touch()
    _settle(watcher, tmp_path, "barrier-2")
    assert "two" not in first.names() and "two" in second.names()
    assert any(mask & IN_CREATE for _, name, mask in second.events if name == "two")
    assert {folder for folder, _, _ in second.events} == {str(tmp_path)}


def test_a_removed_folder_is_told_and_forgotten(watcher: Watcher, tmp_path: Path) -> None:
    """Removing a watched folder tells its caller (so a sweep runs), drops the kernel's watch, and
    taking the handle back afterwards is harmless."""
    folder = tmp_path / "gone"
    folder.mkdir()
    heard = Heard()
    handle = watcher.add(str(folder), heard)
    folder.rmdir()
    assert wait_for(lambda: any(mask & IN_DELETE_SELF for _, _, mask in heard.events), timeout=5)
    watcher.remove(handle)
    watcher.remove(handle)


def test_a_missing_folder_is_an_oserror(watcher: Watcher, tmp_path: Path) -> None:
    """A folder that is not there (or is a file) is refused with its errno, for the caller to log."""
    with pytest.raises(OSError) as missing:
        watcher.add(str(tmp_path / "missing"), Heard())
    assert missing.value.errno == errno.ENOENT
    (tmp_path / "file").touch()
    with pytest.raises(OSError) as not_a_folder:
        watcher.add(str(tmp_path / "file"), Heard())
    assert not_a_folder.value.errno == errno.ENOTDIR


def test_nothing_is_told_after_stop(tmp_path: Path) -> None:
    """After `stop` returns its thread is gone and its descriptor closed: changes tell nothing, and
    the watcher can be used again (a new instance is opened)."""
    instances = _inotify_instances()
    watcher = Watcher()
    heard = Heard()
    watcher.add(str(tmp_path), heard)
    assert _inotify_instances() == instances + 1
    before = {t.name for t in threading.enumerate()}
    assert "file-watch" in before
    watcher.stop()
    assert "file-watch" not in {t.name for t in threading.enumerate()}
    assert _inotify_instances() == instances
    (tmp_path / "after").touch()
    assert "after" not in heard.names()
    again = Heard()
    watcher.add(str(tmp_path), again)
    try:
        (tmp_path / "again").touch()
        assert wait_for(lambda: "again" in again.names(), timeout=5)
    finally:
        watcher.stop()
    assert _inotify_instances() == instances


def _inotify_instances() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by now
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count
