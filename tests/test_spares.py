"""Spares and replaced generations (bridge/writer/spares.py): unchanged files enter a commit as
hard links, a commit costs what changed, a spare is made at once when nothing replaced will become
one and the second once a generation has stood its grace, a commit reuses a replaced generation past
its grace, the generation found at start is reused only when it holds only files; private and bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bridge.writer.atomic import DATA_LINK, MAX_SPARES, FileSpec, Writer
from tests.writer_fixtures import assert_spares_match, generation_dirs, inodes, spare_dirs


@pytest.mark.parametrize("spare", [True, False], ids=["spare", "linked-at-commit"])
def test_unchanged_files_keep_their_inode(tmp_path: Path, spare: bool) -> None:
    """Unchanged files enter the new generation as hard links; a changed file is a new inode."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2"), "d/c": FileSpec(b"3")})
    if spare:
        w.prune(grace_seconds=0)
        assert len(spare_dirs(tmp_path)) == 1
    old_gen, before = w.generation, inodes(tmp_path)
    assert w.commit({"a": FileSpec(b"1b")}) == ["a"]
    after = inodes(tmp_path)
    assert w.generation != old_gen and os.readlink(tmp_path / DATA_LINK) == w.generation
    assert after["b"] == before["b"] and after["d/c"] == before["d/c"]
    assert after["a"] != before["a"]
    assert (tmp_path / old_gen / "a").read_bytes() == b"1"  # the replaced generation is untouched
    assert (tmp_path / "a").read_bytes() == b"1b"


def test_mode_change_is_a_new_inode_and_leaves_the_old_file(tmp_path: Path) -> None:
    """A chmod-only change writes a new file; the linked inode in the old generation keeps its mode."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o444), "b": FileSpec(b"2", 0o444)})
    w.prune(grace_seconds=0)
    old_gen, before = w.generation, inodes(tmp_path)
    assert w.commit({"a": FileSpec(b"1", 0o400)}) == ["a"]
    assert inodes(tmp_path)["a"] != before["a"]
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(tmp_path / old_gen / "a").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o444


def test_one_change_among_10000_writes_one_file(shm_dir: Path) -> None:
    """With 10,000 files, a commit of one change creates exactly one new file inode."""
    w = Writer(shm_dir, require_tmpfs=True)
    w.prepare()
    w.commit({f"s{i:05d}": FileSpec(b"v%d" % i) for i in range(10_000)})
    w.prune(grace_seconds=0)
    before = inodes(shm_dir)
    assert w.commit({"s04242": FileSpec(b"changed")}) == ["s04242"]
    after = inodes(shm_dir)
    assert len(after) == 10_000
    assert [name for name, ino in after.items() if ino != before[name]] == ["s04242"]
    assert (shm_dir / "s04242").read_bytes() == b"changed"


def test_spare_waits_for_the_replaced_generation(tmp_path: Path) -> None:
    """With nothing replaced to recycle (a first commit, a start) prune() links a spare at once, and
    the second (for a commit within the grace) once the generation has stood for the grace; after
    a commit that replaced a reusable generation it waits for that one's grace and says when (so a
    sleeping loop wakes for it), then recycles it. At shutdown (make_spare=False) none is linked."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2")})
    assert w.prune(grace_seconds=60, make_spare=False) is None
    assert spare_dirs(tmp_path) == []
    assert 59 < w.prune(grace_seconds=60) <= 60  # the second is due then
    assert len(spare_dirs(tmp_path)) == 1
    first = w.generation
    w.commit({"a": FileSpec(b"1b")})  # takes the spare
    assert spare_dirs(tmp_path) == []
    assert 59 < w.prune(grace_seconds=60) <= 60
    assert spare_dirs(tmp_path) == [] and first in generation_dirs(tmp_path)
    w.prune(grace_seconds=0)
    assert len(spare_dirs(tmp_path)) == MAX_SPARES and first not in generation_dirs(tmp_path)
    assert_spares_match(tmp_path)


@pytest.mark.parametrize("waited", [True, False], ids=["past-grace", "in-grace"])
def test_commit_recycles_a_replaced_generation_past_its_grace(tmp_path: Path, waited: bool) -> None:
    """With no spare ready, a commit reuses a replaced generation whose grace has ended (its
    directory becomes the new generation, unchanged inodes kept); one still in its grace is left
    to its readers and the commit links its own."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2"), "c": FileSpec(b"3")})
    w.prune(grace_seconds=0)
    w.commit({"a": FileSpec(b"1b")})  # takes the spare; the first generation is replaced
    old = next(g for g in generation_dirs(tmp_path) if g != w.generation)
    old_ino, before = os.stat(tmp_path / old).st_ino, inodes(tmp_path)
    if not waited:  # no prune between the two commits otherwise: the commit must find it itself
        w.prune(grace_seconds=60, make_spare=False)  # the grace a prune was last given is the one used
    assert w.commit({"c": FileSpec(b"3b")}) == ["c"]
    assert (os.stat(tmp_path / w.generation).st_ino == old_ino) is waited
    assert (old in generation_dirs(tmp_path)) is not waited
    after = inodes(tmp_path)
    assert after["d/b"] == before["d/b"] and after["a"] == before["a"] and after["c"] != before["c"]
    assert {n: (tmp_path / n).read_bytes() for n in ("a", "d/b", "c")} == {"a": b"1b", "d/b": b"2", "c": b"3b"}
    w.prune(grace_seconds=0)
    assert_spares_match(tmp_path)


@pytest.mark.parametrize("stray", [None, "symlink", "fifo", "folder-mode"])
def test_generation_found_at_start_is_recycled_only_when_it_holds_files(tmp_path: Path, stray: str | None) -> None:
    """The generation found at start becomes a spare once replaced when it holds only regular files
    in 0755 folders; one holding anything else is removed, and what it held never enters a generation."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2")})
    w.release()
    found = os.readlink(tmp_path / DATA_LINK)
    if stray == "symlink":
        os.symlink("/etc/passwd", tmp_path / found / "planted")
    elif stray == "fifo":
        os.mkfifo(tmp_path / found / "d" / "planted")
    elif stray == "folder-mode":
        os.chmod(tmp_path / found / "d", 0o777)
    held = os.open(tmp_path / found, os.O_RDONLY | os.O_DIRECTORY)  # its inode number is not reused
    found_ino = os.fstat(held).st_ino
    again = Writer(tmp_path, require_tmpfs=False)
    again.prepare()
    again.prune(grace_seconds=0)
    assert len(spare_dirs(tmp_path)) == 1
    again.commit({"a": FileSpec(b"1b")})
    again.prune(grace_seconds=0)
    recycled = [s for s in spare_dirs(tmp_path) if os.stat(tmp_path / s).st_ino == found_ino]
    assert bool(recycled) is (stray is None)
    assert (os.fstat(held).st_nlink == 0) is (stray is not None)  # removed
    os.close(held)
    assert found not in generation_dirs(tmp_path)
    for i in range(3):  # every spare in turn becomes a generation
        again.commit({"a": FileSpec(b"%d" % i)})
        again.prune(grace_seconds=0)
        assert sorted(inodes(tmp_path)) == ["a", "d/b"]
    assert_spares_match(tmp_path)


def test_spares_are_private_and_bounded(tmp_path: Path) -> None:
    """Spares are 0700 `..spare_` directories, at most MAX_SPARES, and release() removes them."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"0")})
    for i in range(1, 6):
        w.prune(grace_seconds=0)
        w.commit({"a": FileSpec(b"%d" % i)})
    w.prune(grace_seconds=0)
    spares = spare_dirs(tmp_path)
    assert 1 <= len(spares) <= MAX_SPARES
    assert all(stat.S_IMODE((tmp_path / s).stat().st_mode) == 0o700 for s in spares)
    assert generation_dirs(tmp_path) == [w.generation]
    assert_spares_match(tmp_path)
    w.release()
    assert spare_dirs(tmp_path) == []
    assert (tmp_path / "a").read_bytes() == b"5"

