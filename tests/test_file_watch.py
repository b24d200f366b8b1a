"""The `file` provider's remembered versions (providers/_file_watch.py): every change a stat would
see is seen, through inotify, whatever way the file was changed or reached."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from bridge.inotify_queue import InotifyQueue
from bridge.provider import Request
from providers import _file_watch
from providers.local import FileProvider, FileSettings


def _provider(base: Path, watch: bool = True) -> FileProvider:
    return FileProvider("src", FileSettings(base_dir=base, watch=watch))


def _version(provider: FileProvider, ref: str) -> object:
    provider.fetch(Request(ref))  # as the engine does: fetched once, then checked
    return provider.versions([Request(ref)])[Request(ref)]


def _remembered(provider: FileProvider, ref: str) -> bool:
    assert provider._known is not None
    return os.path.join(provider._base, ref) in provider._known.refresh()


def _same_size_same_mtime(path: Path, data: bytes) -> None:
    """An edit in place that puts the mtime back (as `cp -p` or `touch -r` leave it)."""
    info = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_an_unchanged_file_is_remembered_and_an_edit_in_place_is_seen(tmp_path: Path) -> None:
    """After one stat a file's version is remembered; an edit with its size and mtime put back is
    seen at the next check, as a stat would see it."""
    (tmp_path / "a").write_bytes(b"one")
    provider = _provider(tmp_path)
    first = _version(provider, "a")
    assert _remembered(provider, "a")
    _same_size_same_mtime(tmp_path / "a", b"two")
    assert not _remembered(provider, "a")
    assert _version(provider, "a") != first


def test_a_kubernetes_volume_swap_is_seen(tmp_path: Path) -> None:
    """A Kubernetes volume (`x -> ..data/x`, `..data -> ..v1`) swapped to a new `..v2` by renaming
    `..data`: the file reached through two symlinks moves, though no name it was read by changed."""
    for version, value in (("..v1", b"one"), ("..v2", b"two")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "x").write_bytes(value)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/x", tmp_path / "x")
    provider = _provider(tmp_path)
    first = _version(provider, "x")
    assert _remembered(provider, "x")
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    assert _version(provider, "x") != first
    assert provider.fetch(Request("x")).value == b"two"


def test_a_folder_on_the_way_replaced_is_seen(tmp_path: Path) -> None:
    """`a/b/c` whose folder `a` is replaced by another with a `b/c` of its own: every remembered
    version is forgotten."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_bytes(b"one")
    (tmp_path / "other" / "b").mkdir(parents=True)
    (tmp_path / "other" / "b" / "c").write_bytes(b"two")
    provider = _provider(tmp_path)
    first = _version(provider, "a/b/c")
    shutil.rmtree(tmp_path / "a")
    os.rename(tmp_path / "other", tmp_path / "a")
    assert not _remembered(provider, "a/b/c")
    assert _version(provider, "a/b/c") != first


def test_a_change_of_another_file_keeps_the_rest(tmp_path: Path) -> None:
    """A write to one file forgets that file only; a new unrelated file forgets nothing."""
    for name in "ab":
        (tmp_path / name).write_bytes(name.encode())
    provider = _provider(tmp_path)
    _version(provider, "a"), _version(provider, "b")
    (tmp_path / "a").write_bytes(b"changed")
    (tmp_path / "new").write_bytes(b"unrelated")
    assert not _remembered(provider, "a") and _remembered(provider, "b")


def test_the_sweep_forgets_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What inotify cannot see (a folder mounted over, another machine's write) is stat-ed again at
    the sweep."""
    (tmp_path / "a").write_bytes(b"one")
    provider = _provider(tmp_path)
    _version(provider, "a")
    monkeypatch.setattr(_file_watch, "SWEEP_SECONDS", 0.0)
    assert not _remembered(provider, "a")


def test_watch_off_remembers_nothing(tmp_path: Path) -> None:
    """`watch: false` (a network filesystem): a stat per file per check, no inotify instance."""
    (tmp_path / "a").write_bytes(b"one")
    provider = _provider(tmp_path, watch=False)
    first = _version(provider, "a")
    assert provider._known is None
    _same_size_same_mtime(tmp_path / "a", b"two")
    assert _version(provider, "a") != first


def test_closed_then_asked_again_still_answers(tmp_path: Path) -> None:
    """A provider closed (a reload) and asked again watches anew rather than failing."""
    (tmp_path / "a").write_bytes(b"one")
    provider = _provider(tmp_path)
    first = _version(provider, "a")
    provider.close()
    (tmp_path / "a").write_bytes(b"other")
    assert _version(provider, "a") != first


def test_the_watch_limit_reached_means_stats_not_a_refused_watch_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the inotify watch limit reached (ENOSPC), versions are stat-ed and nothing remembered,
    and no watch is asked for again until a sweep's time has passed (not one per file per check)."""
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode())
    asked: list[str] = []

    def refused(self: InotifyQueue, path: str, mask: int = 0) -> int:
        asked.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(InotifyQueue, "add", refused)
    provider = _provider(tmp_path)
    first = {ref: _version(provider, ref) for ref in "abc"}
    assert len(asked) == 1 and not any(_remembered(provider, ref) for ref in "abc")
    _same_size_same_mtime(tmp_path / "b", b"B")
    assert _version(provider, "b") != first["b"] and len(asked) == 1
    monkeypatch.setattr(_file_watch, "SWEEP_SECONDS", 0.0)
    _version(provider, "a")
    assert len(asked) == 2  # asked again after the sweep's time
